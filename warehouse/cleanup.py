"""Staging left behind by killed or interrupted computations: found, listed and removed safely.

Nothing here follows a symbolic link: a ``.staging`` that is a link is refused (``checked_folder``),
a link inside it is removed as a link, and ``shutil.rmtree`` never descends through one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from warehouse.errors import WarehouseError
from warehouse.layout import MANIFEST, checked_folder, lock_path, open_lock, run_dir, stages_dir, staging_dir


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
    staging = staging_dir(root)
    if not checked_folder(staging, "the staging folder"):
        return []
    try:
        names = sorted(os.listdir(staging))
    except OSError as e:
        raise WarehouseError(f"cannot list {staging}: {e.strerror or e}. Check its permissions.") from None
    groups: dict[str, list[Path]] = {}
    for name in names:
        groups.setdefault(name.removesuffix(".lock").removesuffix(".stages"), []).append(staging / name)
    out = []
    for run_id, paths in groups.items():
        if _locked(lock_path(root, run_id)):
            continue
        stages = stages_dir(root, run_id)
        n = len(list(stages.glob("*.pt"))) if stages.is_dir() and not stages.is_symlink() else 0
        out.append(Leftover(run_id, tuple(paths), os.path.isfile(run_dir(root, run_id) / MANIFEST), n))
    return out


def _locked(lock: Path) -> bool:
    """Whether a running computation holds ``lock`` (False if there is none)."""
    if not os.path.lexists(lock):
        return False
    try:
        with open_lock(lock, create=False) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return os.path.isfile(lock) and not os.path.islink(lock)  # a real lock we cannot open: leave it alone


def remove_leftover(root: Path, leftover: Leftover) -> None:
    """Delete one run id's staging leftovers, holding its lock so no computation starts meanwhile.

    Links are removed as links; folders are removed without following links inside them."""
    lock = lock_path(root, leftover.run_id)
    if os.path.islink(lock):
        os.unlink(lock)
    try:
        with open_lock(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WarehouseError(f"run {leftover.run_id!r} started computing meanwhile; its staging is kept.") from None
            for p in leftover.paths:
                if p == lock:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
    except OSError as e:
        raise WarehouseError(f"cannot remove the staging leftovers of run {leftover.run_id!r} "
                             f"({e.filename or ''}: {e.strerror or e}); check their permissions.") from None
