"""Progress bars for long stages: counts, rate and ETA on stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None, desc: str, unit: str = "it", total: int | None = None,
        initial: int = 0) -> tqdm:
    """A tqdm bar over ``iterable``; NEURON_ATLAS_QUIET=1 silences it (tests, servers).

    Off a terminal (CI logs) the bar redraws at most every 5 seconds instead of flooding the log.
    """
    quiet = os.environ.get("NEURON_ATLAS_QUIET") == "1"
    return tqdm(iterable, desc=f"{desc:<12}", unit=unit, total=total, initial=initial, disable=quiet, file=sys.stderr,
                mininterval=0.2 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)
