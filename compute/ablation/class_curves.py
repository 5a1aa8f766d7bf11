"""Can a class's knowledge be removed? Per class, a cumulative ablation ordered by the units' importance
for that class, with that class's accuracy against the other classes' as units go.

For each group (every probed layer, and ``last2`` pooled as in ``compute.ablation.curves``) and each
class c, the group's live units are ordered by their single-unit ablation loss delta on class c
(largest first, ties in unit order) and the first k are clamped to zero together, for k on
``removal_counts(n)``: every count up to ``EVERY_UNTIL``, then the 5% grid. ``class_removal`` gives,
per group and class, the fewest removed units (on that grid) that halve the class's accuracy while
the other classes keep at least 90% of theirs (accuracy over all their examples), or null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compute.ablation.curves import FRACTIONS, POOLED_LAST, groups
from compute.ablation.engine import AblationEngine, MaskSums
from compute.datasets.sources import ImageSet
from compute.progress import bar
from warehouse.rows import TableRows

EVERY_UNTIL = 16
HALVED = 0.5  # the class keeps at most this fraction of its intact accuracy
OTHERS_KEEP = 0.9  # while the other classes keep at least this fraction of theirs


def removal_counts(n: int) -> np.ndarray:
    """Numbers of units removed: 0..min(n, EVERY_UNTIL), then the 5% grid, up to n."""
    return np.unique(np.concatenate([np.arange(min(n, EVERY_UNTIL) + 1), np.rint(FRACTIONS * n).astype(int)]))


@dataclass(frozen=True)
class ClassPlan:
    """One group's ablations: ``job`` (layer -> distinct masks (D, units)) is what is evaluated;
    ``inverse`` maps each (class, removal count) point, class-major, to its row of the job."""

    group: str
    n_alive: int
    counts: np.ndarray
    inverse: np.ndarray
    job: dict[str, torch.Tensor]

    @property
    def n_masks(self) -> int:
        return int(next(iter(self.job.values())).shape[0])


def class_plans(class_importance: dict[str, np.ndarray], live: dict[str, np.ndarray],
                pooled_last: int = POOLED_LAST) -> list[ClassPlan]:
    """Per group, the masks of ``class_curves``; ``class_importance[layer]`` is (U, K): each unit's
    ablation loss delta per class; ``live[layer]`` (U,) marks the units active on the evaluation set."""
    plans = []
    for group, members in groups(list(class_importance), pooled_last).items():
        imp = np.concatenate([class_importance[m] for m in members])
        k_classes = imp.shape[1]
        alive = np.flatnonzero(np.concatenate([live[m] for m in members]))
        counts = removal_counts(len(alive))
        masks = np.ones((k_classes, len(counts), len(imp)), dtype=np.float32)
        for c in range(k_classes):
            order = alive[np.argsort(-imp[alive, c], kind="stable")]
            for j, k in enumerate(counts):
                masks[c, j, order[:k]] = 0.0
        # Identical masks are evaluated once: no unit and every unit removed for every class, and the
        # classes that put the same units first (in a layer of 6 units, most of the 70 masks repeat).
        flat, inverse = np.unique(masks.reshape(-1, len(imp)), axis=0, return_inverse=True)
        bounds = np.cumsum([0] + [len(class_importance[m]) for m in members])
        job = {m: torch.from_numpy(flat[:, a:b]) for m, a, b in zip(members, bounds[:-1], bounds[1:])}
        plans.append(ClassPlan(group, len(alive), counts, inverse.ravel(), job))
    return plans


def class_tables(plans: list[ClassPlan], n_c: torch.Tensor, sums: list[MaskSums],
                 class_names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of ``class_curves`` and ``class_removal`` from each plan's sums; ``n_c``: examples per class."""
    curves, removal = TableRows("class_curves"), TableRows("class_removal")
    k_classes = len(class_names)
    for plan, s in zip(plans, sums):
        group, n, counts = plan.group, plan.n_alive, plan.counts
        hits = s.hits[plan.inverse].view(k_classes, len(counts), k_classes)  # (class ordered for, count, measured)
        for c in range(k_classes):
            others = [o for o in range(k_classes) if o != c]
            class_acc = (hits[c, :, c] / n_c[c].clamp(min=1)).numpy()
            other_acc = (hits[c][:, others].sum(1) / n_c[others].sum().clamp(min=1)).numpy()
            rows = len(counts)
            curves.add(layer=[group] * rows, **{"class": [c] * rows}, class_name=[class_names[c]] * rows,
                       n_units=[n] * rows, n_ablated=counts, class_acc=class_acc, other_acc=other_acc)
            ok = (class_acc <= HALVED * class_acc[0]) & (other_acc >= OTHERS_KEEP * other_acc[0]) & (counts > 0)
            first = int(np.argmax(ok)) if ok.any() else None
            removal.add(layer=[group], **{"class": [c]}, class_name=[class_names[c]], n_units=[n],
                        class_acc_intact=[float(class_acc[0])], other_acc_intact=[float(other_acc[0])],
                        n_to_halve=[None if first is None else int(counts[first])],
                        class_acc_then=[None if first is None else float(class_acc[first])],
                        other_acc_then=[None if first is None else float(other_acc[first])])
    return curves.columns, removal.columns


def class_curves(engine: AblationEngine, data: ImageSet, class_importance: dict[str, np.ndarray],
                 live: dict[str, np.ndarray], class_names: tuple[str, ...],
                 pooled_last: int = POOLED_LAST) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of ``class_curves`` and ``class_removal`` in one pass of the engine (the pipeline runs
    the same plans as work items: ``compute.distributed.work.class_curves``)."""
    plans = class_plans(class_importance, live, pooled_last)
    progress = bar(None, "class curves", unit="ablation", total=sum(p.n_masks for p in plans))
    intact, sums = engine.evaluate_jobs(data, [p.job for p in plans], progress)
    progress.close()
    return class_tables(plans, intact.counts, sums, class_names)
