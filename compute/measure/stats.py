"""Per-unit and per-class statistics of probed layers, and the formulas built on them.

Per example, every unit is reduced to scalars (see ``unit_scalars``); those are summed per class
in float64 and turned into means once, so the same code serves the training trace and the
evaluation set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.nets.activations import by_position, derivative, point_kind, response, unit_dim
from compute.nets.convs import fast_convs
from compute.nets.pools import fast_pools
from compute.nets.probe import Probe
from compute.progress import bar

SELECTIVITY_EPS = 1e-7


def unit_scalars(pre: torch.Tensor, post: torch.Tensor, grad: torch.Tensor | None,
                 fields: tuple[str, ...] | None = None, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per-example, per-unit scalars (B, U) from one layer's activity: ``fields`` of act, rect,
    out, peak, grad, tgrad, taylor (default all; the last three need ``grad``).

    ``module`` is the probe module (its activation kind and unit dimension; None: a ReLU on
    dimension 1). ``rect`` is the mean *response* ``max(f(z) - f(0), 0)`` (for ReLU the output
    itself), ``out`` the mean output ``f(z)``, ``peak`` the largest output over positions.
    ``grad`` is dLoss_n/d(post) for each example's own loss. Two gradient signals come from it:

    - ``grad``, the *output-side* signal -sum_p dL_n/da_p: the derivative of -loss with respect to a
      constant added to the unit's output, i.e. what the loss asks of the unit, sign kept. It is
      non-zero even where the unit is silent, where nothing can act on it.
    - ``tgrad``, the *training signal* -sum_p dL_n/dz_p = -sum_p dL_n/da_p * f'(z_p) at the
      pre-activation z: what actually reaches the unit's weights and bias. For ReLU f'(z) = 1[z > 0]
      (zero where the unit is silent); for smooth activations f'(z) itself (GELU's and SiLU's are
      small but non-zero, even negative, below 0).
    """
    want = set(fields) if fields is not None else {"act", "rect", "out", "peak", "grad", "tgrad", "taylor"}
    module = module if module is not None else nn.ReLU()
    dim = unit_dim(module)
    post_p = by_position(post.detach(), dim)
    out: dict[str, torch.Tensor] = {}
    if "act" in want:
        out["act"] = by_position(pre, dim).mean(2)
    if "rect" in want:
        out["rect"] = by_position(response(module, post.detach()), dim).mean(2)
    if "out" in want:
        out["out"] = post_p.mean(2)
    if "peak" in want:
        out["peak"] = post_p.amax(2)
    if grad is not None:
        g = by_position(grad, dim)
        if "grad" in want:
            out["grad"] = -g.sum(2)
        if "tgrad" in want:
            if point_kind(module).name == "relu":  # ReLU's backward: dL/dz = dL/da where z > 0, else 0
                out["tgrad"] = -(g * (post_p > 0)).sum(2)
            else:
                out["tgrad"] = -(g * by_position(derivative(module, pre), dim)).sum(2)
        if "taylor" in want:
            out["taylor"] = (g * post_p).mean(2).abs()
    return out


@dataclass
class ClassSums:
    """Float64 sums of per-example unit scalars by class, and the example count per class, kept on
    the values' device (no copy per batch) until the means are read; a dataclass of tensors, so
    finished stages and work items store it safely."""

    sums: dict[str, torch.Tensor]  # field -> (K, U)
    counts: torch.Tensor  # (K,)

    @staticmethod
    def zeros(n_classes: int, n_units: int, fields: tuple[str, ...], device: str | torch.device = "cpu") -> ClassSums:
        return ClassSums({f: torch.zeros(n_classes, n_units, dtype=torch.float64, device=device) for f in fields},
                         torch.zeros(n_classes, dtype=torch.float64, device=device))

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
    s = float(np.nanstd(x)) if np.isfinite(x).any() else 0.0
    return s if s > 0 else 1.0


def anomaly(class_tgrad: np.ndarray, class_act: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
    """Training-signal-versus-activation anomaly per (class, unit) of one layer, shape (K, U); NaN for
    dead units (``live`` False: never active on the evaluation set), which have no training signal.

    anomaly = min(tgrad / std(tgrad), -(act - mean(act)) / std(act)), statistics over the layer's
    (K, U) entries of live units. The training signal (``unit_scalars``' ``tgrad``) is only scaled
    (its zero means "no push" and its sign is the direction); the pre-ReLU activation is
    standardised. The smaller of the two is high only where both hold: training pushes the unit up
    for the class *and* the unit is low for the class compared with the layer's live units. A
    positive training signal with a low mean activation means the unit fires for a part of the class
    only, and that part pulls it up (a crossed-7 detector).
    """
    live = np.ones(class_act.shape[1], dtype=bool) if live is None else np.asarray(live, dtype=bool)
    tg = np.where(live[None, :], class_tgrad, np.nan)
    act = np.where(live[None, :], class_act, np.nan)
    if not live.any():
        return tg
    z_grad = tg / _std(tg)
    z_low_act = -(act - np.nanmean(act)) / _std(act)
    return np.minimum(z_grad, z_low_act)


def demand(class_grad: np.ndarray) -> np.ndarray:
    """The output-side gradient signal per (class, unit) in units of its layer standard deviation,
    (K, U): how strongly the loss asks for each unit, whether or not training can act on it."""
    return class_grad / _std(class_grad)


def strongest_anomaly(anom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the largest score (anomaly, specialization) over classes and its class, skipping NaN (a class with no
    examples, a dead unit); NaN and class -1 when every class is NaN. ``units.anomaly_max >= lo``
    must mean "some class has anomaly >= lo": the warehouse answers that preset from this column alone.
    """
    filled = np.where(np.isnan(anom), -np.inf, anom)
    best = filled.argmax(axis=0)
    top = filled.max(axis=0)
    none = np.isneginf(top)
    return np.where(none, np.nan, top), np.where(none, -1, best)


@dataclass
class LayerStats:
    """Evaluation-set statistics of one layer."""

    class_means: dict[str, np.ndarray]  # act, rect, out, grad, grad_abs, tgrad, taylor, active: (K, U)
    overall: dict[str, np.ndarray]  # same fields: (U,)
    max_act: np.ndarray  # (U,) largest output at any position of any example
    counts: np.ndarray  # (K,) examples per class
    n_active: np.ndarray  # (U,) examples on which the unit is active (a positive response at any position)
    # frac_fire, fire_effect, specialization: (K, U) (compute.measure.specialization); threshold: (U,)
    special: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvalStats:
    layers: dict[str, LayerStats]
    loss: float
    accuracy: float
    class_accuracy: np.ndarray
    example_loss: np.ndarray  # (N,) each evaluation example's cross-entropy
    example_pred: np.ndarray  # (N,) the model's prediction for each


FIELDS = ("act", "rect", "out", "grad", "grad_abs", "tgrad", "taylor", "active")


@dataclass
class EvalSums:
    """What ``evaluation_stats`` accumulates over examples, mergeable across shards of the data:
    float64 sums per class merge by addition, the per-unit peak by maximum."""

    sums: dict[str, ClassSums]
    max_act: dict[str, torch.Tensor]
    loss_sum: float
    correct: torch.Tensor  # (K,) float64 hits per class
    counts: torch.Tensor  # (K,) float64 examples per class
    example_loss: np.ndarray  # (N,) per example of this shard, in data order
    example_pred: np.ndarray  # (N,)

    def merge(self, other: EvalSums) -> EvalSums:
        """This shard's sums followed by ``other``'s (merge shards in data order for reproducible floats)."""
        for name, cs in self.sums.items():
            for f, s in cs.sums.items():
                s += other.sums[name].sums[f]
            cs.counts += other.sums[name].counts
            self.max_act[name] = torch.maximum(self.max_act[name], other.max_act[name])
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.counts += other.counts
        self.example_loss = np.concatenate([self.example_loss, other.example_loss])
        self.example_pred = np.concatenate([self.example_pred, other.example_pred])
        return self

    def finish(self) -> EvalStats:
        layers = {name: LayerStats(cs.class_means(), cs.overall_means(), self.max_act[name].numpy(), cs.counts.numpy(),
                                   cs.sums["active"].sum(0).numpy().round().astype(np.int64))
                  for name, cs in self.sums.items()}
        n = float(self.counts.sum())
        return EvalStats(layers, self.loss_sum / n, float(self.correct.sum() / n),
                         (self.correct / self.counts.clamp(min=1)).numpy(), self.example_loss, self.example_pred)


def evaluation_stats(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                     batch_size: int = 500, device: str = "cpu") -> EvalStats:
    """One pass over ``data``: activity, per-example gradients and Taylor scores of every unit."""
    return evaluation_sums(model, probes, data, batch_size, device).finish()


def evaluation_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                    batch_size: int = 500, device: str = "cpu") -> EvalSums:
    """The sums behind ``evaluation_stats`` on ``data`` (a whole set or one shard of it).

    Each example's loss is differentiated separately (the batch loss is a sum and the model is in
    eval mode, so examples do not interact), giving dLoss_n/d(activity) for example n. Runs with the
    fast 2x2 pools and chunked one-channel convolutions (``compute.nets``): torch's floats, faster.
    """
    model.eval()
    sums: dict[str, ClassSums] = {}
    max_act: dict[str, torch.Tensor] = {}
    loss_sum, correct = 0.0, torch.zeros(data.n_classes, dtype=torch.float64)
    counts = torch.zeros(data.n_classes, dtype=torch.float64)
    example_loss, example_pred = [], []
    with Probe(probes) as probe, fast_pools(model), fast_convs(model):
        for start in bar(range(0, len(data), batch_size), "statistics", unit="batch"):
            x = data.floats(start, start + batch_size, device)
            y = data.labels[start:start + batch_size].to(device)
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            posts = [probe.post[name] for name in probes]
            grads = torch.autograd.grad(losses.sum(), posts)
            for name, post, g in zip(probes, posts, grads):
                s = unit_scalars(probe.pre[name], post, g, module=probes[name])
                s["grad_abs"] = s["grad"].abs()
                s["active"] = (s["rect"] > 0).double()
                if name not in sums:
                    sums[name] = ClassSums.zeros(data.n_classes, s["act"].shape[1], FIELDS, y.device)
                    max_act[name] = torch.full((s["act"].shape[1],), -torch.inf)
                sums[name].add(y, s)
                max_act[name] = torch.maximum(max_act[name], s["peak"].amax(0).cpu())
            loss_sum += float(losses.detach().sum())
            example_loss.append(losses.detach().cpu().double().numpy())
            example_pred.append(logits.argmax(1).cpu().numpy())
            hit = (logits.argmax(1) == y).double().cpu()
            correct.index_add_(0, y.cpu(), hit)
            counts += torch.bincount(y.cpu(), minlength=data.n_classes).double()
    return EvalSums(sums, max_act, loss_sum, correct, counts, np.concatenate(example_loss),
                    np.concatenate(example_pred).astype(np.int64))
