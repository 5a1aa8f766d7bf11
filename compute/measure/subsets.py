"""Which examples a unit fires on, and what removing it does to each example: the per-example view
behind "does removing the unit hurt the examples it fires on more than the others?".

Used on a subset (one class, a planted group) where per-example arrays are small; the whole-run
sweep keeps only sparse summaries (``compute.ablation.effects``). Removal is the same zero-clamp
of the post-ReLU output as everywhere (``compute.nets.probe.ZeroUnit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from compute.datasets.sources import ImageSet
from compute.nets.activations import response
from compute.nets.probe import Probe, ZeroUnit, units_of


@dataclass
class ExampleScan:
    """Per example of a subset: intact loss and correctness, whether each unit fires, and each
    unit's removal effect. Arrays: fires (U, N) bool, loss_delta (U, N), hit (U, N) bool after removal."""

    units: list[int]
    base_loss: np.ndarray
    base_hit: np.ndarray
    fires: np.ndarray
    loss_delta: np.ndarray
    hit: np.ndarray


@torch.inference_mode()
def scan_units(model: nn.Module, probe: nn.Module, units: list[int], data: ImageSet, together: bool = False,
               batch_size: int = 1000, device: str = "cpu") -> ExampleScan:
    """Fire/silent and removal effect of each of ``units`` (of the layer probed by ``probe``) on every
    example of ``data``; with ``together`` one row: all of ``units`` removed at once."""
    model.eval()
    fires, base_loss, base_hit, deltas, hits = [], [], [], [], []
    groups = [list(units)] if together else [[u] for u in units]
    for start in range(0, len(data), batch_size):
        x = data.floats(start, start + batch_size, device)
        y = data.labels[start:start + batch_size].to(device)
        with Probe({"layer": probe}) as p:
            logits = model(x)
            post = units_of(probe, response(probe, p.post["layer"]))
        loss = F.cross_entropy(logits, y, reduction="none")
        fires.append((post[:, units].amax(2) > 0).T.cpu().numpy())
        base_loss.append(loss.cpu().numpy())
        base_hit.append((logits.argmax(1) == y).cpu().numpy())
        d, h = [], []
        for group in groups:
            with ZeroUnit(probe, group):
                cut = model(x)
            d.append((F.cross_entropy(cut, y, reduction="none") - loss).cpu().numpy())
            h.append((cut.argmax(1) == y).cpu().numpy())
        deltas.append(np.stack(d))
        hits.append(np.stack(h))
    return ExampleScan(list(units), np.concatenate(base_loss).astype(np.float64), np.concatenate(base_hit),
                       np.concatenate(fires, 1), np.concatenate(deltas, 1).astype(np.float64), np.concatenate(hits, 1))


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
