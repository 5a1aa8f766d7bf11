"""Per-unit and per-class statistics of probed layers, and the formulas built on them.

Per example, every unit is reduced to scalars (see ``unit_scalars``); those are summed per class
in float64 and turned into means once, so the same code serves the training trace and the
evaluation set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.nets.probe import Probe, by_position
from compute.progress import bar

SELECTIVITY_EPS = 1e-7


def unit_scalars(pre: torch.Tensor, post: torch.Tensor, grad: torch.Tensor | None,
                 fields: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Per-example, per-unit scalars (B, U) from one layer's activity: ``fields`` of act, rect,
    peak, grad, taylor (default all; ``grad`` and ``taylor`` need ``grad``).

    ``grad`` is dLoss_n/d(post) for each example's own loss. The gradient signal is its negated
    sum over positions: the derivative of -loss with respect to a constant added to the whole
    unit, i.e. the direction gradient descent pushes the unit, sign kept.
    """
    want = set(fields) if fields is not None else {"act", "rect", "peak", "grad", "taylor"}
    post_p = by_position(post.detach())
    out: dict[str, torch.Tensor] = {}
    if "act" in want:
        out["act"] = by_position(pre).mean(2)
    if "rect" in want:
        out["rect"] = post_p.mean(2)
    if "peak" in want:
        out["peak"] = post_p.amax(2)
    if grad is not None:
        g = by_position(grad)
        if "grad" in want:
            out["grad"] = -g.sum(2)
        if "taylor" in want:
            out["taylor"] = (g * post_p).mean(2).abs()
    return out


class ClassSums:
    """Float64 sums of per-example unit scalars by class, and the example count per class, kept on
    ``device`` (the values' device: no copy per batch) until the means are read."""

    def __init__(self, n_classes: int, n_units: int, fields: tuple[str, ...], device: str | torch.device = "cpu") -> None:
        self.sums = {f: torch.zeros(n_classes, n_units, dtype=torch.float64, device=device) for f in fields}
        self.counts = torch.zeros(n_classes, dtype=torch.float64, device=device)

    def add(self, labels: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        labels = labels.to(self.counts.device)
        for f, s in self.sums.items():
            s.index_add_(0, labels, values[f].detach().to(s.device, torch.float64))
        self.counts += torch.bincount(labels, minlength=len(self.counts)).double()

    def class_means(self) -> dict[str, np.ndarray]:
        """(K, U) means; NaN for a class with no examples."""
        n = self.counts.cpu().numpy()[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return {f: np.where(n > 0, s.cpu().numpy() / np.maximum(n, 1), np.nan) for f, s in self.sums.items()}

    def overall_means(self) -> dict[str, np.ndarray]:
        """(U,) means over all examples regardless of class."""
        total = float(self.counts.sum())
        return {f: s.sum(0).cpu().numpy() / total for f, s in self.sums.items()}


def selectivity(class_rect: np.ndarray, eps: float = SELECTIVITY_EPS) -> dict[str, np.ndarray]:
    """Morcos et al.'s class selectivity index per unit from (K, U) post-ReLU class means.

    SI = (mu_max - mu_rest) / (mu_max + mu_rest + eps), mu_rest the mean of the other classes'
    means. 0 for a unit equally active for all classes (or never active), 1 for a unit active for
    one class only.
    """
    k = class_rect.shape[0]
    pref = np.argmax(class_rect, axis=0)
    mu_max = class_rect.max(axis=0)
    mu_rest = (class_rect.sum(axis=0) - mu_max) / (k - 1)
    si = (mu_max - mu_rest) / (mu_max + mu_rest + eps)
    return {"selectivity": si, "pref_class": pref, "mu_max": mu_max, "mu_rest": mu_rest}


def _std(x: np.ndarray) -> float:
    s = float(np.nanstd(x))
    return s if s > 0 else 1.0


def anomaly(class_grad: np.ndarray, class_act: np.ndarray) -> np.ndarray:
    """Gradient-versus-activation anomaly per (class, unit) of one layer, shape (K, U).

    anomaly = min(grad / std(grad), -(act - mean(act)) / std(act)), statistics over the layer's
    (K, U) entries. The gradient is only scaled (its zero means "no push" and its sign is the
    direction); the pre-ReLU activation is standardised. Taking the smaller of the two makes the
    score high only where both hold: training pushes the unit up for the class *and* the unit is
    low for that class compared with the rest of the layer.
    """
    z_grad = class_grad / _std(class_grad)
    z_low_act = -(class_act - np.nanmean(class_act)) / _std(class_act)
    return np.minimum(z_grad, z_low_act)


def strongest_anomaly(anom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the largest anomaly over classes and its class, skipping NaN (a class with no
    examples); NaN and class 0 when every class is NaN. ``units.anomaly_max >= lo`` must mean "some
    class has anomaly >= lo": the warehouse answers that preset from this column alone.
    """
    filled = np.where(np.isnan(anom), -np.inf, anom)
    best = filled.argmax(axis=0)
    top = filled.max(axis=0)
    return np.where(np.isneginf(top), np.nan, top), best


@dataclass
class LayerStats:
    """Evaluation-set statistics of one layer."""

    class_means: dict[str, np.ndarray]  # act, rect, grad, grad_abs, taylor: (K, U)
    overall: dict[str, np.ndarray]  # same fields and active: (U,)
    max_act: np.ndarray  # (U,) largest post-ReLU value at any position of any example
    counts: np.ndarray  # (K,) examples per class


@dataclass
class EvalStats:
    layers: dict[str, LayerStats]
    loss: float
    accuracy: float
    class_accuracy: np.ndarray


FIELDS = ("act", "rect", "grad", "grad_abs", "taylor", "active")


def evaluation_stats(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                     batch_size: int = 500, device: str = "cpu") -> EvalStats:
    """One pass over ``data``: activity, per-example gradients and Taylor scores of every unit.

    Each example's loss is differentiated separately (the batch loss is a sum and the model is in
    eval mode, so examples do not interact), giving dLoss_n/d(activity) for example n.
    """
    model.eval()
    sums: dict[str, ClassSums] = {}
    max_act: dict[str, torch.Tensor] = {}
    loss_sum, correct = 0.0, torch.zeros(data.n_classes, dtype=torch.float64)
    counts = torch.zeros(data.n_classes, dtype=torch.float64)
    with Probe(probes) as probe:
        for start in bar(range(0, len(data), batch_size), "statistics", unit="batch"):
            x = data.floats(start, start + batch_size, device)
            y = data.labels[start:start + batch_size].to(device)
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            posts = [probe.post[name] for name in probes]
            grads = torch.autograd.grad(losses.sum(), posts)
            for name, post, g in zip(probes, posts, grads):
                s = unit_scalars(probe.pre[name], post, g)
                s["grad_abs"] = s["grad"].abs()
                s["active"] = (s["rect"] > 0).double()
                if name not in sums:
                    sums[name] = ClassSums(data.n_classes, s["act"].shape[1], FIELDS, y.device)
                    max_act[name] = torch.full((s["act"].shape[1],), -torch.inf)
                sums[name].add(y, s)
                max_act[name] = torch.maximum(max_act[name], s["peak"].amax(0).cpu())
            loss_sum += float(losses.detach().sum())
            hit = (logits.argmax(1) == y).double().cpu()
            correct.index_add_(0, y.cpu(), hit)
            counts += torch.bincount(y.cpu(), minlength=data.n_classes).double()
    layers = {
        name: LayerStats(cs.class_means(), cs.overall_means(), max_act[name].numpy(), cs.counts.cpu().numpy())
        for name, cs in sums.items()
    }
    return EvalStats(layers, loss_sum / len(data), float(correct.sum() / len(data)),
                     (correct / counts.clamp(min=1)).numpy())
