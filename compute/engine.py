"""The fast ablation engine: many masked ablations per forward pass, suffix only, streamed in chunks.

For each probed layer the model is split at the probe (``compute.suffix``): the prefix runs once per
chunk of examples, its outputs are cached, and the suffix alone runs on M ablations stacked along
the batch dimension, each ablation a 0/1 mask over the layer's units (and optionally over units of
later probed layers). Results are reduced to per-class float64 sums exactly as the reference
(``compute.ablation``) does, so predictions are the same and losses agree to float rounding.

Memory is bounded by ``budget_mb``: chunk size and ablations per pass are chosen so that every tensor
the suffix computes for one pass fits in the budget; the evaluation set is never expanded whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from compute.ablation import LayerAblation, Outcome, outcome
from compute.data import ImageSet
from compute.errors import ConfigError
from compute.models import ProbedModel
from compute.progress import bar
from compute.suffix import GraphSplit, WholeModel, split_model, trace


@contextmanager
def cpu_threads() -> Iterator[None]:
    """Intra-op threads = the CPUs this process may run on (torch may count more in containers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class MaskSums:
    """Float64 per-class sums of M masked evaluations: loss (M, K), hits (M, K), examples per class (K,)."""

    loss: torch.Tensor
    hits: torch.Tensor
    counts: torch.Tensor

    def outcome(self, i: int) -> Outcome:
        return Outcome.from_sums(self.loss[i], self.hits[i], self.counts)

    def accuracy(self) -> np.ndarray:
        return (self.hits.sum(1) / self.counts.sum()).numpy()

    def mean_loss(self) -> np.ndarray:
        return (self.loss.sum(1) / self.counts.sum()).numpy()


class AblationEngine:
    """Evaluates a model with sets of its probed units clamped to zero, many sets per pass.

    ``probes`` maps layer name to module path in forward order (default: the model's own).
    """

    def __init__(self, model: ProbedModel, probes: dict[str, str] | None = None, device: str = "cpu",
                 budget_mb: float = 192.0, chunk: int = 2000) -> None:
        self.model = model.eval()
        self.probes = dict(probes if probes is not None else model.probes)
        self.device = device
        self.budget = budget_mb * 2**20
        self.chunk = chunk
        self.traced = trace(model)
        self._splits: dict[str, GraphSplit | WholeModel] = {}

    def split(self, layer: str, sample: torch.Tensor) -> GraphSplit | WholeModel:
        if layer not in self.probes:
            raise ConfigError(f"unknown layer {layer!r}; probed layers: {', '.join(self.probes)}.")
        if layer not in self._splits:
            self._splits[layer] = split_model(self.model, self.traced, self.probes, layer, sample)
        return self._splits[layer]

    def plan(self, split: GraphSplit | WholeModel, sample: torch.Tensor, n_masks: int, n: int) -> tuple[int, int]:
        """(examples per chunk, ablations per pass) so one pass's tensors fit the memory budget."""
        rows = max(1, int(self.budget // split.example_bytes(sample)))
        b = max(1, min(self.chunk, n, rows))
        return b, max(1, min(n_masks, rows // b))

    @torch.inference_mode()
    def evaluate(self, data: ImageSet, masks: dict[str, torch.Tensor], progress: object | None = None) -> MaskSums:
        """Per-class sums for M ablations: ``masks[layer]`` is (M, units) of 1 (keep) / 0 (ablate).

        All layers' masks must have the same M; the split is at the earliest masked layer.
        """
        if not masks:
            raise ConfigError("no layer to ablate: give at least one layer's masks.")
        order = [name for name in self.probes if name in masks]
        unknown = set(masks) - set(order)
        if unknown:
            raise ConfigError(f"unknown layers {sorted(unknown)}; probed layers: {', '.join(self.probes)}.")
        m_total = {int(t.shape[0]) for t in masks.values()}
        if len(m_total) != 1:
            raise ConfigError(f"masks of different layers disagree on the number of ablations: {sorted(m_total)}.")
        m_total_n = m_total.pop()
        masks = {k: masks[k].to(self.device, torch.float32) for k in order}
        sample = data.floats(0, 2, self.device)
        split = self.split(order[0], sample)
        b, group = self.plan(split, sample, m_total_n, len(data))
        k = data.n_classes
        loss = torch.zeros(m_total_n * k, dtype=torch.float64)
        hits = torch.zeros(m_total_n * k, dtype=torch.float64)
        with cpu_threads():
            for start in range(0, len(data), b):
                x = data.floats(start, start + b, self.device)
                y = data.labels[start:start + b]
                inputs = split.prefix(x)
                for g0 in range(0, m_total_n, group):
                    g1 = min(g0 + group, m_total_n)
                    logits = split.suffix(inputs, {name: t[g0:g1] for name, t in masks.items()}).cpu()
                    y_rep = y.repeat(g1 - g0)
                    idx = torch.arange(g0, g1).repeat_interleave(len(y)) * k + y_rep
                    loss.index_add_(0, idx, F.cross_entropy(logits, y_rep, reduction="none").double())
                    hits.index_add_(0, idx, (logits.argmax(1) == y_rep).double())
                    if progress is not None:
                        progress.update((g1 - g0) * len(y) / len(data))
        counts = torch.bincount(data.labels, minlength=k).double()
        return MaskSums(loss.view(m_total_n, k), hits.view(m_total_n, k), counts)

    def intact(self, data: ImageSet) -> Outcome:
        """The unablated outcome (one all-ones mask on the first probed layer)."""
        first = next(iter(self.probes))
        n_units = self.unit_counts(data)[first]
        return self.evaluate(data, {first: torch.ones(1, n_units)}).outcome(0)

    @torch.inference_mode()
    def unit_counts(self, data: ImageSet) -> dict[str, int]:
        """Units (channels or neurons) of every probed layer."""
        sample = data.floats(0, 1, self.device)
        counts: dict[str, int] = {}
        handles = [self.model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, name=name: counts.__setitem__(name, int(out.shape[1])))
            for name, path in self.probes.items()]
        try:
            self.model(sample)
        finally:
            for h in handles:
                h.remove()
        return counts

    def single_unit(self, data: ImageSet, base: Outcome | None = None) -> tuple[Outcome, dict[str, LayerAblation]]:
        """Every unit of every probed layer ablated alone: the same result as ``compute.ablation.single_unit_ablation``."""
        base = base or outcome(self.model, data, device=self.device)
        counts = self.unit_counts(data)
        progress = bar(None, "ablation", unit="unit", total=sum(counts.values()))
        results: dict[str, LayerAblation] = {}
        for name, n in counts.items():
            sums = self.evaluate(data, {name: 1 - torch.eye(n)}, progress)
            results[name] = LayerAblation.from_outcomes(base, [sums.outcome(u) for u in range(n)])
        progress.close()
        return base, results

    def suffix_macs(self, data: ImageSet) -> dict[str, int]:
        """Multiply-accumulates per example of each layer's suffix (what one ablation must recompute)."""
        sample = data.floats(0, 2, self.device)
        return {name: self.split(name, sample).macs(sample) for name in self.probes}
