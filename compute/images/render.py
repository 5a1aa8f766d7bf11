"""Turning arrays into PNG bytes: input images, signed heat maps, weights, receptive-field boxes.

Only numpy and Pillow, so anything that reads the warehouse could use it without torch. Images are
stored at their own size (a 28x28 digit is 28x28 pixels); the dashboard upscales them by whole pixels
when it shows them (``dashboard.image_panels.upscale``), so stored bytes and encoding time stay small.
Only an example with a receptive-field box is drawn larger, so the box's outline does not cover pixels.
PNG is lossless at any zlib level; level 1 (``PNG_LEVEL``) encodes several times faster than
Pillow's default for a few per cent more bytes on images this small.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

# Diverging map for signed values: blue (negative) - white (0) - red (positive).
_NEG = np.array([33, 102, 172], dtype=np.float64)
_MID = np.array([247, 247, 247], dtype=np.float64)
_POS = np.array([178, 24, 43], dtype=np.float64)
BOX_COLOR = (255, 48, 48)
PNG_LEVEL = 1  # zlib level: lossless either way


def to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 pixels (H, W) or (H, W, 3)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def image_pixels(chw: np.ndarray) -> np.ndarray:
    """uint8 pixels of an input image (C, H, W) with values in [0, 1]: grey for C=1, RGB for C=3."""
    x = np.clip(np.asarray(chw, dtype=np.float64), 0.0, 1.0)
    x = np.rint(x * 255).astype(np.uint8)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)


def diverging_pixels(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """RGB pixels of a signed 2-D map, white at 0, saturated at +-``limit`` (default: max |value|)."""
    v = np.asarray(values, dtype=np.float64)
    lim = float(np.abs(v).max()) if limit is None else float(limit)
    t = np.clip(v / lim, -1.0, 1.0) if lim > 0 else np.zeros_like(v)
    t = t[..., None]
    rgb = np.where(t >= 0, _MID + t * (_POS - _MID), _MID - t * (_NEG - _MID))
    return np.rint(rgb).astype(np.uint8)


def heatmap_pixels(chw: np.ndarray) -> np.ndarray:
    """A per-pixel attribution (C, H, W) shown as one signed map: channels summed, diverging colours."""
    return diverging_pixels(np.asarray(chw, dtype=np.float64).sum(0))


def weight_pixels(chw: np.ndarray) -> np.ndarray:
    """A conv filter (C, k, k): diverging colours for one input channel, else RGB around grey 0.5."""
    w = np.asarray(chw, dtype=np.float64)
    if w.shape[0] == 1:
        return diverging_pixels(w[0])
    lim = float(np.abs(w).max()) or 1.0
    return image_pixels(0.5 + w / (2 * lim))


def draw_box(pixels: np.ndarray, box: tuple[int, int, int, int], scale: int) -> np.ndarray:
    """RGB pixels upscaled by ``scale`` with the half-open box (y0, x0, y1, x1) outlined in red."""
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(rgb)
    y0, x0, y1, x1 = box
    ImageDraw.Draw(img).rectangle((x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1),
                                  outline=BOX_COLOR, width=max(1, scale // 2))
    return np.asarray(img)


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of PNG bytes (for tests and exports)."""
    return np.asarray(Image.open(io.BytesIO(data)))


def display_scale(height: int, width: int, target: int = 112) -> int:
    """Whole-pixel upscale factor that brings an image's longer side to about ``target`` pixels."""
    return max(1, round(target / max(height, width)))
