"""The fast ablation engine: many masked ablations per forward pass, suffix only, streamed in chunks.

For each probed layer the model is split at the probe (``compute.ablation.suffix``): the prefix runs once per
chunk of examples, its outputs are cached, and the suffix alone runs on M ablations stacked along
the batch dimension, each ablation a 0/1 mask over the layer's units (and optionally over units of
later probed layers). Results are reduced to per-class float64 sums exactly as the reference
(``compute.ablation.naive``) does, so predictions are the same and losses agree to float rounding.

Memory is bounded by ``budget_mb``: chunk size and ablations per pass are chosen so that every tensor
the suffix computes for one pass fits in the budget; the evaluation set is never expanded whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compute.ablation.effects import MAX_FLIPS, TOP_K, ExampleEffects
from compute.ablation.outcome import LayerAblation, Outcome, PairedSums
from compute.datasets.sources import ImageSet
from compute.errors import ConfigError
from compute.nets.activations import unit_dim
from compute.nets.models import ProbedModel
from compute.progress import bar
from compute.ablation.suffix import Capture, GraphSplit, WholeModel, split_model, trace
from compute.threads import torch_threads


#: Per-example loss differences smaller than this count as 0 in the paired statistics: the engine's
#: stacked suffix and the intact pass may round differently in float32 (about 1e-8), and a dead
#: unit's removal must not look "significant" because of it.
DIFF_FLOOR = 1e-6


@dataclass
class MaskSums:
    """Float64 per-class sums of M masked evaluations: loss (M, K), hits (M, K), examples per class (K,);
    and the paired sums against the intact pass, per ablation (M,): sum and sum of squares of the
    per-example loss differences (ablated - intact, ``DIFF_FLOOR`` applied), right->wrong flips
    (``hurt``) and wrong->right flips (``helped``)."""

    loss: torch.Tensor
    hits: torch.Tensor
    counts: torch.Tensor
    dsum: torch.Tensor
    dsq: torch.Tensor
    hurt: torch.Tensor
    helped: torch.Tensor

    @staticmethod
    def zeros(m: int, k: int) -> MaskSums:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return MaskSums(z(m, k), z(m, k), z(k), z(m), z(m), z(m), z(m))

    def outcome(self, i: int) -> Outcome:
        return Outcome.from_sums(self.loss[i], self.hits[i], self.counts)

    def paired(self) -> PairedSums:
        return PairedSums(float(self.counts.sum()), self.dsum.numpy(), self.dsq.numpy(), self.hurt.numpy(),
                          self.helped.numpy())

    def accuracy(self) -> np.ndarray:
        return (self.hits.sum(1) / self.counts.sum()).numpy()

    def mean_loss(self) -> np.ndarray:
        return (self.loss.sum(1) / self.counts.sum()).numpy()


def _accumulate(sums: MaskSums, logits: torch.Tensor, y: torch.Tensor, first: int,
                base: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Add per-class loss and hits of stacked ablations ``first``.. (rows ablation-major) to (M, K) sums,
    and with ``base`` (the intact per-example loss and hits) the paired sums; returns the per-example
    loss, hits and predictions, (m, b).

    The loss is ``F.cross_entropy``'s: minus the log-softmax at the label, computed as logsumexp minus
    the label's logit (the same value to float rounding; torch's log-softmax over 10 classes is about
    5 times slower on one CPU thread, and it ran on every stacked row).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ConfigError("the model must return a (batch, classes) tensor of logits to be ablated.")
    b = len(y)
    logits = logits.cpu().view(-1, b, logits.shape[1])
    m = logits.shape[0]
    loss = torch.logsumexp(logits, 2) - logits.gather(2, y.view(1, b, 1).expand(m, b, 1)).squeeze(2)
    pred = logits.argmax(2)
    hit = pred == y
    rows = slice(first, first + m)
    sums.loss[rows].index_add_(1, y, loss.double())
    sums.hits[rows].index_add_(1, y, hit.double())
    if base is not None:
        d = loss.double() - base[0].double()
        d = torch.where(d.abs() < DIFF_FLOOR, 0.0, d)
        sums.dsum[rows] += d.sum(1)
        sums.dsq[rows] += (d * d).sum(1)
        sums.hurt[rows] += (base[1] & ~hit).sum(1).double()
        sums.helped[rows] += (~base[1] & hit).sum(1).double()
    return loss, hit, pred


class AblationEngine:
    """Evaluates a model with sets of its probed units clamped to zero, many sets per pass.

    ``probes`` maps layer name to module path in forward order (default: the model's own).
    ``budget_mb`` bounds the tensors of one suffix pass; ``chunk`` caps examples per pass; ``threads``
    sets torch's intra-op threads while evaluating (``compute.threads``; None: the caller's setting).
    """

    def __init__(self, model: ProbedModel, probes: dict[str, str] | None = None, device: str = "cpu",
                 budget_mb: float = 16.0, chunk: int = 500, threads: int | None = None) -> None:
        self.model = model.eval()
        self.probes = dict(probes if probes is not None else model.probes)
        self.device = device
        self.budget = budget_mb * 2**20
        self.chunk = chunk
        self.threads = threads
        self.traced = trace(model)
        self._splits: dict[str, GraphSplit | WholeModel] = {}
        self._bytes: dict[str, int] = {}
        self._captures: dict[tuple[str, ...], Capture] = {}

    def split(self, layer: str, sample: torch.Tensor) -> GraphSplit | WholeModel:
        if layer not in self.probes:
            raise ConfigError(f"unknown layer {layer!r}; probed layers: {', '.join(self.probes)}.")
        if layer not in self._splits:
            # Channel parts only where a chunk of 32 examples' parts fits the budget.
            self._splits[layer] = split_model(self.model, self.traced, self.probes, layer, sample, self.budget / 32)
        return self._splits[layer]

    def plan(self, splits: list[GraphSplit | WholeModel], sample: torch.Tensor, n_masks: list[int],
             n: int) -> tuple[int, list[int]]:
        """(examples per chunk, ablations per pass for each job) so one pass's tensors fit the budget."""
        for s in splits:
            if s.layer not in self._bytes:
                self._bytes[s.layer] = s.example_bytes(sample)
        rows = [max(1, int(self.budget // self._bytes[s.layer])) for s in splits]
        b = max(1, min(self.chunk, n, *rows))
        return b, [max(1, min(m, r // b)) for m, r in zip(n_masks, rows)]

    def _check(self, masks: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """(split layer = earliest masked layer, masks in forward order as float32 on the device)."""
        if not masks:
            raise ConfigError("no layer to ablate: give at least one layer's masks.")
        unknown = set(masks) - set(self.probes)
        if unknown:
            raise ConfigError(f"unknown layers {sorted(unknown)}; probed layers: {', '.join(self.probes)}.")
        m = {int(t.shape[0]) for t in masks.values()}
        if len(m) != 1:
            raise ConfigError(f"masks of different layers disagree on the number of ablations: {sorted(m)}.")
        order = [name for name in self.probes if name in masks]
        return order[0], {k: masks[k].to(self.device, torch.float32) for k in order}

    @torch.inference_mode()
    def evaluate_jobs(self, data: ImageSet, jobs: list[dict[str, torch.Tensor]],
                      progress: object | None = None,
                      effects: list[ExampleEffects | None] | None = None) -> tuple[MaskSums, list[MaskSums]]:
        """Intact sums and, per job, sums of its M ablations; a job maps layer -> masks (M, units) of
        1 (keep) / 0 (ablate), the same M for every layer of the job. ``effects`` (one per job, or
        None) collect which examples each ablation flips and whose loss it raises most.

        One forward pass per chunk of examples feeds every job's suffix; each job is split at its
        earliest masked layer.
        """
        checked = [self._check(job) for job in jobs]
        sample = data.floats(0, 2, self.device)
        splits = {layer: self.split(layer, sample) for layer, _ in checked}
        key = tuple(sorted(splits))
        if key not in self._captures:
            self._captures[key] = Capture(self.model, self.traced, splits)
        capture = self._captures[key]
        n_masks = [next(iter(m.values())).shape[0] for _, m in checked]
        b, groups = self.plan([splits[layer] for layer, _ in checked], sample, n_masks, len(data))
        k = data.n_classes
        sums = [MaskSums.zeros(m, k) for m in [1, *n_masks]]
        base, done = (progress.n if progress is not None else 0), 0.0  # the bar counts whole ablations
        with torch_threads(self.threads):
            for start in range(0, len(data), b):
                x = data.floats(start, start + b, self.device)
                y = data.labels[start:start + b]
                logits, inputs = capture(x)
                base_loss, base_hit, _ = _accumulate(sums[0], logits, y, 0)
                for j, ((layer, masks), m, group, acc) in enumerate(zip(checked, n_masks, groups, sums[1:])):
                    for g0 in range(0, m, group):
                        g1 = min(g0 + group, m)
                        out = splits[layer].suffix(inputs[layer], {name: t[g0:g1] for name, t in masks.items()})
                        loss, hit, pred = _accumulate(acc, out, y, g0, (base_loss[0], base_hit[0]))
                        if effects is not None and effects[j] is not None:
                            effects[j].add(g0, start, loss - base_loss[0], base_hit[0], hit, pred)
                        if progress is not None:
                            done += (g1 - g0) * len(y) / len(data)
                            progress.update(base + round(done) - progress.n)
        counts = torch.bincount(data.labels, minlength=k).double()
        for acc in sums:
            acc.counts = counts
        return sums[0], sums[1:]

    def evaluate(self, data: ImageSet, masks: dict[str, torch.Tensor]) -> MaskSums:
        """Sums of the M ablations given by ``masks`` (layer -> (M, units)); see ``evaluate_jobs``."""
        return self.evaluate_jobs(data, [masks])[1][0]

    @torch.inference_mode()
    def unit_counts(self, data: ImageSet) -> dict[str, int]:
        """Units (channels or neurons) of every probed layer."""
        sample = data.floats(0, 1, self.device)
        counts: dict[str, int] = {}
        handles = [self.model.get_submodule(path).register_forward_hook(
            lambda m, _i, out, name=name: counts.__setitem__(name, int(out.shape[unit_dim(m)])))
            for name, path in self.probes.items()]
        try:
            self.model(sample)
        finally:
            for h in handles:
                h.remove()
        return counts

    def single_unit(self, data: ImageSet, top_k: int = TOP_K,
                    max_flips: int = MAX_FLIPS) -> tuple[Outcome, dict[str, LayerAblation]]:
        """Intact outcome and every unit of every probed layer ablated alone, as
        ``compute.ablation.naive.single_unit_ablation`` computes them (same predictions, same types),
        with the paired statistics and the examples each unit's removal affects (``ExampleEffects``)."""
        counts = self.unit_counts(data)
        progress = bar(None, "ablation", unit="unit", total=sum(counts.values()))
        effects = [ExampleEffects(n, top_k, max_flips) for n in counts.values()]
        intact, sums = self.evaluate_jobs(data, [{name: 1 - torch.eye(n)} for name, n in counts.items()], progress,
                                          effects)  # type: ignore[arg-type]
        progress.close()
        base = intact.outcome(0)
        return base, {name: LayerAblation.from_outcomes(base, [s.outcome(u) for u in range(n)], s.paired(),
                                                        e.result())
                      for (name, n), s, e in zip(counts.items(), sums, effects)}

    def suffix_macs(self, data: ImageSet) -> dict[str, int]:
        """Multiply-accumulates per example of each layer's suffix (what one ablation must recompute)."""
        sample = data.floats(0, 2, self.device)
        return {name: self.split(name, sample).macs(sample) for name in self.probes}
