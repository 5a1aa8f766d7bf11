"""Which examples a unit's removal affects: its flips and its largest loss rises, kept compactly.

The ablation engine evaluates every single-unit ablation on every example anyway; this collector
keeps, per ablation, the examples whose prediction flips (right -> wrong: ``hurt``; wrong -> right:
``helped``; the first ``max_flips`` of each in example order, the counts are complete in
``units.abl_n_hurt`` / ``abl_n_helped``) and the ``top_k`` examples whose loss rises most. Memory and
output are O(ablations x (top_k + max_flips)), never ablations x examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TOP_K = 10  # loss rises kept per unit
MAX_FLIPS = 100  # flips kept per unit and direction
HURT, HELPED, LOSS_RISE = "hurt", "helped", "loss_rise"
KINDS = (HURT, HELPED, LOSS_RISE)  # ``UnitExamples.kind`` holds indices into this (plain integers load safely)


@dataclass
class UnitExamples:
    """Rows of one layer's ``unit_examples``: (unit, example, kind, rank, loss_delta, pred_ablated) as arrays."""

    unit: np.ndarray
    example: np.ndarray
    kind: np.ndarray  # int8 index into KINDS
    rank: np.ndarray  # order within (unit, kind): example order for flips, largest rise first for LOSS_RISE
    loss_delta: np.ndarray
    pred_ablated: np.ndarray  # the prediction with the unit removed: a flip shows what it flips to

    def shifted(self, unit: int, example: int) -> UnitExamples:
        """The same rows with unit and example indices offset (a chunk of units on a shard of the data)."""
        return UnitExamples(self.unit + unit, self.example + example, self.kind, self.rank, self.loss_delta,
                            self.pred_ablated)


def merge_examples(parts: list[UnitExamples], top_k: int = TOP_K, max_flips: int = MAX_FLIPS) -> UnitExamples:
    """One layer's rows from disjoint chunks of units and shards of the data, as ``ExampleEffects``
    over the whole set would give them: per unit, the first ``max_flips`` flips of each direction
    in example order and the ``top_k`` largest loss rises (ties by example order), ranks renumbered."""
    cols = [np.concatenate([getattr(p, f) for p in parts])
            for f in ("unit", "example", "kind", "loss_delta", "pred_ablated")]
    unit, example, kind, delta, pred = cols
    rise = kind == KINDS.index(LOSS_RISE)
    # Flips by (unit, kind, example); rises by (unit, kind, -delta, example).
    order = np.lexsort((example, np.where(rise, -delta, 0.0), kind, unit))
    unit, example, kind, delta, pred = unit[order], example[order], kind[order], delta[order], pred[order]
    start = np.r_[True, (unit[1:] != unit[:-1]) | (kind[1:] != kind[:-1])]
    group = np.cumsum(start) - 1
    rank = np.arange(len(unit)) - np.flatnonzero(start)[group]
    keep = rank < np.where(kind == KINDS.index(LOSS_RISE), top_k, max_flips)
    return UnitExamples(unit[keep], example[keep], kind[keep].astype(np.int8), rank[keep], delta[keep], pred[keep])


class ExampleEffects:
    """Collects, for M ablations, flips and the largest per-example loss rises, chunk by chunk."""

    def __init__(self, n_masks: int, top_k: int = TOP_K, max_flips: int = MAX_FLIPS) -> None:
        self.k, self.max_flips = top_k, max_flips
        self.top_v = torch.full((n_masks, top_k), -torch.inf, dtype=torch.float64)
        self.top_i = torch.full((n_masks, top_k), -1, dtype=torch.long)
        self.top_p = torch.full((n_masks, top_k), -1, dtype=torch.long)  # ablated prediction of each kept rise
        self.kept = {HURT: torch.zeros(n_masks, dtype=torch.long), HELPED: torch.zeros(n_masks, dtype=torch.long)}
        self.flips: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, first: int, start: int, d: torch.Tensor, base_hit: torch.Tensor, hit: torch.Tensor,
            pred: torch.Tensor) -> None:
        """Ablations ``first``..``first + m`` on examples ``start``..``start + b``: loss differences
        ``d`` (m, b), intact hits (b,), ablated hits and predictions (m, b)."""
        m, b = d.shape
        rows = slice(first, first + m)
        examples = torch.arange(start, start + b).expand(m, b)
        v = torch.cat([self.top_v[rows], d.double()], 1)
        i = torch.cat([self.top_i[rows], examples], 1)
        kk = min(self.k, v.shape[1])
        p = torch.cat([self.top_p[rows], pred.long()], 1)
        top = v.topk(kk, dim=1)  # ties: the lower example index first is not guaranteed; values are exact
        self.top_v[rows, :kk], self.top_i[rows, :kk] = top.values, i.gather(1, top.indices)
        self.top_p[rows, :kk] = p.gather(1, top.indices)
        for kind, flip in ((HURT, base_hit & ~hit), (HELPED, ~base_hit & hit)):
            rank = flip.long().cumsum(1) - 1 + self.kept[kind][rows, None]
            keep = flip & (rank < self.max_flips)
            self.kept[kind][rows] += flip.sum(1)
            mi, bi = keep.nonzero(as_tuple=True)
            if len(mi):
                self.flips.append((kind, (mi + first).numpy(), (bi + start).numpy(), rank[mi, bi].numpy(),
                                   d[mi, bi].double().numpy(), pred[mi, bi].long().numpy()))

    def result(self) -> UnitExamples:
        """The rows, by unit, kind and rank."""
        parts: list[tuple[np.ndarray, ...]] = []
        for kind, unit, example, rank, delta, pred in self.flips:
            parts.append((unit, example, np.full(len(unit), KINDS.index(kind), dtype=np.int8), rank, delta, pred))
        v, i, p = self.top_v.numpy(), self.top_i.numpy(), self.top_p.numpy()
        rise = (i >= 0) & (v > 0)
        unit, rank = np.nonzero(rise)
        parts.append((unit, i[rise], np.full(len(unit), KINDS.index(LOSS_RISE), dtype=np.int8), rank, v[rise],
                      p[rise]))
        cols = [np.concatenate(c) for c in zip(*parts)]
        order = np.lexsort((cols[3], cols[2], cols[0]))  # by unit, kind, rank
        return UnitExamples(*(c[order] for c in cols))
