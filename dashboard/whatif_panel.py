"""Live what-if ablation: the one place the dashboard loads torch, and only on demand.

The set of units to remove is kept in the what-if page's URL (``units=fc1:3,conv2:5``) and in the
session, so it can be built from anywhere: the unit page, the explorer's table, a class's halving set.
``compute.run.whatif`` keeps the loaded checkpoint and data cached per run, so after the first call an
ablation of LeNet-5 on the default run takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.state import parse_unit
from warehouse.filters import QueryError
from warehouse.layout import run_dir
from warehouse.text import md, md_code

S = st.session_state
VIEWS = Path(__file__).parent / "views"
MAX_UNITS = 10_000  # units one what-if may name (a URL must stay a URL)
SHOWN_BAD = 3  # malformed tokens named in the notices; the others are counted
SPLITS = ("eval", "train")


def parse_units(text: str) -> tuple[list[str], list[str]]:
    """``"fc1:3, conv2:5"`` -> (``["fc1:3", "conv2:5"]``, notices for the tokens left out: the first few
    named, escaped, and how many others, so a link of thousands of bad tokens is one short notice)."""
    units: dict[str, None] = {}
    bad: list[str] = []
    n_bad = 0
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        try:
            layer, unit = parse_unit(token)  # type: ignore[misc]
        except QueryError as e:
            n_bad += 1
            if len(bad) < SHOWN_BAD:
                bad.append(f"{md_code(token[:40])} is left out: {md(e)}")
            continue
        units.setdefault(f"{layer}:{unit}")
    notices = bad + ([f"… and {n_bad - len(bad):,} other value(s) that are not units."] if n_bad > len(bad) else [])
    kept = list(units)
    if len(kept) > MAX_UNITS:
        notices.append(f"Only the first {MAX_UNITS:,} of {len(kept):,} units are kept.")
        kept = kept[:MAX_UNITS]
    return kept, notices


def params(run: str, units: list[str], split: str = "eval") -> dict[str, str]:
    """The what-if page's URL parameters."""
    out = {"run": run, "units": ",".join(units)}
    if split != "eval":
        out["split"] = split
    return out


def current(run: str) -> list[str]:
    """The session's what-if set for ``run`` (empty for another run's)."""
    return list(S.get("wi-units", [])) if S.get("wi-units-run") == run else []


def link(col: object, run: str, units: list[str], label: str) -> None:
    """A link to the what-if page with ``units`` removed together."""
    col.page_link(str(VIEWS / "whatif.py"), label=label, query_params=params(run, units),  # type: ignore[attr-defined]
                  icon=":material/content_cut:", disabled=not units)


@st.cache_data(show_spinner="Removing the units on the run's checkpoint…", max_entries=32)
def run(root: str, run_id: str, labels: tuple[str, ...], split: str) -> tuple[dict[str, float], pd.DataFrame] | str:
    """Ablate the units named ``layer:unit`` together; a summary (with paired 95% intervals) and a per-class
    table, or an error message."""
    from compute.errors import AtlasError  # torch loads here, when a person asks for an ablation
    from compute.run.whatif import ablate_units

    units: dict[str, list[int]] = {}
    for label in labels:
        layer, _, unit = label.rpartition(":")
        units.setdefault(layer, []).append(int(unit))
    try:
        r = ablate_units(run_dir(root, run_id), units, split=split)
    except AtlasError as e:
        return f"Cannot ablate these units: {e}"
    loss_lo, loss_hi, loss_p = r.loss_interval()
    acc_lo, acc_hi, acc_p = r.acc_interval()
    summary = {"accuracy": r.ablated.accuracy, "acc_delta": r.acc_delta, "acc_lo": acc_lo, "acc_hi": acc_hi,
               "acc_p": acc_p, "loss": r.ablated.loss, "loss_delta": r.loss_delta, "loss_lo": loss_lo,
               "loss_hi": loss_hi, "loss_p": loss_p, "n_hurt": float(r.paired.hurt[0]),
               "n_helped": float(r.paired.helped[0]), "n_examples": r.n_examples,
               "n_units": sum(len(u) for u in units.values()), "seconds": r.seconds}
    per_class = pd.DataFrame({"class_name": list(r.class_names), "acc_delta": r.class_acc_delta,
                              "loss_delta": r.class_loss_delta, "accuracy": r.ablated.class_accuracy,
                              "accuracy_intact": r.base.class_accuracy})
    return summary, per_class
