"""The images stage's rows of ``unit_images``: visual evidence for every probed unit, PNG-encoded.

Per chunk of one layer's units (``chunk_rows``, a work item of ``compute.distributed.images``): top and
bottom examples with receptive-field crops, guided backprop and gradient maps of the top examples,
activation- and gradient-weighted class averages, Happy/SadMaps, and the first conv layer's filters,
each part timed. See compute/images/attribution.py and compute/images/actmax.py for the definitions,
docs/schema.md for the columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compute.images.actmax import Maps
from compute.images.attribution import Extremes, WeightedAverages, unit_attributions
from compute.nets.models import ProbedModel
from compute.nets.forward import run_to
from compute.nets.activations import unit_dim, units_first
from compute.nets.receptive_field import receptive_boxes, token_boxes
from compute.images.render import display_scale, draw_box, heatmap_pixels, image_pixels, to_png, weight_pixels
from warehouse.schema import IMAGE_KINDS, TABLES

COLUMNS = tuple(n for n in TABLES["unit_images"].arrow_schema.names if n != "run_id")  # the writer fills run_id
ROW_GROUP_ROWS = 512


class _Rows:
    """Column lists of ``unit_images``; every row has a PNG and may leave optional fields empty.

    An image several units show (the same example, the same example with the same box) is encoded
    once: ``shared`` keeps its PNG by a key the caller chooses.
    """

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self._pngs: dict[Hashable, tuple[bytes, int, int]] = {}

    def add(self, layer: str, unit: int, kind: str, rank: int, pixels: np.ndarray, **fields: Any) -> None:
        self.add_png(layer, unit, kind, rank, (to_png(pixels), pixels.shape[0], pixels.shape[1]), **fields)

    def shared(self, key: Hashable, pixels: Callable[[], np.ndarray]) -> tuple[bytes, int, int]:
        """(PNG, height, width) of the image ``key`` names, encoded the first time it is asked for."""
        found = self._pngs.get(key)
        if found is None:
            px = pixels()
            found = self._pngs[key] = (to_png(px), px.shape[0], px.shape[1])
        return found

    def add_png(self, layer: str, unit: int, kind: str, rank: int, png: tuple[bytes, int, int],
                **fields: Any) -> None:
        row = {"layer": layer, "unit": unit, "kind": kind, "rank": rank, "png": png[0], "height": png[1],
               "width": png[2], **fields}
        for c in COLUMNS:
            self.cols[c].append(row.get(c))


@dataclass
class Timer:
    """Wall time per stage, seconds."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first Conv2d in module order: the one that sees the input in the built-in models."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def run_shape(model: nn.Module, module: nn.Module, in_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """Activity shape of one example at ``module``, units first ((C, H, W) conv maps of either layout,
    (C, T) tokens, (U,) linear)."""
    with torch.no_grad():
        device = next(model.parameters()).device
        out = run_to(model, module, torch.zeros(1, *in_shape, device=device))[1]
        return tuple(units_first(out, unit_dim(module)).shape[1:])


@dataclass
class Examples:
    """The examples some units show (sorted dataset indices ``ids``): their images, labels and the
    model's predictions, fetched once for a chunk of units."""

    ids: np.ndarray
    images: torch.Tensor  # (M, C, H, W) uint8
    labels: np.ndarray
    preds: np.ndarray

    def rows(self, n: np.ndarray) -> np.ndarray:
        """Positions of dataset indices ``n`` in this selection."""
        return np.searchsorted(self.ids, n)


@dataclass
class UnitEvidence:
    """What a chunk of one layer's units shows, computed by the stage's earlier rounds (each array's
    first dimension: the chunk's units)."""

    extremes: Extremes
    averages: WeightedAverages | None  # None where the averaging data had no examples
    happy: Maps
    sad: Maps


def layer_boxes(model: ProbedModel, layer: str, in_shape: tuple[int, int, int]) -> torch.Tensor | None:
    """The input box of each position of ``layer`` ((H', W', 4) of a conv layer, (T, 1, 4) of tokens), or
    None where a unit has one position (a linear layer) or tokens cannot be placed."""
    shape = run_shape(model, model.probe_modules()[layer], in_shape)
    return (receptive_boxes(model, layer, in_shape) if len(shape) == 3
            else token_boxes(model, layer, in_shape) if len(shape) == 2 else None)


def _examples(rows: _Rows, layer: str, u0: int, ex: Extremes, examples: Examples, boxes: torch.Tensor | None,
              in_shape: tuple[int, int, int], timer: Timer) -> None:
    scale = display_scale(*in_shape[1:])  # of an example with a box only: the rest is stored at its own size
    with timer.stage("example images"):
        for kind, idx, val, pos in (("top", ex.top_idx, ex.top_val, ex.top_pos),
                                    ("bottom", ex.bottom_idx, ex.bottom_val, ex.bottom_pos)):
            at = examples.rows(idx)
            for (u, r), n in np.ndenumerate(idx):
                n, i = int(n), int(at[u, r])

                def img(i: int = i) -> np.ndarray:
                    return image_pixels(examples.images[i].numpy() / 255.0)

                meta = {"example": n, "value": float(val[u, r]), "label": int(examples.labels[i]),
                        "pred": int(examples.preds[i])}
                if boxes is None:
                    rows.add_png(layer, u0 + u, kind, r, rows.shared(("example", n), img), **meta)
                    continue
                w = boxes.shape[1]
                y, x = divmod(int(pos[u, r]), w)
                box = tuple(int(b) for b in boxes[y, x])
                meta |= {"position": [y, x], "box": list(box)}
                rows.add_png(layer, u0 + u, kind, r, rows.shared(("boxed", n, box),
                                                                 lambda: draw_box(img(), box, scale)), **meta)
                if kind == "top":
                    crop = rows.shared(("crop", n, box), lambda: img()[box[0]:box[2], box[1]:box[3]])
                    rows.add_png(layer, u0 + u, "top_crop", r, crop, **meta)


def _attributions(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], layer: str, u0: int,
                  ex: Extremes, examples: Examples, device: str, timer: Timer) -> None:
    n_units, k = ex.top_idx.shape
    with timer.stage("guided backprop + gradient"):
        picked = torch.as_tensor(examples.rows(ex.top_idx.reshape(-1)))
        x = examples.images[picked].to(device, torch.float32).div_(255.0)
        units = torch.arange(u0, u0 + n_units, device=device).repeat_interleave(k)
        gbp, grad = unit_attributions(model, probes[layer], x, units,
                                      torch.as_tensor(ex.top_pos.reshape(-1), device=device))
    with timer.stage("attribution images"):
        for kind, maps in (("gbp", gbp), ("grad", grad)):
            for i, m in enumerate(maps):
                u, r = divmod(i, k)
                rows.add(layer, u0 + u, kind, r, heatmap_pixels(m), example=int(ex.top_idx[u, r]),
                         value=float(ex.top_val[u, r]))


def _averages(rows: _Rows, layer: str, u0: int, a: WeightedAverages, timer: Timer) -> None:
    with timer.stage("average images"):
        for kind, img, weight in (("act_avg", a.act, a.act_weight), ("grad_avg", a.grad, a.grad_weight)):
            for (u, c), w in np.ndenumerate(weight):
                rows.add(layer, u0 + u, kind, 0, image_pixels(img[u, c]), **{"class": c, "value": float(w)})


def _actmax(rows: _Rows, layer: str, u0: int, happy: Maps, sad: Maps, timer: Timer) -> None:
    with timer.stage("actmax images"):
        for kind, maps in (("happy", happy), ("sad", sad)):
            for (u, r), v in np.ndenumerate(maps.values):
                rows.add(layer, u0 + u, kind, r, image_pixels(maps.images[u, r]), value=float(v),
                         consistency=float(maps.consistency[u]))


def _weights(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], layer: str, u0: int, u1: int,
             in_shape: tuple[int, int, int], timer: Timer) -> None:
    """The model's first conv filters, as images of the first probed layer's units when that layer
    is a conv layer with one unit per filter (conv1 of LeNet-5 and of the CIFAR net)."""
    conv, first = first_conv(model), next(iter(probes))
    if layer != first or conv is None:
        return
    shape = run_shape(model, probes[first], in_shape)
    if len(shape) != 3 or shape[0] != conv.out_channels:
        return
    with timer.stage("weights"):
        w = conv.weight.detach().cpu().numpy()
        for u in range(u0, u1):
            rows.add(first, u, "weights", 0, weight_pixels(w[u]))


def chunk_rows(model: ProbedModel, layer: str, u0: int, evidence: UnitEvidence, examples: Examples,
               boxes: torch.Tensor | None, in_shape: tuple[int, int, int], device: str = "cpu"
               ) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Rows of ``unit_images`` (PNGs encoded) of units u0.. of ``layer`` (as many as ``evidence`` holds),
    unsorted, and the seconds each part took. ``examples``: at least the chunk's top and bottom examples;
    ``boxes``: the layer's ``layer_boxes``."""
    model.eval()
    probes = model.probe_modules()
    rows, timer = _Rows(), Timer()
    ex = evidence.extremes
    _examples(rows, layer, u0, ex, examples, boxes, in_shape, timer)
    _attributions(rows, model, probes, layer, u0, ex, examples, device, timer)
    if evidence.averages is not None:
        _averages(rows, layer, u0, evidence.averages, timer)
    _actmax(rows, layer, u0, evidence.happy, evidence.sad, timer)
    _weights(rows, model, probes, layer, u0, u0 + len(ex.top_idx), in_shape, timer)
    return rows.cols, timer.seconds


def sort_rows(cols: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Rows ordered by (layer, unit, kind, rank, class) so row groups hold few units each."""
    kind = {k: i for i, k in enumerate(IMAGE_KINDS)}
    order = sorted(range(len(cols["unit"])), key=lambda i: (cols["layer"][i], cols["unit"][i], kind[cols["kind"][i]],
                                                             cols["rank"][i], cols["class"][i] or 0))
    return {name: [values[i] for i in order] for name, values in cols.items()}
