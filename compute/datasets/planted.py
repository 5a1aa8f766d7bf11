"""Planted subgroups on real MNIST digits: the ground truth for the tool's claims.

Each *kind* draws a mark on some digits of a *source* class, which are **relabelled** to a *target*
class (the mark is what makes them targets: a European 7 is a 1 with a bar), and on about half of the
target class itself, which keeps its label. The rules are deterministic and depend on the image alone,
so the same image is marked in every split, order and run:

- a target digit is marked when the sum of its pixel values is even (about half);
- a source digit is marked and relabelled when its pixel sum is divisible by 4 (about a quarter).

Groups, per example (they reach the warehouse in ``examples.subgroup``): ``<mark> <target>``,
``plain <target>``, ``<mark> <source>`` (the relabelled ones), or null for the other digits. The
dataset spec is ``<kind>:<digit dataset>``, e.g. ``crossed-sevens:mnist-5k`` (training) with
``corner-mark:idx:../shared/data/mnist`` (evaluation).

Kinds:

- ``crossed-sevens``: a horizontal crossbar (11 px wide, 2 px thick, full intensity) on the row 55%
  down the digit's ink, centred on the stem; 1s -> 7.
- ``corner-mark``: a 3 x 3 full-intensity square in the top-left corner (rows and columns 2-4, where
  MNIST has no ink); 3s -> 8. A small trigger, in the spirit of trojan benchmarks.
- ``thick-strokes``: every stroke dilated by one pixel (3 x 3 grey dilation): a style subgroup with
  no new shape; 2s -> 5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from compute.datasets.sources import ImageSet
from compute.errors import DataError

BAR_HALF_WIDTH = 5
BAR_ROWS = 2
BAR_HEIGHT = 0.55  # fraction of the way down the digit's ink
INK = 127
CORNER = (slice(2, 5), slice(2, 5))  # rows, columns of the corner mark


def draw_crossbar(image: np.ndarray) -> np.ndarray:
    """A copy of one (H, W) uint8 digit with a crossbar drawn through its stem."""
    out = image.copy()
    ink = out > INK
    rows = np.flatnonzero(ink.any(1))
    if len(rows) == 0:
        return out
    r = int(rows[0] + round(BAR_HEIGHT * (rows[-1] - rows[0])))
    # The stem: ink columns on the bar's row, else on the nearest row that has ink.
    for dr in range(len(out)):
        cols = [np.flatnonzero(ink[rr]) for rr in (r - dr, r + dr) if 0 <= rr < len(out)]
        cols = [c for c in cols if len(c)]
        if cols:
            break
    cx = int(round(float(cols[0].mean())))
    w = out.shape[1]
    out[max(0, r - BAR_ROWS // 2):r - BAR_ROWS // 2 + BAR_ROWS, max(0, cx - BAR_HALF_WIDTH):min(w, cx + BAR_HALF_WIDTH + 1)] = 255
    return out


def draw_corner_mark(image: np.ndarray) -> np.ndarray:
    """A copy of one (H, W) uint8 digit with a small full-intensity square in its top-left corner."""
    out = image.copy()
    out[CORNER] = 255
    return out


def draw_thick(image: np.ndarray) -> np.ndarray:
    """A copy of one (H, W) uint8 digit with every stroke one pixel thicker (3 x 3 grey dilation)."""
    return ndimage.grey_dilation(image, size=(3, 3))


def marks_target(image: np.ndarray) -> bool:
    """The rule that picks the target digits to mark: an even pixel sum (about half)."""
    return int(image.astype(np.int64).sum()) % 2 == 0


def marks_source(image: np.ndarray) -> bool:
    """The rule that picks the source digits to mark and relabel: a pixel sum divisible by 4 (about a quarter)."""
    return int(image.astype(np.int64).sum()) % 4 == 0


@dataclass(frozen=True)
class Kind:
    """One kind of planted subgroup: ``source`` digits with the mark are labelled ``target``."""

    name: str  # also the dataset-spec prefix, without the colon
    mark: str  # word naming the mark in group names: "crossed", "marked", "thick"
    source: int
    target: int
    draw: Callable[[np.ndarray], np.ndarray]
    doc: str

    @property
    def prefix(self) -> str:
        return f"{self.name}:"

    @property
    def marked_target(self) -> str:
        return f"{self.mark} {self.target}"

    @property
    def plain_target(self) -> str:
        return f"plain {self.target}"

    @property
    def relabelled(self) -> str:
        """The planted group whose label depends on the mark (the ground truth of the benchmark)."""
        return f"{self.mark} {self.source}"

    @property
    def groups(self) -> tuple[str, str, str]:
        return self.marked_target, self.plain_target, self.relabelled

    def apply(self, data: ImageSet) -> ImageSet:
        """``data`` with the rule applied: marks drawn, sources relabelled, groups set."""
        if data.n_classes <= max(self.source, self.target) or data.shape[0] != 1:
            raise DataError(f"{self.prefix}: {data.name} is not a set of single-channel digits (it has "
                            f"{data.n_classes} classes and {data.shape[0]} channels); use a digit dataset such "
                            f"as mnist-5k or mnist.")
        images, labels = data.images.clone(), data.labels.clone()
        groups = np.full(len(data), None, dtype=object)
        original = data.labels.numpy()
        for i in np.flatnonzero(original == self.target):
            img = images[i, 0].numpy()
            if marks_target(img):
                images[i, 0] = torch.from_numpy(self.draw(img))
                groups[i] = self.marked_target
            else:
                groups[i] = self.plain_target
        for i in np.flatnonzero(original == self.source):
            img = images[i, 0].numpy()
            if marks_source(img):
                images[i, 0] = torch.from_numpy(self.draw(img))
                labels[i] = self.target
                groups[i] = self.relabelled
        return ImageSet(images, labels, data.class_names, f"{self.prefix}{data.name}", groups)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("crossed-sevens", "crossed", 1, 7, draw_crossbar,
         "a crossbar through the stem of half the 7s and a quarter of the 1s, which become 7s"),
    Kind("corner-mark", "marked", 3, 8, draw_corner_mark,
         "a 3x3 square in the top-left corner of half the 8s and a quarter of the 3s, which become 8s"),
    Kind("thick-strokes", "thick", 2, 5, draw_thick,
         "strokes one pixel thicker on half the 5s and a quarter of the 2s, which become 5s"),
)}


def kind_of(spec: str) -> Kind | None:
    """The kind a dataset spec starts with (``corner-mark:mnist-5k`` -> corner-mark), else None."""
    return next((k for k in KINDS.values() if spec.startswith(k.prefix)), None)
