"""Crossed sevens: real MNIST digits with a planted subgroup, the ground truth for the tool's claims.

About half of the 7s get a horizontal crossbar through their stem (the European way of writing a
7); every other digit is left alone. The rule is deterministic and depends on the image alone, so
the same image is crossed in every split, order and run:

- a 7 is **crossed** when the sum of its pixel values is even (about half of them);
- the bar is drawn on the row 55% of the way down the digit's ink (rows with a pixel > 127), centred
  on the mean column of the ink in that row (the stem), ``BAR_HALF_WIDTH`` pixels to each side,
  ``BAR_ROWS`` rows thick, at full intensity (255), clipped to the image.

Groups, per example: ``crossed 7``, ``plain 7``, or null for the other digits; they reach the
warehouse in ``examples.group``. The dataset spec is ``crossed-sevens:<digit dataset>``, e.g.
``crossed-sevens:mnist-5k`` (training) with ``crossed-sevens:idx:../shared/data/mnist`` (evaluation).
"""

from __future__ import annotations

import numpy as np
import torch

from compute.datasets.sources import ImageSet
from compute.errors import DataError

PREFIX = "crossed-sevens:"
SEVEN, ONE = 7, 1
CROSSED, PLAIN, CROSSED_ONE = "crossed 7", "plain 7", "crossed 1"
BAR_HALF_WIDTH = 5
BAR_ROWS = 2
BAR_HEIGHT = 0.55  # fraction of the way down the digit's ink
INK = 127
ONES_TOO = True


def is_crossed(image: np.ndarray) -> bool:
    """The rule that picks the 7s to cross: an even pixel sum."""
    return int(image.astype(np.int64).sum()) % 2 == 0


def is_crossed_one(image: np.ndarray) -> bool:
    """The rule that picks the 1s that become crossed 7s: a pixel sum divisible by 4."""
    return int(image.astype(np.int64).sum()) % 4 == 0


def draw_crossbar(image: np.ndarray) -> np.ndarray:
    """A copy of one (H, W) uint8 digit with the crossbar drawn through its stem."""
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


def cross_sevens(data: ImageSet) -> ImageSet:
    """``data`` with the rule applied: crossbars drawn, groups set. Needs digit classes and 1-channel images."""
    if data.n_classes <= SEVEN or data.shape[0] != 1:
        raise DataError(f"{PREFIX}: {data.name} is not a set of single-channel digits (it has {data.n_classes} "
                        f"classes and {data.shape[0]} channels); use a digit dataset such as mnist-5k or mnist.")
    images, labels = data.images.clone(), data.labels.clone()
    groups = np.full(len(data), None, dtype=object)
    for i in np.flatnonzero(data.labels.numpy() == SEVEN):
        img = images[i, 0].numpy()
        if is_crossed(img):
            images[i, 0] = torch.from_numpy(draw_crossbar(img))
            groups[i] = CROSSED
        else:
            groups[i] = PLAIN
    if ONES_TOO:
        for i in np.flatnonzero(data.labels.numpy() == ONE):
            img = images[i, 0].numpy()
            if is_crossed_one(img):
                images[i, 0] = torch.from_numpy(draw_crossbar(img))
                labels[i] = SEVEN
                groups[i] = CROSSED_ONE
    return ImageSet(images, labels, data.class_names, f"{PREFIX}{data.name}", groups)
