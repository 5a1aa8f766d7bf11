"""Cumulative ablation curves (Morcos et al. 2018): accuracy and loss as ever more units are zeroed.

For each *group* of units (every probed layer alone, and ``last<N>``: the units of the last N probed
layers pooled) and each *order* the units are removed in, the curve gives accuracy and loss with
the first ``round(fraction * units)`` units of the order ablated, on a grid of fractions:

- ``random``: a random permutation per seed (seeds 0..4 by default);
- ``selectivity_high_first`` / ``selectivity_low_first``: by class selectivity index;
- ``importance``: most important first, by single-unit ablation loss delta.

Only live units (active on the evaluation set) are ordered and removed: a dead unit's removal changes
nothing there, and dead units (selectivity 0) would fill the start of ``selectivity_low_first`` at no
cost. Ties keep unit order (stable sort; pooled units are in layer order). The normalized area under the
curve is ``auc = trapezoid(accuracy, fraction) / accuracy at fraction 0`` over the grid, so 1 means
no loss of accuracy at any fraction and a curve dropping straight to chance gives about
chance / intact accuracy.

The split (``eval`` or ``train``) is a parameter so the same curves can be drawn on the training set
with the training labels (label-noise memorization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compute.datasets.sources import ImageSet
from compute.ablation.engine import AblationEngine, MaskSums
from compute.progress import bar
from warehouse.rows import TableRows

FRACTIONS = np.round(np.linspace(0.0, 1.0, 21), 10)
SEEDS = (0, 1, 2, 3, 4)
POOLED_LAST = 2


@dataclass(frozen=True)
class UnitScores:
    """Per-unit scores of one layer that orders are built from."""

    selectivity: np.ndarray  # (U,)
    importance: np.ndarray  # (U,) single-unit ablation loss delta; larger = more important
    live: np.ndarray | None = None  # (U,) bool, active on the evaluation set; None = all live

    def live_index(self) -> np.ndarray:
        return np.arange(len(self.selectivity)) if self.live is None else np.flatnonzero(self.live)


def unit_orders(scores: UnitScores, seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int | None, np.ndarray]]:
    """(order name, seed or None, live unit indices in removal order) for every order."""
    live = scores.live_index()
    n = len(live)
    sel, imp = scores.selectivity[live], scores.importance[live]
    out: list[tuple[str, int | None, np.ndarray]] = [
        ("random", s, live[np.random.default_rng(s).permutation(n)]) for s in seeds]
    out.append(("selectivity_high_first", None, live[np.argsort(-sel, kind="stable")]))
    out.append(("selectivity_low_first", None, live[np.argsort(sel, kind="stable")]))
    out.append(("importance", None, live[np.argsort(-imp, kind="stable")]))
    return out


def normalized_auc(fractions: np.ndarray, accuracy: np.ndarray) -> float:
    """Trapezoid area under accuracy vs fraction ablated, divided by the intact accuracy (fraction 0)."""
    if accuracy[0] <= 0:
        return float("nan")
    return float(np.trapezoid(accuracy, fractions) / accuracy[0])


def groups(layers: list[str], pooled_last: int = POOLED_LAST) -> dict[str, list[str]]:
    """Group name -> layers: each layer alone, plus ``last<N>`` when there are at least N >= 2 layers."""
    out = {name: [name] for name in layers}
    if pooled_last >= 2 and len(layers) >= pooled_last:
        out[f"last{pooled_last}"] = layers[-pooled_last:]
    return out


@dataclass
class CurvePlan:
    """The masks of one group's curves: ``job`` (layer -> distinct masks (D, units)) is what is
    evaluated; ``inverse`` maps each (order, fraction) point to its row of the job."""

    group: str
    n_units: int
    orders: list[tuple[str, int | None, np.ndarray]]
    n_ablated: np.ndarray
    inverse: np.ndarray
    job: dict[str, torch.Tensor]

    @property
    def n_masks(self) -> int:
        return len(next(iter(self.job.values())))


def curve_plans(scores: dict[str, UnitScores], seeds: tuple[int, ...] = SEEDS, fractions: np.ndarray = FRACTIONS,
                pooled_last: int = POOLED_LAST) -> list[CurvePlan]:
    """One plan per group; ``scores`` has one entry per probed layer, in forward order."""
    plans = []
    for group, members in groups(list(scores), pooled_last).items():
        pooled = UnitScores(np.concatenate([scores[m].selectivity for m in members]),
                            np.concatenate([scores[m].importance for m in members]),
                            np.concatenate([np.ones(len(scores[m].selectivity), bool) if scores[m].live is None
                                            else scores[m].live for m in members]))
        total_units = len(pooled.selectivity)
        n = len(pooled.live_index())
        orders = unit_orders(pooled, seeds)
        n_ablated = np.rint(fractions * n).astype(int)
        masks = np.ones((len(orders), len(fractions), total_units), dtype=np.float32)
        for i, (_, _, perm) in enumerate(orders):
            for j, k in enumerate(n_ablated):
                masks[i, j, perm[:k]] = 0.0
        # Identical masks (fraction 0 and 1 of every order, say) are evaluated once.
        flat, inverse = np.unique(masks.reshape(-1, total_units), axis=0, return_inverse=True)
        bounds = np.cumsum([0] + [len(scores[m].selectivity) for m in members])
        job = {m: torch.from_numpy(flat[:, a:b]) for m, a, b in zip(members, bounds[:-1], bounds[1:])}
        plans.append(CurvePlan(group, n, orders, n_ablated, inverse.ravel(), job))
    return plans


def curve_tables(plans: list[CurvePlan], sums: list[MaskSums], split: str,
                 fractions: np.ndarray = FRACTIONS) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of the ``ablation_curves`` and ``ablation_auc`` tables from each plan's job sums."""
    curves, aucs = TableRows("ablation_curves"), TableRows("ablation_auc")
    for plan, s in zip(plans, sums):
        shape = (len(plan.orders), len(fractions))
        acc = s.accuracy()[plan.inverse].reshape(shape)
        loss = s.mean_loss()[plan.inverse].reshape(shape)
        n = plan.n_units
        for i, (order, seed, _) in enumerate(plan.orders):
            rows = len(fractions)
            curves.add(split=[split] * rows, layer=[plan.group] * rows, order=[order] * rows, seed=[seed] * rows,
                       fraction=fractions, n_units=[n] * rows, n_ablated=plan.n_ablated, accuracy=acc[i],
                       loss=loss[i])
            aucs.add(split=[split], layer=[plan.group], order=[order], seed=[seed], n_units=[n],
                     auc=[normalized_auc(fractions, acc[i])])
    return curves.columns, aucs.columns


def ablation_curves(engine: AblationEngine, data: ImageSet, scores: dict[str, UnitScores], split: str = "eval",
                    seeds: tuple[int, ...] = SEEDS, fractions: np.ndarray = FRACTIONS,
                    pooled_last: int = POOLED_LAST) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of the ``ablation_curves`` and ``ablation_auc`` tables for one split (``run_id`` is
    filled by the writer).

    ``scores`` has one entry per probed layer, in forward order.
    """
    plans = curve_plans(scores, seeds, fractions, pooled_last)
    progress = bar(None, f"curves {split}", unit="ablation", total=sum(p.n_masks for p in plans))
    _, sums = engine.evaluate_jobs(data, [p.job for p in plans], progress)
    progress.close()
    return curve_tables(plans, sums, split, fractions)
