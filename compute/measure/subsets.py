"""Which examples a unit fires on (``compute.measure.firing``), and what removing it does to each
example: the per-example view behind "does removing the unit cost exactly the knowledge of the
examples it fires on?" (``specificity``).

Used on a subset (one class, a planted group) where per-example arrays are small; the whole-run
sweep keeps only sparse summaries (``compute.ablation.effects``). Removal is the same zero-clamp
of the post-ReLU output as everywhere (``compute.nets.probe.ZeroUnit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from compute.datasets.sources import ImageSet
from compute.measure.firing import FiringRule, fit
from compute.nets.probe import Probe, ZeroUnit, units_of


@dataclass
class ExampleScan:
    """Per example of a subset: intact loss and correctness, each unit's example value (the firing
    rule's scale) and whether it fires, its activation mass (the sum of its post-activation over
    positions: what removal takes away) and its removal effect. Arrays: value, mass, loss_delta (U, N),
    fires (U, N) bool, hit (U, N) bool after removal."""

    units: list[int]
    base_loss: np.ndarray
    base_hit: np.ndarray
    fires: np.ndarray
    loss_delta: np.ndarray
    hit: np.ndarray
    value: np.ndarray
    mass: np.ndarray


def layer_rule(model: nn.Module, probe: nn.Module, units: list[int], data: ImageSet,
               device: str = "cpu") -> FiringRule:
    """The firing rule of some of one layer's ``units`` on ``data`` (the run's evaluation set), as the
    statistics stage fits it (``compute.measure.firing.fit``; ``units.fire_threshold`` is its threshold)."""
    return fit(model, {"layer": probe}, data, device=device)["layer"].select(list(units))


def label_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy: the quantity whose change on removal ``scan_units`` records by default."""
    return F.cross_entropy(logits, y, reduction="none")


@torch.inference_mode()
def scan_units(model: nn.Module, probe: nn.Module, units: list[int], data: ImageSet, rule: FiringRule,
               together: bool = False, batch_size: int = 1000, device: str = "cpu",
               loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = label_loss) -> ExampleScan:
    """Value, fire/silent (``rule``: the firing rule of exactly ``units``, ``layer_rule``), activation
    mass and removal effect of each of ``units`` (of the layer probed by ``probe``) on every example of
    ``data``; with ``together`` one row of effects: all of ``units`` removed at once. ``loss`` (logits,
    labels -> per-example values) is what the effect is measured in (benchmarks measure other ones)."""
    model.eval()
    fires, values, masses, base_loss, base_hit, deltas, hits = [], [], [], [], [], [], []
    groups = [list(units)] if together else [[u] for u in units]
    for start in range(0, len(data), batch_size):
        x = data.floats(start, start + batch_size, device)
        y = data.labels[start:start + batch_size].to(device)
        with Probe({"layer": probe}) as p:
            logits = model(x)
            post = p.post["layer"]
            value = rule.value(probe, post, list(units)).cpu()
            masses.append(units_of(probe, post.detach())[:, units].double().sum(2).T.cpu().numpy())
        intact = loss(logits, y)
        values.append(value.T.numpy())
        fires.append(rule.fires(value).T.numpy())
        base_loss.append(intact.cpu().numpy())
        base_hit.append((logits.argmax(1) == y).cpu().numpy())
        d, h = [], []
        for group in groups:
            with ZeroUnit(probe, group):
                cut = model(x)
            d.append((loss(cut, y) - intact).cpu().numpy())
            h.append((cut.argmax(1) == y).cpu().numpy())
        deltas.append(np.stack(d))
        hits.append(np.stack(h))
    return ExampleScan(list(units), np.concatenate(base_loss).astype(np.float64), np.concatenate(base_hit),
                       np.concatenate(fires, 1), np.concatenate(deltas, 1).astype(np.float64), np.concatenate(hits, 1),
                       np.concatenate(values, 1), np.concatenate(masses, 1))


@dataclass(frozen=True)
class SubsetEffect:
    """Removal effect on one subset of examples: size, mean loss change, accuracy change."""

    n: int
    loss_delta: float
    acc_delta: float

    @staticmethod
    def of(scan: ExampleScan, row: int, members: np.ndarray) -> SubsetEffect:
        n = int(members.sum())
        if n == 0:
            return SubsetEffect(0, float("nan"), float("nan"))
        return SubsetEffect(n, float(scan.loss_delta[row, members].mean()),
                            float(scan.hit[row, members].mean() - scan.base_hit[members].mean()))


def hurts_more(scan: ExampleScan, row: int, a: np.ndarray, b: np.ndarray, alternative: str = "greater") -> float:
    """p-value of Welch's t-test that removal raises the loss of subset ``a`` more than of subset ``b``
    (per-example loss changes); NaN if a subset has fewer than 2 examples."""
    if a.sum() < 2 or b.sum() < 2:
        return float("nan")
    return float(stats.ttest_ind(scan.loss_delta[row, a], scan.loss_delta[row, b], equal_var=False,
                                 alternative=alternative).pvalue)


#: How much more per unit of activation the firing examples must lose, as a share of the unit's typical
#: (median absolute) loss change per unit of activation on the class's active examples. Removal's effect
#: per unit of activation is never exactly constant in a nonlinear network, so without a margin the test
#: rejects for 4-6% of an untrained LeNet-5's (unit, class) pairs at p < 0.01; 0.1 brings that to about
#: 1% (docs/metrics.md, Specificity, measured on other initializations and digits than it was chosen on).
MARGIN = 0.1


@dataclass(frozen=True)
class Specificity:
    """Is what removing a unit costs specific to the examples of class ``cls`` it fires on? Among the
    class's examples on which the unit is active (removing it changes something), the loss change
    per unit of activation removed, ``loss change / activation mass``, where it fires against where it
    does not: one-sided Mann-Whitney U test that the firing examples' values, less ``margin``, are greater."""

    cls: int
    n_fire: int  # class examples it fires on
    n_rest: int  # class examples it is active on but does not fire on
    per_mass_fire: float  # median loss change per unit of activation mass, firing examples
    per_mass_rest: float  # the same, the other active examples of the class
    margin: float  # MARGIN x the median absolute loss change per unit of activation over both
    p: float  # NaN when either side has fewer than 2 examples


def specificity(scan: ExampleScan, row: int, labels: np.ndarray, cls: int) -> Specificity:
    """The specificity test of unit ``row`` of a scan of the evaluation set (``labels`` its labels).

    Why this null: removing a unit changes nothing where it is silent, so "firing examples are hurt
    more than silent ones" holds for every unit that matters at all; and where it is active, removal
    takes more away where the unit is stronger, so "firing examples are hurt more than the other
    active ones" holds for most units too (on an untrained LeNet-5 for 42% of (unit, class) pairs at
    p < 0.01: docs/metrics.md, Specificity). So the comparison is per unit of activation removed, within
    the class: a unit that is one more generic feature costs every example in proportion to how much
    of it there is; one that the examples it fires on *rely* on costs them more per unit. The firing
    examples must lose more by at least ``margin`` (``MARGIN`` of the unit's typical per-activation effect):
    the effect per unit of activation also drifts with the activation in a nonlinear network, and without
    the margin an untrained network's units would pass 4-6% of the time at p < 0.01.
    """
    active = (labels == cls) & (scan.mass[row] > 0)
    a, b = active & scan.fires[row], active & ~scan.fires[row]
    ratio = np.zeros(len(labels))
    ratio[active] = scan.loss_delta[row, active] / scan.mass[row, active]
    margin = MARGIN * float(np.median(np.abs(ratio[active]))) if active.any() else 0.0
    p = float(stats.mannwhitneyu(ratio[a] - margin, ratio[b], alternative="greater").pvalue) \
        if a.sum() >= 2 and b.sum() >= 2 else float("nan")
    med = [float(np.median(ratio[m])) if m.any() else float("nan") for m in (a, b)]
    return Specificity(cls, int(a.sum()), int(b.sum()), med[0], med[1], margin, p)
