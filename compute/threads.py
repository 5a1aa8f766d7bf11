"""The intra-op thread policy of every compute stage, in one place.

torch parallelises one operation over ``torch.get_num_threads()`` threads and each parallel region
waits for its slowest thread. On a machine shared with other busy processes (cluster nodes,
laptops, CI runners) a descheduled thread stalls every region: measured on 2 cores with other
CPU-heavy processes running, training fell from ~88 to ~4 batches/s with torch's default of one
thread per core, where a fair share would be ~30. One thread per process never waits on another,
so it keeps its share. ``benchmarks/atlas.py`` measures each stage with 1 and with every thread,
idle and beside one busy process (``contention_keep``); the figures that chose ``DEFAULT_THREADS``
are in README.md ("Threads").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_THREADS = 1  # the measured choice (README.md, "Threads"); 0 means every CPU this process may use


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def thread_count(n: int) -> int:
    """Intra-op threads for a requested ``n``: 0 means every available CPU; capped at those CPUs."""
    if n < 0:
        raise ValueError(f"threads must be 0 (every CPU) or positive, got {n}")
    cpus = available_cpus()
    return cpus if n == 0 else min(n, cpus)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``thread_count(n)`` intra-op threads, restoring torch's setting after; None keeps it."""
    import torch  # here, so the CLI reads DEFAULT_THREADS without loading torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(thread_count(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
