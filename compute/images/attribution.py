"""Example-based evidence for every unit: extreme examples, their attributions, weighted averages.

- **Top/bottom examples**: every example is scored by the unit's *largest pre-activation over
  positions* (one position for a linear unit). The top k have the highest score (for them it is
  the post-ReLU peak, the spatial max the issue asks for); the bottom k the lowest. Scoring the
  bottom by the post-ReLU value would tie most examples at 0, so the pre-activation tells which
  examples are *furthest* from switching the unit on.
- **Guided backprop and plain gradient** (captum) of the unit's pre-activation at the peak position,
  for each top example. For an active unit this equals the attribution of its post-ReLU output;
  for a silent one it still shows what would push it up. Guided backprop's rule (pass only positive
  gradients through a ReLU) is defined for ReLUs: as captum's ``GuidedBackprop`` does, it is applied
  at every ``nn.ReLU`` module (including those inside probe points) and every other activation
  passes its ordinary gradient, so in a network without ReLUs the map equals the plain gradient.
- **Weighted average inputs** per class on the training set: the mean input weighted by the unit's
  response (mean over positions of ``max(f(z) - f(0), 0)``, the post-ReLU output for ReLU), and by
  the positive part of its gradient signal ``-sum_p dL_n/da_p`` (docs/metrics.md), i.e. the examples
  whose loss asks the unit to be higher.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.nets.activations import response
from compute.nets.convs import fast_convs
from compute.nets.pools import fast_pools
from compute.nets.probe import Probe, units_of
from compute.progress import bar


@dataclass
class Extremes:
    """The k highest- and lowest-scoring examples of each unit of one layer (arrays (U, k))."""

    top_idx: np.ndarray
    top_val: np.ndarray
    top_pos: np.ndarray  # flat position index of the peak within the unit's map
    bottom_idx: np.ndarray
    bottom_val: np.ndarray
    bottom_pos: np.ndarray

    def select(self, u0: int, u1: int) -> Extremes:
        """Units u0..u1-1."""
        return Extremes(*(getattr(self, f)[u0:u1] for f in _EXTREME_FIELDS))


_EXTREME_FIELDS = ("top_idx", "top_val", "top_pos", "bottom_idx", "bottom_val", "bottom_pos")


def extreme_examples(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet, k: int,
                     batch_size: int = 500, device: str = "cpu", start: int = 0) -> tuple[dict[str, Extremes], np.ndarray]:
    """Top and bottom ``k`` examples of every unit, and the model's prediction for every example.
    ``data`` may be one shard of a dataset that begins at example ``start`` (indices are the dataset's):
    ``merge_extremes`` joins the shards' candidates."""
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in probes}
    where: dict[str, list[torch.Tensor]] = {name: [] for name in probes}
    preds = []
    with torch.no_grad(), Probe(probes) as probe, fast_pools(model):
        for a in bar(range(0, len(data), batch_size), "top examples", unit="batch"):
            preds.append(model(data.floats(a, a + batch_size, device)).argmax(1).cpu())
            for name in probes:
                peak, pos = units_of(probes[name], probe.pre[name]).max(2)
                scores[name].append(peak.cpu())
                where[name].append(pos.cpu())
    k = min(k, len(data))
    out = {}
    for name in probes:
        s, p = torch.cat(scores[name]).T, torch.cat(where[name]).T  # (U, N)
        top_val, top_idx = s.topk(k, dim=1)
        bottom_val, bottom_idx = s.topk(k, dim=1, largest=False)
        out[name] = Extremes(top_idx.numpy() + start, top_val.numpy(), p.gather(1, top_idx).numpy(),
                             bottom_idx.numpy() + start, bottom_val.numpy(), p.gather(1, bottom_idx).numpy())
    return out, torch.cat(preds).numpy()


def merge_extremes(parts: list[Extremes], k: int) -> Extremes:
    """The top and bottom ``k`` of the candidates of consecutive shards (given in data order): a stable
    sort, so between equal scores the earlier shard's candidate (and within a shard, topk's order) wins."""
    def best(idx: list[np.ndarray], val: list[np.ndarray], pos: list[np.ndarray], sign: float):
        i, v, p = np.concatenate(idx, 1), np.concatenate(val, 1), np.concatenate(pos, 1)
        order = np.argsort(sign * v, axis=1, kind="stable")[:, :k]
        return tuple(np.take_along_axis(a, order, 1) for a in (i, v, p))

    top = best([e.top_idx for e in parts], [e.top_val for e in parts], [e.top_pos for e in parts], -1.0)
    bottom = best([e.bottom_idx for e in parts], [e.bottom_val for e in parts], [e.bottom_pos for e in parts], 1.0)
    return Extremes(*top, *bottom)


def unit_attributions(model: nn.Module, module: nn.Module, inputs: torch.Tensor, units: torch.Tensor,
                      positions: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Guided backprop and gradient of unit ``units[b]`` at flat position ``positions[b]`` of
    ``module``'s input (the pre-activation), for each input ``inputs[b]``: two (B, C, H, W) arrays."""
    # Imported here: captum brings matplotlib (~1 s alone, 0.5 s of a Ray worker's imports), which every
    # process that only reads ``Extremes`` (the stage store, each Ray worker at start) would otherwise pay.
    from captum.attr import NeuronGradient, NeuronGuidedBackprop

    model.eval()
    gbp, grad = NeuronGuidedBackprop(model, module), NeuronGradient(model, module)
    maps: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    with fast_pools(model), fast_convs(model):  # torch's values and gradients, faster (compute/nets/)
        for start in range(0, len(inputs), batch_size):
            u, p = units[start:start + batch_size], positions[start:start + batch_size]
            rows = torch.arange(len(u), device=u.device)

            def selector(layer_in: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
                t = layer_in[0] if isinstance(layer_in, tuple) else layer_in
                return units_of(module, t)[rows, u, p]

            x = inputs[start:start + batch_size].detach().requires_grad_()
            for method, acc in ((gbp, maps[0]), (grad, maps[1])):
                with warnings.catch_warnings():  # captum announces its temporary ReLU hooks on every call
                    warnings.filterwarnings("ignore", "Setting backward hooks on ReLU", UserWarning)
                    acc.append(method.attribute(x, selector, attribute_to_neuron_input=True).detach().cpu().numpy())
    return np.concatenate(maps[0]), np.concatenate(maps[1])


@dataclass
class WeightedAverages:
    """Per unit and class (U, K, C, H, W) weighted mean inputs and (U, K) mean weights."""

    act: np.ndarray
    act_weight: np.ndarray
    grad: np.ndarray
    grad_weight: np.ndarray

    def select(self, u0: int, u1: int) -> WeightedAverages:
        """Units u0..u1-1."""
        return WeightedAverages(self.act[u0:u1], self.act_weight[u0:u1], self.grad[u0:u1], self.grad_weight[u0:u1])


AverageSums = dict[str, dict[str, np.ndarray]]  # layer -> float64 sums of ``average_sums``; "" -> {"counts"}


def weighted_averages(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                      batch_size: int = 500, device: str = "cpu") -> dict[str, WeightedAverages]:
    """Activation- and gradient-weighted class means of the inputs of ``data``, for every unit.

    Per example n of class c and unit u: weight a = spatial mean of the post-ReLU output, weight
    g = max(0, -sum_p dL_n/da_p). Image = sum_n w_n x_n / sum_n w_n over class c (all zeros where
    the weights sum to 0); the stored weight is the class mean of w.
    """
    return finish_averages(average_sums(model, probes, data, batch_size, device), data.shape)


def average_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet | Iterable[ImageSet],
                 batch_size: int = 500, device: str = "cpu") -> AverageSums:
    """The sums behind ``weighted_averages`` on ``data`` (a whole set or part of it; parts add up):
    per layer ``act`` and ``grad`` (K, U, D) weighted input sums and ``act_w``, ``grad_w`` (U, K) weight
    sums, float64; and under "" the examples per class (``counts``).

    ``data`` may also be consecutive pieces of a set, fetched one at a time (a work item's data shards):
    every batch adds into the same float64 totals, so no piece pays for zeroing, copying and adding
    totals as large as the result (28 MB for LeNet-5 on 28x28 digits)."""
    model.eval()
    pieces = [data] if isinstance(data, ImageSet) else data
    counts: list[torch.Tensor] = []  # per piece, the examples per class
    spans: list[tuple[str, str, int, int]] = []  # (layer, kind, first, last column of the stacked weights)
    # (K, columns, D): every layer's and kind's weighted sums side by side, so a class takes one matmul per
    # batch and adds it to one contiguous block
    total: torch.Tensor | None = None
    total_w: torch.Tensor | None = None
    with Probe(probes) as probe, fast_pools(model):
        for piece, start in _batches(pieces, batch_size, counts):
            k, d = piece.n_classes, int(np.prod(piece.shape))
            x = piece.floats(start, start + batch_size, device)
            y = piece.labels[start:start + batch_size].to(device)
            losses = F.cross_entropy(model(x), y, reduction="none")
            posts = [probe.post[name] for name in probes]
            grads = torch.autograd.grad(losses.sum(), posts)
            columns = []
            for name, post, g in zip(probes, posts, grads):
                module = probes[name]
                columns += [units_of(module, response(module, post.detach())).mean(2),
                            (-units_of(module, g).sum(2)).clamp(min=0)]
            w = torch.cat(columns, 1)
            if total is None:
                edges = np.cumsum([0] + [c.shape[1] for c in columns])
                spans = [(name, kind, int(edges[2 * i + j]), int(edges[2 * i + j + 1]))
                         for i, name in enumerate(probes) for j, kind in enumerate(("act", "grad"))]
                total = torch.zeros(k, w.shape[1], d, dtype=torch.float64, device=device)
                total_w = torch.zeros(w.shape[1], k, dtype=torch.float64, device=device)
            assert total_w is not None
            flat = x.reshape(len(x), d)
            for c in torch.unique(y).tolist():
                m = y == c
                wc = w[m]
                # A batch's class sum in float32 (a few hundred terms), the sum over batches in float64.
                total[c] += wc.T @ flat[m]
                total_w[:, c] += wc.double().sum(0)
    out: AverageSums = {"": {"counts": sum(counts[1:], counts[0]).numpy()}}
    if total is None or total_w is None:  # no examples
        return out
    for layer, kind, c0, c1 in spans:
        sums = out.setdefault(layer, {})
        sums[kind] = total[:, c0:c1].cpu().numpy().copy()
        sums[kind + "_w"] = total_w[c0:c1].cpu().numpy().copy()
    return out


def _batches(pieces: Iterable[ImageSet], batch_size: int, counts: list[torch.Tensor]) -> Iterator[tuple[ImageSet, int]]:
    """(piece, first example) of each batch of the pieces, fetching one piece at a time; appends each
    piece's examples per class to ``counts``."""
    for piece in pieces:
        counts.append(torch.bincount(piece.labels, minlength=piece.n_classes).double())
        for start in bar(range(0, len(piece), batch_size), "averages", unit="batch"):
            yield piece, start


def finish_averages(sums: AverageSums, shape: tuple[int, ...]) -> dict[str, WeightedAverages]:
    """Per layer the weighted averages from ``average_sums`` of a whole dataset of examples of ``shape``."""
    counts = torch.from_numpy(sums[""]["counts"])
    out: dict[str, WeightedAverages] = {}
    for name, layer in sums.items():
        if not name:
            continue
        means = {}
        for kind in ("act", "grad"):
            weight = torch.from_numpy(layer[kind + "_w"])
            img = torch.from_numpy(layer[kind]).transpose(0, 1) / torch.where(weight > 0, weight, 1.0)[..., None]
            means[kind] = img.reshape(*weight.shape, *shape).float().numpy()
            means[kind + "_w"] = (weight / counts.clamp(min=1)).numpy()
        out[name] = WeightedAverages(means["act"], means["act_w"], means["grad"], means["grad_w"])
    return out
