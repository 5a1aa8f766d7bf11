"""The unit page's header card: in one sentence what the unit does and whether the network needs it."""

from __future__ import annotations

import math
from typing import Any

from dashboard import ui
from warehouse.queries import ALPHA, MIN_ACTIVE, MIN_SPECIALIZATION


def specialization(u: dict[str, Any], class_names: list[str]) -> tuple[str, str, str]:
    """The unit's subset specialization score as (value, what it is about, help): the largest over classes
    (``units.specialization_max``, docs/metrics.md), the score the specialization preset ranks by."""
    score, k = u.get("specialization_max"), u.get("specialization_class")
    help_text = ("Largest subset specialization over classes, in [0, 1]: the share of the unit's removal cost over the "
                 "class's correctly classified examples that falls on the examples it fires on, times the share of "
                 "the class it does not fire on, times the fourth root of its removal cost relative to the class's "
                 f"costliest unit (docs/metrics.md); >= {MIN_SPECIALIZATION} counts as specialized.")
    if score is None or (isinstance(score, float) and math.isnan(score)) or k is None or \
            (isinstance(k, float) and math.isnan(k)):
        reason = "dead: it never fires" if u.get("dead") else "too few correctly classified examples it fires on"
        return "n/a", reason, help_text
    name = class_names[int(k)] if 0 <= int(k) < len(class_names) else str(int(k))
    return f"{score:.4f}", f"for class {ui.text(name)}", help_text


def _removal(u: dict[str, Any]) -> str:
    lo, hi, q = u["abl_loss_lo"], u["abl_loss_hi"], u["abl_loss_q"]
    effect = f"{u['abl_loss_delta']:+.4f} [95% interval {lo:+.4f}, {hi:+.4f}]"
    if q is not None and q <= ALPHA and lo > 0:
        hurt = int(u["abl_n_hurt"])
        return (f"**the network needs it**: removing it raises the loss by {effect} and turns {hurt} right "
                f"prediction{'' if hurt == 1 else 's'} wrong ({int(u['abl_n_helped'])} the other way)")
    if q is not None and q <= ALPHA and hi < 0:
        return f"**the network does better without it**: removing it changes the loss by {effect}"
    return f"**its removal is within the noise**: loss change {effect}"


def sentence(u: dict[str, Any], kind: str, n_units: int) -> str:
    """E.g. "A linear unit (1 of 120) that fires most for class 7 (selectivity 0.62, on 84% of examples); the
    network needs it: removing it raises the loss by ..."."""
    where = f"A {ui.text(kind)} unit (1 of {n_units:,} in its layer)"
    if u["dead"]:
        return f"{where} that **never fires** on the evaluation set (dead); removing it changes nothing."
    n_active = int(u["n_active"])
    reliable = "" if n_active >= MIN_ACTIVE else f"; only {n_active} active examples, so this is not reliable"
    what = (f"that fires most for class **{ui.text(u['pref_class_name'])}** (selectivity {u['selectivity']:.2f}, "
            f"active on {u['frac_active']:.0%} of examples{reliable})")
    return f"{where} {what}; {_removal(u)}."
