"""Progress bars for long stages: counts, rate and ETA on stderr.

``NEURON_ATLAS_PROGRESS=lines`` replaces the bars by machine-readable lines
``PROGRESS {"stage": ..., "n": ..., "total": ...}`` on stderr, which the dashboard parses to drive
its own progress bar while it runs the compute step as a subprocess.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
PREFIX = "PROGRESS "


class LineBar(tqdm):
    """A tqdm whose every refresh is one JSON line on stderr instead of a redrawn bar."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        d: dict[str, Any] = self.format_dict
        print(PREFIX + json.dumps({"stage": self.desc.strip(), "n": d["n"], "total": d["total"]}),
              file=sys.stderr, flush=True)
        return True


def parse_line(line: str) -> dict[str, Any] | None:
    """The progress record of a ``PROGRESS`` line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        record = json.loads(line[len(PREFIX):])
    except ValueError:
        return None
    return record if isinstance(record, dict) and {"stage", "n", "total"} <= set(record) else None


def bar(iterable: Iterable[T] | None, desc: str, unit: str = "it", total: int | None = None,
        initial: int = 0) -> tqdm:
    """A tqdm bar over ``iterable``; NEURON_ATLAS_QUIET=1 silences it (tests, servers).

    Off a terminal (CI logs) the bar redraws at most every 5 seconds instead of flooding the log.
    """
    if os.environ.get("NEURON_ATLAS_PROGRESS") == "lines":
        return LineBar(iterable, desc=desc, unit=unit, total=total, initial=initial, file=sys.stderr, mininterval=0.5,
                       leave=False)
    quiet = os.environ.get("NEURON_ATLAS_QUIET") == "1"
    return tqdm(iterable, desc=f"{desc:<12}", unit=unit, total=total, initial=initial, disable=quiet, file=sys.stderr,
                mininterval=0.2 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)


def stage_started(name: str) -> None:
    """Announce stage ``name`` of the declared list (``compute.run.stages.STAGE_NAMES``).

    In ``lines`` mode this is a ``PROGRESS`` line with ``n = total = 0`` and ``"start": true``, which
    the dashboard turns into "stage i of N"; a terminal needs nothing (each stage's bar names it).
    """
    if os.environ.get("NEURON_ATLAS_PROGRESS") == "lines":
        print(PREFIX + json.dumps({"stage": name, "n": 0, "total": 0, "start": True}), file=sys.stderr, flush=True)


def announce(message: str) -> None:
    """A one-line note on stderr about the run (e.g. activation calls left unprobed); silent with
    NEURON_ATLAS_QUIET=1, like the bars."""
    if os.environ.get("NEURON_ATLAS_QUIET") != "1":
        print(f"note: {message}", file=sys.stderr, flush=True)
