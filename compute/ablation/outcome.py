"""What an evaluation pass yields (loss and accuracy, overall and per class) and the per-unit deltas
of an ablated layer: the result types shared by the naive reference, the engine and what-if."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet


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
class LayerAblation:
    """Deltas (ablated minus intact) for each unit of a layer."""

    acc_delta: np.ndarray  # (U,)
    loss_delta: np.ndarray  # (U,)
    class_acc_delta: np.ndarray  # (U, K)
    class_loss_delta: np.ndarray  # (U, K)

    @staticmethod
    def from_outcomes(base: Outcome, rows: list[Outcome]) -> LayerAblation:
        """Deltas of one outcome per unit (unit order) against the intact ``base``."""
        return LayerAblation(
            acc_delta=np.array([r.accuracy - base.accuracy for r in rows]),
            loss_delta=np.array([r.loss - base.loss for r in rows]),
            class_acc_delta=np.stack([r.class_accuracy - base.class_accuracy for r in rows]),
            class_loss_delta=np.stack([r.class_loss - base.class_loss for r in rows]),
        )
