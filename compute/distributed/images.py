"""The images stage as work items, in four rounds; the driver only merges the results and sorts the rows.

1. top and bottom examples: one item per shard of the evaluation set, returning each unit's k best and
   worst candidates of the shard (dataset indices), the shard's predictions and its pixel sums; the
   candidates merge by a stable sort in shard order (``merge_extremes``), the pixel sums add in order;
2. weighted class averages: one item per part of ``AVERAGE_SHARDS`` shards of the training set, float64
   sums added in part order. Parts, not shards, because each part's sums are as large as the result
   ((classes, units, pixels): 28 MB for LeNet-5 on 28x28 digits), and every item's result is saved;
   within a part every batch adds into the same totals, the shards fetched one at a time;
3. activation maximization: ``compute.distributed.work.actmax`` (layer x stack of units);
4. pictures: one item per layer x chunk of ``PICTURE_CHUNK`` units, given the chunk's share of rounds
   1-3; it fetches only the blocks holding its units' examples, computes their attributions (guided
   backprop, gradient) and encodes every PNG of its units (``compute.images.table.chunk_rows``). A
   layer's receptive-field boxes are computed once per worker, not per item (``Worker.cached``).

As in ``compute.distributed.work``, the items depend only on the model, the data and these constants,
so every executor with any number of workers gives the same table, byte for byte.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compute.datasets.sources import ImageSet
from compute.distributed import work
from compute.distributed.executor import Executor, InProcessExecutor, Item, Worker, run_items
from compute.images.actmax import Maps
from compute.images.attribution import (AverageSums, Extremes, WeightedAverages, average_sums, extreme_examples,
                                        finish_averages, merge_extremes)
from compute.images.config import ImageConfig
from compute.images.table import Examples, UnitEvidence, chunk_rows, layer_boxes, run_shape, sort_rows
from compute.nets.models import ProbedModel
from compute.run.stage_store import ItemStore, StageStore

AVERAGE_SHARDS = 8  # training shards per averages item
PICTURE_CHUNK = 128  # units per pictures item
PIXEL_CHUNK = 1000  # examples per float32 pixel sum (the mean pixel that activation maximization starts from)

Seconds = dict[str, float]


def _extremes_item(worker: Worker, data: str, start: int, stop: int, k: int
                   ) -> tuple[dict[str, Extremes], np.ndarray, list[torch.Tensor], Seconds]:
    began = time.perf_counter()
    shard, model = worker.shard(data, start, stop), worker.model
    extremes, preds = extreme_examples(model, model.probe_modules(), shard, k, device=worker.device, start=start)
    pixels = [shard.floats(a, a + PIXEL_CHUNK).sum((0, 2, 3)) for a in range(0, len(shard), PIXEL_CHUNK)]
    return extremes, preds, pixels, {"top/bottom examples": time.perf_counter() - began}


def _averages_item(worker: Worker, data: str, start: int, stop: int) -> tuple[AverageSums, Seconds]:
    """The averages' sums of examples start..stop-1 (one shard's images in memory at once)."""
    began = time.perf_counter()
    model = worker.model
    shards = (worker.shard(data, a, b) for a, b in work.shard_spans(start, stop))
    sums = average_sums(model, model.probe_modules(), shards, device=worker.device)
    return sums, {"weighted averages": time.perf_counter() - began}


def _pictures_item(worker: Worker, data: str, layer: str, u0: int, evidence: UnitEvidence, ids: np.ndarray,
                   preds: np.ndarray, in_shape: tuple[int, int, int]) -> tuple[dict[str, list[Any]], Seconds]:
    began = time.perf_counter()
    boxes = worker.cached(("boxes", layer), lambda: layer_boxes(worker.model, layer, in_shape))
    boxed = time.perf_counter() - began
    found = worker.examples(data, ids)
    examples = Examples(ids, found.images, found.labels.numpy(), preds)
    rows, seconds = chunk_rows(worker.model, layer, u0, evidence, examples, boxes, in_shape, worker.device)
    return rows, {"receptive fields": boxed, **seconds}


def _select(maps: Maps, u0: int, u1: int) -> Maps:
    return Maps(maps.images[u0:u1], maps.values[u0:u1], maps.consistency[u0:u1], maps.steps[u0:u1])


def unit_images(executor: Executor, worker: Worker, store: StageStore, actmax_store: StageStore,
                cfg: ImageConfig) -> tuple[dict[str, list[Any]], Seconds]:
    """Rows of ``unit_images`` for every probed unit of ``worker.model``, sorted, and the seconds each part
    took (summed over items). Examples and attributions use ``worker.data["eval"]``, the weighted averages
    ``worker.data["train"]``; ``store`` keeps the finished items, ``actmax_store`` those of round 3."""
    cfg.check()
    model: ProbedModel = worker.model
    model.eval()
    eval_set: ImageSet = worker.data["eval"]
    n, in_shape = len(eval_set), eval_set.shape
    seconds: defaultdict[str, float] = defaultdict(float)

    def timed(results: list[Any]) -> list[Any]:
        for r in results:
            for name, t in r[-1].items():
                seconds[name] += t
        return results

    found = timed(run_items(executor, worker, [Item(f"extremes.x{work.span_key(a, b)}", _extremes_item,
                                                    ("eval", a, b, cfg.top_k)) for a, b in work.shards(n)],
                            store, "top examples"))
    extremes = {layer: merge_extremes([f[0][layer] for f in found], min(cfg.top_k, n)) for layer in found[0][0]}
    preds = np.concatenate([f[1] for f in found])
    mean_pixel = sum(p for f in found for p in f[2]) / (n * in_shape[1] * in_shape[2])

    train = worker.data["train"]
    spans = work.shards(len(train))
    parts = [(spans[i][0], spans[min(i + AVERAGE_SHARDS, len(spans)) - 1][1]) for i in range(0, len(spans), AVERAGE_SHARDS)]
    sums = timed(run_items(executor, worker, [Item(f"averages.x{work.span_key(a, b)}", _averages_item, ("train", a, b))
                                              for a, b in parts], store, "averages"))
    averages: dict[str, WeightedAverages] = (finish_averages(work.add_sums([s for s, _ in sums]), train.shape)
                                             if sums else {})

    began = time.perf_counter()
    units = {layer: int(run_shape(model, module, in_shape)[0]) for layer, module in model.probe_modules().items()}
    maps = work.actmax(executor, worker, actmax_store, units, in_shape, mean_pixel, cfg.actmax)
    seconds["activation maximization"] += time.perf_counter() - began

    items = []
    for layer, k in units.items():
        for u0 in range(0, k, PICTURE_CHUNK):
            u1 = min(u0 + PICTURE_CHUNK, k)
            ex = extremes[layer].select(u0, u1)
            ids = np.unique(np.concatenate([ex.top_idx.ravel(), ex.bottom_idx.ravel()]))
            avg = averages[layer].select(u0, u1) if layer in averages else None
            evidence = UnitEvidence(ex, avg, _select(maps[layer][0], u0, u1), _select(maps[layer][1], u0, u1))
            items.append(Item(f"pictures.{layer}.u{work.span_key(u0, u1)}", _pictures_item,
                              ("eval", layer, u0, evidence, ids, preds[ids], in_shape), size=u1 - u0))
    pictures = timed(run_items(executor, worker, items, store, "pictures", unit="unit"))
    began = time.perf_counter()
    table = sort_rows({c: [v for cols, _ in pictures for v in cols[c]] for c in pictures[0][0]})
    seconds["sort"] += time.perf_counter() - began
    return table, dict(seconds)


def unit_images_in_process(model: ProbedModel, eval_set: ImageSet, train_set: ImageSet,
                           cfg: ImageConfig = ImageConfig(), device: str = "cpu") -> tuple[dict[str, list[Any]], Seconds]:
    """``unit_images`` of a model outside a run: the same items in this process, kept in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(model, {"eval": eval_set, "train": train_set}, device)
        return unit_images(InProcessExecutor(), worker, ItemStore(Path(tmp) / "images"),
                           ItemStore(Path(tmp) / "actmax"), cfg)
