"""Finished stages of a run, kept in its staging folder so an interrupted run can resume.

Each stage's result is written with ``torch.save`` to ``stages/<name>.pt`` through a temporary
file and an atomic rename (``warehouse.publish.write_file``), so a stage file is either complete or
absent. Resuming loads every finished stage and computes only the rest; with the same seed the
result equals an uninterrupted run's.

Stage files are read with ``torch.load(weights_only=True)`` like any other file: a planted or
damaged ``.pt`` in the staging folder cannot run code. So values are stored as tensors, plain
Python values, dicts, lists and tuples only: NumPy arrays become tensors and the few result
dataclasses become tagged dicts (``encode``), and ``decode`` rebuilds them from a fixed list
(``DATACLASSES``), never from a name found in the file.

A stage's work items (``ItemStore``) are kept the same way but not synced, and carry a checksum so
that one torn by a crash of the machine is recomputed instead of trusted.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from compute.ablation.effects import UnitExamples
from compute.ablation.engine import MaskSums
from compute.ablation.outcome import LayerAblation, Outcome, PairedSums
from compute.errors import DataError
from compute.images.actmax import Maps
from compute.images.attribution import Extremes
from compute.measure.stats import ClassSums, EvalStats, EvalSums, LayerStats
from compute.measure.train import TrainResult
from compute.progress import announce, stage_started
from warehouse.faults import crash_point
from warehouse.publish import write_file

T = TypeVar("T")
#: The dataclasses a stage may return; decoding builds only these.
DATACLASSES = {cls.__name__: cls for cls in (EvalStats, LayerStats, EvalSums, ClassSums, TrainResult, Outcome,
                                             LayerAblation, PairedSums, UnitExamples, MaskSums, Maps, Extremes)}
_TAG = "__atlas__"
_PLAIN = frozenset((str, bytes, int, float, bool, type(None)))  # exact types: np.float64 is a float but not plain


def _plain_list(value: Any) -> bool:
    """A list of plain values (a column of ``unit_images``: thousands of PNGs, numbers): passed through
    whole, not value by value."""
    return type(value) is list and all(type(v) in _PLAIN for v in value)


def encode(value: Any) -> Any:
    """``value`` as tensors, plain values, dicts, lists and tuples (what ``weights_only`` loading reads)."""
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)  # shared, not copied, where torch can (a writable array)
        return {_TAG: "ndarray", "data": torch.from_numpy(a if a.flags.writeable else a.copy())}
    if isinstance(value, np.generic):
        return {_TAG: "npscalar", "data": torch.from_numpy(np.asarray(value).reshape(1).copy())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if DATACLASSES.get(name) is not type(value):
            raise TypeError(f"stage values may not hold {type(value).__qualname__}; add it to DATACLASSES")
        return {_TAG: name, "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return value if _plain_list(value) else [encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    return value


def decode(value: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, dict):
        tag = value.get(_TAG)
        if tag == "ndarray":
            return value["data"].numpy()
        if tag == "npscalar":
            return value["data"].numpy()[0]
        if tag is not None:
            if tag not in DATACLASSES:
                raise ValueError(f"unknown stored type {tag!r}")
            return DATACLASSES[tag](**{k: decode(v) for k, v in value["fields"].items()})
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return value if _plain_list(value) else [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    return value


class StageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.pt"

    def save(self, name: str, value: object) -> None:
        write_file(self.path(name), self._serialized(value).getbuffer(), f"finished stage {name!r}")

    @staticmethod
    def _serialized(value: object) -> io.BytesIO:
        # In memory first: torch.save onto a file that fails mid-way (a full disk) raises its own
        # RuntimeError; a plain write raises the OSError that write_file explains.
        buffer = io.BytesIO()
        torch.save(encode(value), buffer)
        return buffer

    def load(self, name: str) -> object | None:
        """A finished stage's value, or None if it has not finished."""
        p = self.path(name)
        if not p.exists():
            return None
        return self._read(p, lambda: torch.load(p, map_location="cpu", weights_only=True))

    @staticmethod
    def _read(p: Path, load: Callable[[], Any]) -> Any:
        """``load()`` decoded, or one paragraph naming the file when it holds something else."""
        try:
            if not p.is_file():
                raise ValueError("not a regular file")
            return decode(load())
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"the finished stage {p} cannot be loaded safely ({first}); it holds something other "
                            f"than this program's stage data. Delete it to recompute that stage, then "
                            f"--resume again.") from None

    def run(self, name: str, compute: Callable[[], T]) -> T:
        """The stage's saved result, or compute, save and return it."""
        stage_started(name)
        value = self.load(name)
        if value is None:
            value = compute()
            self.save(name, value)
        crash_point(f"after-{name}")
        return value  # type: ignore[return-value]


_TRAILER = struct.Struct("<8sQI")  # magic, length and CRC-32 of the torch.save bytes before it
_MAGIC = b"ATLITEM1"


class ItemStore(StageStore):
    """A stage's finished work items (``compute.distributed.executor.run_items``): written without fsync,
    each followed by its length and CRC-32, so an item torn by a crash of the machine (zeros, a cut, a
    rename that outlived its data) is announced and recomputed, never loaded.

    Why no fsync: a run writes about 200 items (15 to 55 per stage; 130 MB in the images stage of
    Fashion-MNIST), and writing and syncing them took 1.6 s of wall clock (load 2.8) of a run whose
    stages after training take about 45 s. A killed process
    still leaves each item whole or absent (the page cache outlives it); only a machine crash can tear
    one, and then the checksum finds it. What must last is synced: each stage's own file
    (``StageStore``), written once the stage is finished, and the published tables.
    """

    def save(self, name: str, value: object) -> None:
        buffer = self._serialized(value)
        payload = buffer.getbuffer()
        trailer = _TRAILER.pack(_MAGIC, len(payload), zlib.crc32(payload))
        del payload  # the buffer cannot grow while a view of it is held
        buffer.write(trailer)
        write_file(self.path(name), buffer.getbuffer(), f"finished work item {name!r}", synced=False)

    def load(self, name: str) -> object | None:
        """A finished item's value, or None if it has not finished or was torn (then it is recomputed)."""
        p = self.path(name)
        if not p.exists():
            return None
        data = p.read_bytes() if p.is_file() else b""
        payload = memoryview(data)[:-_TRAILER.size]
        if len(data) < _TRAILER.size or _TRAILER.unpack_from(data, len(payload)) != (
                _MAGIC, len(payload), zlib.crc32(payload)):
            announce(f"the finished work item {p} is incomplete or damaged (a crash of the machine can leave "
                     f"it so); it is computed again.")
            return None
        return self._read(p, lambda: torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
