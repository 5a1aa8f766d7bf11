"""The heavy stages split into work items, and their results merged in a fixed order.

- statistics: one item per data shard; float64 sums per class add up, per-unit peaks take the maximum;
- single-unit ablation: layer x chunk of units x data shard, float64 per-class loss and hit sums, the
  paired sums (added) and the affected examples (merged: first flips in example order, largest rises);
- cumulative curves: group x chunk of masks x data shard, the same sums.

The items depend only on the model, the data and these constants, never on the executor or the
number of workers, and every merge adds shards in data order (never completion order). So the in-
process executor, Ray with one worker and Ray with N workers compute the same float operations in
the same order: the published tables are bit-equal. (Changing a constant changes float rounding,
about 1e-16 relative; each shard's sums start from zero.)
"""

from __future__ import annotations

import torch

from compute.ablation.curves import CurvePlan, UnitScores, curve_plans, curve_tables
from compute.ablation.effects import ExampleEffects, UnitExamples, merge_examples
from compute.ablation.engine import MaskSums
from compute.ablation.outcome import LayerAblation, Outcome
from compute.distributed.executor import Executor, Item, Worker, run_items
from compute.measure.stats import EvalStats, EvalSums, evaluation_sums
from compute.run.stage_store import StageStore

SHARD_EXAMPLES = 2000  # examples per data shard
UNIT_CHUNK = 256  # units ablated per single-unit item (each item also runs the prefix once per shard)
MASK_CHUNK = 128  # curve points (masks) per curves item


def shards(n: int, size: int = SHARD_EXAMPLES) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _span(a: int, b: int) -> str:
    return f"{a:07d}-{b:07d}"


_SUMS = ("loss", "hits", "dsum", "dsq", "hurt", "helped")  # MaskSums' per-ablation fields (rows = ablations)


def _add(parts: list[MaskSums]) -> MaskSums:
    """Sums over data shards, added in shard order."""
    total = {f: getattr(parts[0], f).clone() for f in (*_SUMS, "counts")}
    for p in parts[1:]:
        for f in total:
            total[f] += getattr(p, f)
    return MaskSums(**total)


def _concat(parts: list[MaskSums]) -> MaskSums:
    """Chunks of masks (rows) of the same data, in row order."""
    return MaskSums(**{f: torch.cat([getattr(p, f) for p in parts]) for f in _SUMS}, counts=parts[0].counts)


# --- statistics -------------------------------------------------------------------------------------

def _statistics_item(worker: Worker, data: str, start: int, stop: int) -> EvalSums:
    return evaluation_sums(worker.model, worker.model.probe_modules(), worker.shard(data, start, stop),
                           device=worker.device)


def statistics(executor: Executor, worker: Worker, store: StageStore, data: str = "eval") -> EvalStats:
    items = [Item(f"x{_span(a, b)}", _statistics_item, (data, a, b)) for a, b in shards(len(worker.data[data]))]
    parts: list[EvalSums] = run_items(executor, worker, items, store, "statistics")
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged.finish()


# --- single-unit ablation ---------------------------------------------------------------------------

def _ablation_item(worker: Worker, data: str, layer: str, units: int, u0: int, u1: int, start: int,
                   stop: int) -> tuple[MaskSums, MaskSums, UnitExamples]:
    """(intact sums, sums with each unit u0..u1-1 of ``layer`` ablated alone, the examples those
    removals affect, with unit and example indices of the whole layer and data set) on one shard."""
    masks = 1 - torch.eye(units)[u0:u1]
    effects = ExampleEffects(u1 - u0)
    intact, (sums,) = worker.engine().evaluate_jobs(worker.shard(data, start, stop), [{layer: masks}],
                                                    effects=[effects])
    return intact, sums, effects.result().shifted(u0, start)


def single_unit(executor: Executor, worker: Worker, store: StageStore, units: dict[str, int],
                data: str = "eval") -> tuple[Outcome, dict[str, LayerAblation]]:
    """What ``AblationEngine.single_unit`` returns, computed as items; ``units``: layer -> unit count."""
    n = len(worker.data[data])
    spans = shards(n)
    chunks = [(layer, u0, min(u0 + UNIT_CHUNK, k)) for layer, k in units.items() for u0 in range(0, k, UNIT_CHUNK)]
    items = [Item(f"{layer}.u{_span(u0, u1)}.x{_span(a, b)}", _ablation_item, (data, layer, units[layer], u0, u1, a, b),
                  size=(u1 - u0) * (b - a) / n)
             for layer, u0, u1 in chunks for a, b in spans]
    results = run_items(executor, worker, items, store, "ablation", unit="unit")
    per_chunk = [results[i:i + len(spans)] for i in range(0, len(results), len(spans))]
    base = _add([intact for intact, _, _ in per_chunk[0]]).outcome(0)
    layers: dict[str, LayerAblation] = {}
    for layer in units:
        parts = [part for (name, _, _), part in zip(chunks, per_chunk) if name == layer]
        rows = _concat([_add([s for _, s, _ in part]) for part in parts])
        examples = merge_examples([e for part in parts for _, _, e in part])
        layers[layer] = LayerAblation.from_outcomes(base, [rows.outcome(u) for u in range(units[layer])],
                                                    rows.paired(), examples)
    return base, layers


# --- cumulative curves ------------------------------------------------------------------------------

def _masks_item(worker: Worker, data: str, job: dict[str, torch.Tensor], start: int, stop: int) -> MaskSums:
    return worker.engine().evaluate_jobs(worker.shard(data, start, stop), [job])[1][0]


def curves(executor: Executor, worker: Worker, store: StageStore, scores: dict[str, UnitScores],
           data: str, split: str) -> tuple[dict[str, list], dict[str, list]]:
    """The ``ablation_curves`` and ``ablation_auc`` columns of one split, computed as items."""
    plans = curve_plans(scores)
    spans = shards(len(worker.data[data]))
    chunks: list[tuple[CurvePlan, int, int]] = [(p, m0, min(m0 + MASK_CHUNK, p.n_masks))
                                                for p in plans for m0 in range(0, p.n_masks, MASK_CHUNK)]
    items = [Item(f"{split}.{p.group}.m{_span(m0, m1)}.x{_span(a, b)}", _masks_item,
                  (data, {k: t[m0:m1] for k, t in p.job.items()}, a, b))
             for p, m0, m1 in chunks for a, b in spans]
    results = run_items(executor, worker, items, store, f"curves-{split}")
    summed = [_add(results[i:i + len(spans)]) for i in range(0, len(results), len(spans))]
    sums = [_concat([s for (q, _, _), s in zip(chunks, summed) if q is p]) for p in plans]
    return curve_tables(plans, sums, split)
