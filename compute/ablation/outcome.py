"""What an evaluation pass yields (loss and accuracy, overall and per class) and the per-unit deltas
of an ablated layer: the result types shared by the naive reference, the engine and what-if.

scipy.stats is imported inside the statistical tests below: it takes ~1 s to import, and the processes
that only compute sums (each Ray worker) never call them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.ablation import sequential
from compute.ablation.effects import UnitExamples
from compute.datasets.sources import ImageSet

CONFIDENCE = 0.95


@dataclass
class Outcome:
    """Per-example loss and correctness of one evaluation pass, reduced per class."""

    loss: float
    accuracy: float
    class_loss: np.ndarray  # (K,)
    class_accuracy: np.ndarray  # (K,)

    @staticmethod
    def from_sums(loss_c: torch.Tensor, hit_c: torch.Tensor, n_c: torch.Tensor) -> Outcome:
        """From float64 per-class sums of loss and hits and per-class counts; shared by every engine
        so that equal sums give bit-equal outcomes."""
        return Outcome(
            loss=float(loss_c.sum() / n_c.sum()),
            accuracy=float(hit_c.sum() / n_c.sum()),
            class_loss=(loss_c / n_c.clamp(min=1)).numpy(),
            class_accuracy=(hit_c / n_c.clamp(min=1)).numpy(),
        )


@torch.inference_mode()
def outcome(model: nn.Module, data: ImageSet, batch_size: int = 1000, device: str = "cpu") -> Outcome:
    model.eval()
    k = data.n_classes
    loss_c = torch.zeros(k, dtype=torch.float64)
    hit_c = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        x = data.floats(start, start + batch_size, device)
        y = data.labels[start:start + batch_size]
        logits = model(x).cpu()
        loss_c.index_add_(0, y, F.cross_entropy(logits, y, reduction="none").double())
        hit_c.index_add_(0, y, (logits.argmax(1) == y).double())
    return Outcome.from_sums(loss_c, hit_c, torch.bincount(data.labels, minlength=k).double())


@dataclass
class PairedSums:
    """Per ablation (U,): sums over the n evaluation examples of the per-example loss difference d
    (ablated - intact) and of d^2, and the prediction flips right -> wrong (hurt), wrong -> right (helped).

    From a sequential ablation (``compute.ablation.sequential``) ``n`` is per unit (the examples it
    saw) and ``level`` the test level of the look it stopped at: the interval and p are then the
    sequential rule's, valid however the stops fell."""

    n: float | np.ndarray
    dsum: np.ndarray
    dsq: np.ndarray
    hurt: np.ndarray
    helped: np.ndarray
    level: np.ndarray | None = None

    def loss_test(self, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, high, p): the t confidence interval of the mean of d and the two-sided one-sample t-test
        p-value of "mean d = 0" (paired, so the examples' own variation cancels). A unit whose removal
        changes no example's loss gets [0, 0] and p = 1. After a sequential ablation: the interval at
        confidence ``1 - level * (1 - confidence) / ALPHA`` and ``p`` scaled by ``ALPHA / level``."""
        if self.level is not None:
            scale = sequential.ALPHA / self.level
            lo, hi, p = sequential.paired_test(self.n, self.dsum, self.dsq, (1 - confidence) / scale)
            return lo, hi, np.minimum(1.0, p * scale)
        from scipy import stats

        n = self.n
        mean = self.dsum / n
        var = np.maximum(self.dsq - n * mean * mean, 0.0) / (n - 1)
        se = np.sqrt(var / n)
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / se, n - 1), np.where(mean == 0, 1.0, 0.0))
        return mean - half, mean + half, p

    def mcnemar_p(self) -> np.ndarray:
        """Exact McNemar test of the accuracy change: two-sided binomial test of hurt among the
        hurt + helped discordant examples at 1/2; 1 when nothing flips."""
        from scipy import stats

        b, c = self.hurt, self.helped
        n = b + c
        return np.where(n > 0, np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(b, c), n, 0.5)), 1.0)


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q) over one family (a layer's units)."""
    from scipy import stats

    return stats.false_discovery_control(p, method="bh") if len(p) else p


@dataclass
class LayerAblation:
    """Deltas (ablated minus intact) for each unit of a layer; with the paired statistics and the
    affected examples when the engine computed them (None from the naive reference)."""

    acc_delta: np.ndarray  # (U,)
    loss_delta: np.ndarray  # (U,)
    class_acc_delta: np.ndarray  # (U, K)
    class_loss_delta: np.ndarray  # (U, K)
    paired: PairedSums | None = None
    examples: UnitExamples | None = None

    @staticmethod
    def from_outcomes(base: Outcome | list[Outcome], rows: list[Outcome], paired: PairedSums | None = None,
                      examples: UnitExamples | None = None) -> LayerAblation:
        """Deltas of one outcome per unit (unit order) against the intact ``base`` (one per unit when
        the units saw different examples, as in a sequential ablation)."""
        bases = base if isinstance(base, list) else [base] * len(rows)
        return LayerAblation(
            acc_delta=np.array([r.accuracy - b.accuracy for r, b in zip(rows, bases)]),
            loss_delta=np.array([r.loss - b.loss for r, b in zip(rows, bases)]),
            class_acc_delta=np.stack([r.class_accuracy - b.class_accuracy for r, b in zip(rows, bases)]),
            class_loss_delta=np.stack([r.class_loss - b.class_loss for r, b in zip(rows, bases)]),
            paired=paired, examples=examples,
        )
