"""Staging left behind by killed or interrupted computations: found, listed and removed safely."""

from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass
from pathlib import Path

from warehouse.errors import WarehouseError
from warehouse.layout import MANIFEST, RUNS_DIR, STAGING_DIR


@dataclass(frozen=True)
class Leftover:
    """Staging files of one run id that no process is using."""

    run_id: str
    paths: tuple[Path, ...]
    published: bool  # the run is in runs/: these are leftovers of a finished run
    stages: int  # finished stage files (resumable with --resume when not published)


def staging_leftovers(root: Path) -> list[Leftover]:
    """Everything under ``.staging/`` that belongs to no running computation, grouped by run id.

    A computation holds its ``<id>.lock``; whatever is not locked was left by a killed or
    interrupted process (or one killed right after publishing).
    """
    staging = Path(root) / STAGING_DIR
    if not staging.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for p in sorted(staging.iterdir()):
        run_id = p.name.removesuffix(".lock").removesuffix(".stages")
        groups.setdefault(run_id, []).append(p)
    out = []
    for run_id, paths in groups.items():
        lock = staging / f"{run_id}.lock"
        if lock.is_file() and _locked(lock):
            continue
        stages = staging / f"{run_id}.stages"
        n = len(list(stages.glob("*.pt"))) if stages.is_dir() else 0
        out.append(Leftover(run_id, tuple(paths), (Path(root) / RUNS_DIR / run_id / MANIFEST).exists(), n))
    return out


def _locked(lock: Path) -> bool:
    """Whether a running computation holds ``lock``."""
    try:
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return True  # cannot tell: leave it alone


def remove_leftover(root: Path, leftover: Leftover) -> None:
    """Delete one run id's staging leftovers, holding its lock so no computation starts meanwhile."""
    lock = Path(root) / STAGING_DIR / f"{leftover.run_id}.lock"
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WarehouseError(f"run {leftover.run_id!r} started computing meanwhile; its staging is kept.") from None
        for p in leftover.paths:
            if p != lock:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
