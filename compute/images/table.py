"""The images stage of a run: visual evidence for every probed unit, as rows of ``unit_images``.

Stages (timed, each with a progress bar): top/bottom examples with receptive-field crops, guided
backprop and gradient maps of the top examples, activation- and gradient-weighted class averages,
Happy/SadMaps, and the first conv layer's filters. See compute/images/attribution.py and compute/images/actmax.py
for the definitions, docs/schema.md for the columns.
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

from compute.images.actmax import Maps, activation_maps
from compute.datasets.sources import ImageSet
from compute.images.attribution import Extremes, extreme_examples, unit_attributions, weighted_averages
from compute.images.config import ActMaxConfig, ImageConfig
from compute.nets.models import ProbedModel
from compute.nets.forward import run_to
from compute.progress import bar
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

    def sorted(self) -> dict[str, list[Any]]:
        """Rows ordered by (layer, unit, kind, rank, class) so row groups hold few units each."""
        kind = {k: i for i, k in enumerate(IMAGE_KINDS)}
        c = self.cols
        order = sorted(range(len(c["unit"])), key=lambda i: (c["layer"][i], c["unit"][i], kind[c["kind"][i]],
                                                             c["rank"][i], c["class"][i] or 0))
        return {name: [values[i] for i in order] for name, values in c.items()}


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


def _examples(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], data: ImageSet, k: int,
              device: str, timer: Timer) -> dict[str, Extremes]:
    with timer.stage("top/bottom examples"):
        extremes, preds = extreme_examples(model, probes, data, k, device=device)
    labels = data.labels.numpy()
    scale = display_scale(*data.shape[1:])  # of an example with a box only: the rest is stored at its own size
    for layer, ex in bar(extremes.items(), "examples png", unit="layer"):
        with timer.stage("receptive fields"):
            shape = run_shape(model, probes[layer], data.shape)
            boxes = (receptive_boxes(model, layer, data.shape) if len(shape) == 3
                     else token_boxes(model, layer, data.shape) if len(shape) == 2 else None)
        with timer.stage("example images"):
            for kind, idx, val, pos in (("top", ex.top_idx, ex.top_val, ex.top_pos),
                                        ("bottom", ex.bottom_idx, ex.bottom_val, ex.bottom_pos)):
                for (u, r), n in np.ndenumerate(idx):
                    n = int(n)

                    def img(n: int = n) -> np.ndarray:
                        return image_pixels(data.images[n].numpy() / 255.0)

                    meta = {"example": n, "value": float(val[u, r]), "label": int(labels[n]), "pred": int(preds[n])}
                    if boxes is None:
                        rows.add_png(layer, u, kind, r, rows.shared(("example", n), img), **meta)
                        continue
                    w = boxes.shape[1]
                    y, x = divmod(int(pos[u, r]), w)
                    box = tuple(int(b) for b in boxes[y, x])
                    meta |= {"position": [y, x], "box": list(box)}
                    rows.add_png(layer, u, kind, r, rows.shared(("boxed", n, box),
                                                                lambda: draw_box(img(), box, scale)), **meta)
                    if kind == "top":
                        crop = rows.shared(("crop", n, box), lambda: img()[box[0]:box[2], box[1]:box[3]])
                        rows.add_png(layer, u, "top_crop", r, crop, **meta)
    return extremes


def _attributions(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], data: ImageSet,
                  extremes: dict[str, Extremes], device: str, timer: Timer) -> None:
    for layer, ex in bar(extremes.items(), "attributions", unit="layer"):
        n_units, k = ex.top_idx.shape
        with timer.stage("guided backprop + gradient"):
            x = data.images[torch.as_tensor(ex.top_idx.reshape(-1))].to(device, torch.float32).div_(255.0)
            units = torch.arange(n_units, device=device).repeat_interleave(k)
            gbp, grad = unit_attributions(model, probes[layer], x, units,
                                          torch.as_tensor(ex.top_pos.reshape(-1), device=device))
        with timer.stage("attribution images"):
            for kind, maps in (("gbp", gbp), ("grad", grad)):
                for i, m in enumerate(maps):
                    u, r = divmod(i, k)
                    rows.add(layer, u, kind, r, heatmap_pixels(m), example=int(ex.top_idx[u, r]),
                             value=float(ex.top_val[u, r]))


def _averages(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], data: ImageSet, device: str,
              timer: Timer) -> None:
    with timer.stage("weighted averages"):
        avgs = weighted_averages(model, probes, data, device=device)
    with timer.stage("average images"):
        for layer, a in avgs.items():
            for kind, img, weight in (("act_avg", a.act, a.act_weight), ("grad_avg", a.grad, a.grad_weight)):
                for (u, c), w in np.ndenumerate(weight):
                    rows.add(layer, u, kind, 0, image_pixels(img[u, c]), **{"class": c, "value": float(w)})


#: Activation maximization of every probed layer: (units per layer, mean pixel) -> layer -> (HappyMaps,
#: SadMaps). The pipeline's runs it as work items (``compute.distributed.work.actmax``).
ActMax = Callable[[dict[str, int], torch.Tensor], dict[str, tuple[Maps, Maps]]]


def in_process_actmax(model: ProbedModel, probes: dict[str, nn.Module], in_shape: tuple[int, int, int],
                      cfg: ActMaxConfig, device: str) -> ActMax:
    """``ActMax`` in this process, one layer after another."""
    def maps(units: dict[str, int], mean_pixel: torch.Tensor) -> dict[str, tuple[Maps, Maps]]:
        return {layer: activation_maps(model, probes[layer], range(n), in_shape, mean_pixel, cfg, device,
                                       f"actmax {layer}") for layer, n in units.items()}
    return maps


def _actmax(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], data: ImageSet, actmax: ActMax,
            timer: Timer) -> None:
    pixel_sums = sum(data.floats(s, s + 1000).sum((0, 2, 3)) for s in range(0, len(data), 1000))
    mean_pixel = pixel_sums / (len(data) * data.shape[1] * data.shape[2])
    with timer.stage("activation maximization"):
        units = {layer: int(run_shape(model, module, data.shape)[0]) for layer, module in probes.items()}
        found = actmax(units, mean_pixel)
    with timer.stage("actmax images"):
        for layer, (happy, sad) in found.items():
            for kind, maps in (("happy", happy), ("sad", sad)):
                for (u, r), v in np.ndenumerate(maps.values):
                    rows.add(layer, u, kind, r, image_pixels(maps.images[u, r]), value=float(v),
                             consistency=float(maps.consistency[u]))


def _weights(rows: _Rows, model: ProbedModel, probes: dict[str, nn.Module], in_shape: tuple[int, int, int],
             timer: Timer) -> None:
    """The model's first conv filters, as images of the first probed layer's units when that layer
    is a conv layer with one unit per filter (conv1 of LeNet-5 and of the CIFAR net)."""
    conv, first = first_conv(model), next(iter(probes))
    shape = run_shape(model, probes[first], in_shape)
    if conv is None or len(shape) != 3 or shape[0] != conv.out_channels:
        return
    with timer.stage("weights"):
        w = conv.weight.detach().cpu().numpy()
        for u in range(w.shape[0]):
            rows.add(first, u, "weights", 0, weight_pixels(w[u]))


def unit_images(model: ProbedModel, probes: dict[str, nn.Module], eval_set: ImageSet,
                train_set: ImageSet, cfg: ImageConfig = ImageConfig(),
                device: str = "cpu", actmax: ActMax | None = None) -> tuple[dict[str, list[Any]], dict[str, float]]:
    """Rows of ``unit_images`` for every unit of ``probes``, and the seconds each stage took.

    Extreme examples and attributions use ``eval_set``; the weighted averages ``train_set``.
    ``actmax`` computes the activation maximization (default: ``in_process_actmax``).
    """
    cfg.check()
    model.eval()
    rows, timer = _Rows(), Timer()
    extremes = _examples(rows, model, probes, eval_set, cfg.top_k, device, timer)
    _attributions(rows, model, probes, eval_set, extremes, device, timer)
    _averages(rows, model, probes, train_set, device, timer)
    _actmax(rows, model, probes, eval_set,
            actmax or in_process_actmax(model, probes, eval_set.shape, cfg.actmax, device), timer)
    _weights(rows, model, probes, eval_set.shape, timer)
    with timer.stage("sort"):
        table = rows.sorted()
    return table, timer.seconds
