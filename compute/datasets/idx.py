"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np

from compute.errors import DataError

# torchvision lays files out under <root>/<Dataset>/raw; people also keep them flat.
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")
_SPLIT_WORDS = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file into an array, checking the header against the payload size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}. Re-download or replace the file.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:  # no shape to read, or a header cut short: nothing to reshape
        raise DataError(f"{path} is truncated or corrupt: its header names {ndim} dimension(s) "
                        f"({header} header bytes), the file holds {len(raw)} bytes. Re-download or replace the file.")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python integers: four 32-bit dimensions cannot overflow
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims} ({expected} bytes), "
            f"file holds {len(raw) - header} bytes of data."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, split: str, kind: str) -> Path | None:
    ndim = "3" if kind == "images" else "1"
    pattern = re.compile(rf"^({'|'.join(_SPLIT_WORDS[split])})[-_.].*{kind}.*idx{ndim}.*?(\.gz)?$")
    for sub in _SUBDIRS:
        d = directory / sub
        if not d.is_dir():
            continue
        hits = sorted(p for p in d.iterdir() if pattern.match(p.name))
        # Prefer the uncompressed file when both exist (torchvision keeps both).
        hits.sort(key=lambda p: p.suffix == ".gz")
        if hits:
            return hits[0]
    return None


def find_idx_splits(directory: Path) -> dict[str, tuple[Path, Path]]:
    """Map split name ('train'/'test') to (images, labels) paths found in ``directory``."""
    found = {}
    for split in _SPLIT_WORDS:
        images, labels = _find(directory, split, "images"), _find(directory, split, "labels")
        if images and labels:
            found[split] = (images, labels)
    return found


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 1, H, W) and labels as int64 (N,), checked to match."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path} holds shape {images.shape}; expected (N, H, W) images.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path} holds {labels.shape} labels for {len(images)} images in {images_path}."
        )
    return images[:, None].copy(), labels.astype(np.int64)
