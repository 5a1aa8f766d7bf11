"""The heavy stages split into work items, and their results merged in a fixed order.

- evaluation: one item per data shard; loss sums and correct counts add up;
- statistics: one item per data shard; float64 sums per class add up, per-unit peaks take the maximum;
  then the firing rule's two passes (position moments, then the example values' under the rule they
  give) and the specialization pass (which needs the thresholds), each a round of one item per shard;
- single-unit ablation: chunks of units (up to ``UNIT_CHUNK`` of one layer) packed into items of up to
  ``UNIT_CHUNK`` units across layers (``packed``: an item's chunks share one prefix pass per batch) x data
  shard; float64 per-class loss and hit sums, the paired sums (added) and the affected examples
  (merged: first flips in example order, largest rises);
- sequential single-unit ablation: the same items, look by look, for the units still running;
- cumulative curves and per-class curves: chunks of masks of a group, packed the same way across groups
  (``MASK_CHUNK``) x data shard, the same sums;
- activation maximization (the images stage's largest part): layer x chunk of units, the chunks the
  in-process stack uses (``compute.images.actmax.chunk_units``), concatenated in unit order; the images
  stage's other rounds are in ``compute.distributed.images``.

The items depend only on the model, the data and these constants, never on the executor or the
number of workers, and every merge adds shards in data order (never completion order). So the in-
process executor, Ray with one worker and Ray with N workers compute the same float operations in
the same order: the published tables are bit-equal. (Changing a constant changes float rounding,
about 1e-16 relative; each shard's sums start from zero.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from compute.ablation import sequential
from compute.ablation.class_curves import ClassPlan, class_plans, class_tables
from compute.ablation.curves import CurvePlan, UnitScores, curve_plans, curve_tables
from compute.ablation.effects import ExampleEffects, UnitExamples, merge_examples
from compute.ablation.engine import MaskSums
from compute.ablation.outcome import LayerAblation, Outcome, PairedSums
from compute.distributed.executor import Executor, Item, Shared, Worker, run_items
from compute.images.actmax import Maps, activation_maps, chunk_units, concat
from compute.images.config import ActMaxConfig
from compute.measure import firing
from compute.measure.firing import FiringRule
from compute.measure.specialization import specialization_sums
from compute.measure.stats import EvalStats, EvalSums, evaluation_sums
from compute.nets.convs import fast_convs
from compute.nets.pools import fast_pools
from compute.measure.train import evaluation_sums as loss_sums
from compute.run.stage_store import StageStore

T = TypeVar("T")

SHARD_EXAMPLES = 2000  # examples per data shard
UNIT_CHUNK = 256  # units ablated per single-unit item, across layers (each item runs the prefix once per shard)
MASK_CHUNK = 1024  # curve points (masks) per curves item, across groups


def shards(n: int) -> list[tuple[int, int]]:
    return shard_spans(0, n)


def shard_spans(a: int, b: int) -> list[tuple[int, int]]:
    """Examples a..b-1 in shards of at most ``SHARD_EXAMPLES``."""
    return [(s, min(s + SHARD_EXAMPLES, b)) for s in range(a, b, SHARD_EXAMPLES)]


def span_key(a: int, b: int) -> str:
    return f"{a:07d}-{b:07d}"


_SUMS = ("loss", "hits", "dsum", "dsq", "hurt", "helped")  # MaskSums' per-ablation fields (rows = ablations)


def packed(chunks: list[T], size: Callable[[T], int], cap: int) -> list[list[T]]:
    """Consecutive chunks gathered into items of at most ``cap`` units or masks in all (a bigger chunk
    alone). An item's jobs share one prefix pass (a whole forward pass) per batch of examples, which cost
    as much as the masks' suffixes in the curves of LeNet-5's fc layers, while ``cap`` keeps enough
    items to spread over the workers."""
    packs: list[list[T]] = []
    total = 0
    for chunk in chunks:
        if packs and total + size(chunk) <= cap:
            packs[-1].append(chunk)
            total += size(chunk)
        else:
            packs.append([chunk])
            total = size(chunk)
    return packs


def pack_key(names: list[str]) -> str:
    """A packed item's key from its chunks' names: the first and how many follow it (packs are consecutive
    chunks of a fixed plan, so this names the content; ``+`` keeps keys of unpacked items of older code
    from being read)."""
    return f"{names[0]}+{len(names) - 1}"


def _per_chunk(packs: list[list[T]], results: list[Any], n_spans: int) -> list[list[Any]]:
    """Item results (pack-major, then shard; each a list with one entry per chunk of its pack) as one list
    per chunk, in shard order."""
    out: list[list[Any]] = []
    for i, pack in enumerate(packs):
        part = results[i * n_spans:(i + 1) * n_spans]
        out += [[r[j] for r in part] for j in range(len(pack))]
    return out


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


# --- evaluation -------------------------------------------------------------------------------------

def _evaluate_item(worker: Worker, data: str, start: int, stop: int) -> tuple[float, int]:
    return loss_sums(worker.model, worker.shard(data, start, stop), device=worker.device)


def evaluate(executor: Executor, worker: Worker, store: StageStore, data: str) -> tuple[float, float]:
    """(mean loss, accuracy) on a dataset, one item per shard, sums added in shard order."""
    n = len(worker.data[data])
    items = [Item(f"{data}.x{span_key(a, b)}", _evaluate_item, (data, a, b)) for a, b in shards(n)]
    loss, correct = 0.0, 0
    for part_loss, part_correct in run_items(executor, worker, items, store, f"evaluate {data}"):
        loss, correct = loss + part_loss, correct + part_correct
    return loss / n, correct / n


# --- statistics -------------------------------------------------------------------------------------

def _statistics_item(worker: Worker, data: str, start: int, stop: int) -> EvalSums:
    return evaluation_sums(worker.model, worker.model.probe_modules(), worker.shard(data, start, stop),
                           device=worker.device)


def statistics(executor: Executor, worker: Worker, store: StageStore, data: str = "eval") -> EvalStats:
    items = [Item(f"x{span_key(a, b)}", _statistics_item, (data, a, b)) for a, b in shards(len(worker.data[data]))]
    parts: list[EvalSums] = run_items(executor, worker, items, store, "statistics")
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged.finish()


def add_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Nested dicts (or tuples) of float64 arrays of the shards, added in shard order."""
    def add(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: add([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], tuple):
            return tuple(add(list(v)) for v in zip(*values))
        total = np.array(values[0], dtype=np.float64, copy=True)
        for v in values[1:]:
            total += v
        return total
    return add(parts)


def _moments_item(worker: Worker, data: str, start: int, stop: int) -> firing.Sums:
    model = worker.model
    with fast_pools(model), fast_convs(model):  # the same floats, faster (compute/nets/)
        return firing.moment_sums(model, model.probe_modules(), worker.shard(data, start, stop), device=worker.device)


def _values_item(worker: Worker, data: str, start: int, stop: int, rules: Shared) -> firing.Sums:
    model = worker.model
    with fast_pools(model), fast_convs(model):
        return firing.value_sums(model, model.probe_modules(), worker.shard(data, start, stop), worker.get(rules),
                                 device=worker.device)


def firing_rules(executor: Executor, worker: Worker, store: StageStore, data: str = "eval") -> dict[str, FiringRule]:
    """``compute.measure.firing.fit`` on a dataset as two rounds of items per shard (position moments, then
    the example values' moments under the rules they give), each round's sums added in shard order. The
    rules go to the executor once (``Executor.share``), not with every item."""
    n = len(worker.data[data])
    spans = shards(n)
    moments = run_items(executor, worker, [Item(f"moments.x{span_key(a, b)}", _moments_item, (data, a, b))
                                           for a, b in spans], store, "firing rule")
    rules = firing.rules_from_moments(add_sums(moments), n)
    shared = executor.share(rules)
    values = run_items(executor, worker, [Item(f"values.x{span_key(a, b)}", _values_item, (data, a, b, shared))
                                          for a, b in spans], store, "firing threshold")
    return firing.with_thresholds(rules, add_sums(values), n)


def _specialization_item(worker: Worker, data: str, start: int, stop: int,
                         rules: Shared) -> dict[str, dict[str, np.ndarray]]:
    model = worker.model
    with fast_pools(model), fast_convs(model):
        return specialization_sums(model, model.probe_modules(), worker.shard(data, start, stop), worker.get(rules),
                                   device=worker.device)


def specialization(executor: Executor, worker: Worker, store: StageStore, rules: dict[str, FiringRule],
                   data: str = "eval") -> dict[str, dict[str, np.ndarray]]:
    """``specialization_sums`` on a dataset, one item per shard, added in shard order (the rules shared once)."""
    shared = executor.share(rules)
    items = [Item(f"special.x{span_key(a, b)}", _specialization_item, (data, a, b, shared))
             for a, b in shards(len(worker.data[data]))]
    return add_sums(run_items(executor, worker, items, store, "specialization"))


# --- single-unit ablation ---------------------------------------------------------------------------

def _ablation_item(worker: Worker, data: str, chunks: list[tuple[str, int, int, int]], start: int,
                   stop: int) -> tuple[MaskSums, list[tuple[MaskSums, UnitExamples]]]:
    """(intact sums, per chunk (layer, its unit count, u0, u1) the sums with each unit u0..u1-1 ablated alone
    and the examples those removals affect, with unit and example indices of the whole layer and data set)
    on one shard; the chunks share one prefix pass."""
    effects = [ExampleEffects(u1 - u0) for _, _, u0, u1 in chunks]
    intact, sums = worker.engine().evaluate_jobs(worker.shard(data, start, stop),
                                                 [{layer: 1 - torch.eye(k)[u0:u1]} for layer, k, u0, u1 in chunks],
                                                 effects=effects)  # type: ignore[arg-type]
    return intact, [(s, e.result().shifted(u0, start)) for s, e, (_, _, u0, _) in zip(sums, effects, chunks)]


def single_unit(executor: Executor, worker: Worker, store: StageStore, units: dict[str, int],
                data: str = "eval") -> tuple[Outcome, dict[str, LayerAblation]]:
    """What ``AblationEngine.single_unit`` returns, computed as items; ``units``: layer -> unit count."""
    n = len(worker.data[data])
    spans = shards(n)
    chunks = [(layer, k, u0, min(u0 + UNIT_CHUNK, k)) for layer, k in units.items() for u0 in range(0, k, UNIT_CHUNK)]
    packs = packed(chunks, lambda c: c[3] - c[2], UNIT_CHUNK)
    items = [Item(f"{pack_key([f'{layer}.u{span_key(u0, u1)}' for layer, _, u0, u1 in pack])}.x{span_key(a, b)}",
                  _ablation_item, (data, pack, a, b), size=sum(c[3] - c[2] for c in pack) * (b - a) / n)
             for pack in packs for a, b in spans]
    results = run_items(executor, worker, items, store, "ablation", unit="unit")
    base = _add([intact for intact, _ in results[:len(spans)]]).outcome(0)
    per_chunk = _per_chunk(packs, [found for _, found in results], len(spans))
    layers: dict[str, LayerAblation] = {}
    for layer in units:
        parts = [part for (name, _, _, _), part in zip(chunks, per_chunk) if name == layer]
        rows = _concat([_add([s for s, _ in part]) for part in parts])
        examples = merge_examples([e for part in parts for _, e in part])
        layers[layer] = LayerAblation.from_outcomes(base, [rows.outcome(u) for u in range(units[layer])],
                                                    rows.paired(), examples)
    return base, layers


# --- sequential single-unit ablation -----------------------------------------------------------------

def _units_item(worker: Worker, data: str, chunks: list[tuple[str, int, np.ndarray]], start: int,
                stop: int) -> tuple[MaskSums, list[tuple[MaskSums, UnitExamples]]]:
    """``_ablation_item`` for chunks (layer, its unit count, unit indices ``idx``: any subset; none: the
    intact pass only)."""
    effects = [ExampleEffects(len(idx)) for _, _, idx in chunks]
    intact, sums = worker.engine().evaluate_jobs(
        worker.shard(data, start, stop), [{layer: 1 - torch.eye(k)[torch.from_numpy(idx)]} for layer, k, idx in chunks],
        effects=effects)  # type: ignore[arg-type]
    out = []
    for s, e, (_, _, idx) in zip(sums, effects, chunks):
        found = e.result()
        out.append((s, UnitExamples(idx[found.unit], found.example + start, found.kind, found.rank,
                                    found.loss_delta, found.pred_ablated)))
    return intact, out


def sequential_unit(executor: Executor, worker: Worker, store: StageStore, units: dict[str, int], order: np.ndarray,
                    width: float, data: str = "eval", first: int = sequential.FIRST_LOOK
                    ) -> tuple[Outcome, dict[str, LayerAblation]]:
    """``single_unit`` under the sequential rule of ``compute.ablation.sequential``: ``worker.data[data]``
    is the evaluation set in the fixed random ``order`` (``order[i]``: the original index of its i-th
    example); each look's items ablate only the units still running, and each unit's deltas, paired
    sums and affected examples (original indices) cover the examples it saw."""
    n = len(worker.data[data])
    bounds = sequential.looks(n, first)
    level = sequential.levels(len(bounds))
    first_layer = next(iter(units))
    running = {layer: np.arange(k) for layer, k in units.items()}
    acc = {layer: MaskSums.zeros(k, worker.data[data].n_classes) for layer, k in units.items()}
    seen = {layer: torch.zeros(k, acc[layer].loss.shape[1], dtype=torch.float64) for layer, k in units.items()}
    base_of = {layer: MaskSums.zeros(k, acc[layer].loss.shape[1]) for layer, k in units.items()}
    stopped_at = {layer: np.zeros(k, dtype=np.int64) for layer, k in units.items()}
    examples: dict[str, list[UnitExamples]] = {layer: [] for layer in units}
    intact: MaskSums | None = None
    for r, (a, b) in enumerate(zip([0, *bounds[:-1]], bounds)):
        spans = shard_spans(a, b)
        chunks = [(layer, i, idx[i:i + UNIT_CHUNK]) for layer, idx in running.items()
                  for i in range(0, len(idx), UNIT_CHUNK)]
        if not chunks:  # every unit has stopped: the intact pass alone, for the run's intact outcome
            chunks = [(first_layer, 0, np.zeros(0, dtype=np.int64))]
        packs = packed(chunks, lambda c: len(c[2]), UNIT_CHUNK)
        items = [Item(f"{pack_key([f'{layer}.look{r}.c{i:07d}' for layer, i, _ in pack])}.x{span_key(s0, s1)}",
                      _units_item, (data, [(layer, units[layer], idx) for layer, _, idx in pack], s0, s1),
                      size=sum(len(c[2]) for c in pack) * (s1 - s0) / n)
                 for pack in packs for s0, s1 in spans]
        results = run_items(executor, worker, items, store, f"ablation look {r + 1}/{len(bounds)}", unit="unit")
        look_intact = _add([part for part, _ in results[:len(spans)]])
        intact = look_intact if intact is None else _add([intact, look_intact])
        for (layer, _, idx), part in zip(chunks, _per_chunk(packs, [found for _, found in results], len(spans))):
            if not len(idx):
                continue
            sums = _add([s for s, _ in part])
            rows, into = torch.from_numpy(idx), acc[layer]
            for f in _SUMS:
                getattr(into, f)[rows] += getattr(sums, f)
            examples[layer] += [e for _, e in part]
        for layer, idx in running.items():
            into = acc[layer]
            rows = torch.from_numpy(idx)
            done = (sequential.stops(b, into.dsum[rows].numpy(), into.dsq[rows].numpy(), level[r], width,
                                     units[layer])
                    if r < len(bounds) - 1 else np.ones(len(idx), dtype=bool))
            done_rows = rows[torch.from_numpy(done)]
            seen[layer][done_rows] = intact.counts
            base_of[layer].loss[done_rows] = intact.loss[0]
            base_of[layer].hits[done_rows] = intact.hits[0]
            stopped_at[layer][idx[done]] = r
            running[layer] = idx[~done]
    assert intact is not None
    base = intact.outcome(0)
    layers: dict[str, LayerAblation] = {}
    for layer, k in units.items():
        into, counts = acc[layer], seen[layer]
        rows = [Outcome.from_sums(into.loss[u], into.hits[u], counts[u]) for u in range(k)]
        bases = [Outcome.from_sums(base_of[layer].loss[u], base_of[layer].hits[u], counts[u]) for u in range(k)]
        paired = PairedSums(np.array(bounds)[stopped_at[layer]].astype(np.float64), into.dsum.numpy(),
                            into.dsq.numpy(), into.hurt.numpy(), into.helped.numpy(), level[stopped_at[layer]])
        found = merge_examples(examples[layer]) if examples[layer] else None
        if found is not None:
            found = UnitExamples(found.unit, order[found.example], found.kind, found.rank, found.loss_delta,
                                 found.pred_ablated)
        layers[layer] = LayerAblation.from_outcomes(bases, rows, paired, found)
    return base, layers


# --- cumulative curves ------------------------------------------------------------------------------

def _masks_item(worker: Worker, data: str, jobs: list[dict[str, torch.Tensor]], start: int,
                stop: int) -> list[MaskSums]:
    return worker.engine().evaluate_jobs(worker.shard(data, start, stop), jobs)[1]


def _plan_sums(executor: Executor, worker: Worker, store: StageStore, plans: list[CurvePlan] | list[ClassPlan],
               data: str, prefix: str, label: str) -> tuple[list[MaskSums], MaskSums]:
    """Every plan's masks (``plan.group``, ``plan.job``, ``plan.n_masks``: curve and class-curve plans) as
    items of chunks of masks (``packed``) x shard; per plan its sums over the data, and the first chunk's
    (for counts)."""
    spans = shards(len(worker.data[data]))
    chunks = [(p, m0, min(m0 + MASK_CHUNK, p.n_masks)) for p in plans for m0 in range(0, p.n_masks, MASK_CHUNK)]
    packs = packed(chunks, lambda c: c[2] - c[1], MASK_CHUNK)
    items = [Item(f"{prefix}{pack_key([f'{p.group}.m{span_key(m0, m1)}' for p, m0, m1 in pack])}.x{span_key(a, b)}",
                  _masks_item, (data, [{k: t[m0:m1] for k, t in p.job.items()} for p, m0, m1 in pack], a, b))
             for pack in packs for a, b in spans]
    results = run_items(executor, worker, items, store, label)
    summed = [_add(part) for part in _per_chunk(packs, results, len(spans))]
    return [_concat([s for (q, _, _), s in zip(chunks, summed) if q is p]) for p in plans], summed[0]


Evaluated = dict[str, tuple[torch.Tensor, MaskSums]]  # group -> (distinct masks (D, units), their sums)


def _flat(job: dict[str, torch.Tensor]) -> torch.Tensor:
    """A job's masks with every layer's units side by side (groups list their layers in forward order)."""
    return torch.cat(list(job.values()), 1)


def curves(executor: Executor, worker: Worker, store: StageStore, scores: dict[str, UnitScores],
           data: str, split: str) -> tuple[dict[str, list], dict[str, list], Evaluated]:
    """The ``ablation_curves`` and ``ablation_auc`` columns of one split, computed as items, and per group
    the masks evaluated with their sums (the class curves reuse those they share)."""
    plans = curve_plans(scores)
    sums, _ = _plan_sums(executor, worker, store, plans, data, f"{split}.", f"curves-{split}")
    return (*curve_tables(plans, sums, split), {p.group: (_flat(p.job), s) for p, s in zip(plans, sums)})


# --- per-class curves -------------------------------------------------------------------------------

def class_curves(executor: Executor, worker: Worker, store: StageStore, class_importance: dict[str, np.ndarray],
                 live: dict[str, np.ndarray], data: str = "eval", known: Evaluated | None = None
                 ) -> tuple[dict[str, list], dict[str, list]]:
    """The ``class_curves`` and ``class_removal`` columns, computed as items: group x chunk of masks x shard.

    ``known``: masks the cumulative curves already evaluated on the same data, per group, with their sums
    (``curves``); those are not evaluated again. A mask's sums do not depend on the masks evaluated beside
    it (each row of a stacked pass is its own example), so the tables are the same floats either way; in
    LeNet-5's conv1 (6 units) 21 of the 36 class-curve masks are curve masks too.
    """
    plans = class_plans(class_importance, live)
    known = known or {}
    todo, sources = [], []
    for p in plans:
        flat = _flat(p.job)
        have = known.get(p.group)
        index = {m.numpy().tobytes(): i for i, m in enumerate(have[0])} if have is not None else {}
        rows = torch.tensor([index.get(m.numpy().tobytes(), -1) for m in flat], dtype=torch.long)
        todo.append(ClassPlan(p.group, p.n_alive, p.counts, p.inverse, {k: t[rows < 0] for k, t in p.job.items()}))
        sources.append(rows)
    # Keys name the masks not evaluated by the curves ("new."), so items saved by code that evaluated all are not read.
    pending = [p for p in todo if p.n_masks]
    new_sums, _ = _plan_sums(executor, worker, store, pending, data, "new.", "class curves") if pending else ([], None)
    evaluated = dict(zip([p.group for p in pending], new_sums))
    sums = []
    for p, rows in zip(plans, sources):
        parts = [known[p.group][1]] if p.group in known else []
        parts += [evaluated[p.group]] if p.group in evaluated else []
        both = _concat(parts)  # known rows first, then the new ones in plan order
        offset = len(known[p.group][0]) if p.group in known else 0
        pick = torch.where(rows >= 0, rows, offset + torch.cumsum(rows < 0, 0) - 1)
        sums.append(MaskSums(**{f: getattr(both, f)[pick] for f in _SUMS}, counts=both.counts))
    return class_tables(plans, sums[0].counts, sums, worker.data[data].class_names)


# --- activation maximization ------------------------------------------------------------------------

def _actmax_item(worker: Worker, layer: str, u0: int, u1: int, in_shape: tuple[int, int, int],
                 mean_pixel: torch.Tensor, cfg: ActMaxConfig) -> tuple[Maps, Maps]:
    module = worker.model.probe_modules()[layer]
    return activation_maps(worker.model, module, range(u0, u1), in_shape, mean_pixel, cfg, worker.device, desc=None)


def actmax(executor: Executor, worker: Worker, store: StageStore, units: dict[str, int],
           in_shape: tuple[int, int, int], mean_pixel: torch.Tensor, cfg: ActMaxConfig) -> dict[str, tuple[Maps, Maps]]:
    """Per layer (HappyMaps, SadMaps) of its ``units[layer]`` units, as ``activation_maps`` of the whole
    layer computes them, one item per stack of ``chunk_units(cfg)`` units."""
    step = chunk_units(cfg)
    chunks = [(layer, u0, min(u0 + step, k)) for layer, k in units.items() for u0 in range(0, k, step)]
    items = [Item(f"{layer}.u{span_key(u0, u1)}", _actmax_item, (layer, u0, u1, in_shape, mean_pixel, cfg), size=u1 - u0)
             for layer, u0, u1 in chunks]
    results = run_items(executor, worker, items, store, "activation maximization", unit="unit")
    return {layer: (concat([h for (name, _, _), (h, _) in zip(chunks, results) if name == layer]),
                    concat([s for (name, _, _), (_, s) in zip(chunks, results) if name == layer]))
            for layer in units}
