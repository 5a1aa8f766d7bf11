"""Finished stages of a run, kept in its staging folder so an interrupted run can resume.

Each stage's result is pickled with ``torch.save`` to ``stages/<name>.pt`` through a temporary
file and an atomic rename (``warehouse.store.write_file``), so a stage file is either complete or
absent. Resuming loads every finished stage and computes only the rest; with the same seed the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from compute.progress import stage_started
from warehouse.faults import crash_point
from warehouse.store import write_file

T = TypeVar("T")


class StageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.pt"

    def save(self, name: str, value: object) -> None:
        # Serialized in memory first: torch.save onto a file that fails mid-way (a full disk) raises
        # its own RuntimeError; a plain write raises the OSError that write_file explains.
        buffer = io.BytesIO()
        torch.save(value, buffer)
        write_file(self.path(name), buffer.getbuffer(), f"finished stage {name!r}")

    def load(self, name: str) -> object | None:
        """A finished stage's value, or None if it has not finished."""
        p = self.path(name)
        # Our own files, written by this code into the run's staging folder: full unpickling is safe.
        return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None

    def run(self, name: str, compute: Callable[[], T]) -> T:
        """The stage's saved result, or compute, save and return it."""
        stage_started(name)
        value = self.load(name)
        if value is None:
            value = compute()
            self.save(name, value)
        crash_point(f"after-{name}")
        return value  # type: ignore[return-value]
