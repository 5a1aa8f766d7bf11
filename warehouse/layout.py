"""Where everything of a warehouse lives on disk, and the names that are valid there.

Layout (the protocol that fills it is in docs/storage.md)::

    <root>/runs/<run_id>/manifest.json      written last; a run without it does not exist
    <root>/runs/<run_id>/<table>.parquet    one file per table of warehouse.schema
    <root>/runs/<run_id>/<other files>      e.g. checkpoint.pt, listed in the manifest
    <root>/.staging/<run_id>/               a run being written; never read
    <root>/.staging/<run_id>.stages/        its finished stages, for --resume; removed on publish
    <root>/.staging/<run_id>.lock           flock held by the process computing the run
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import IO

from warehouse.errors import WarehouseError

RUNS_DIR = "runs"
STAGING_DIR = ".staging"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt"  # the trained weights inside a run folder (a state dict, safe to load)
ENV_VAR = "NEURON_ATLAS_WAREHOUSE"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" allows a final newline

Fingerprint = tuple[tuple[str, int], ...]


def default_path() -> Path:
    """$NEURON_ATLAS_WAREHOUSE, else ``warehouse/data`` in the repository (git-ignored)."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent / "data"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise WarehouseError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit."
        )
    return run_id


def run_dir(root: Path | str, run_id: str) -> Path:
    """The folder of published run ``run_id`` (it may not exist)."""
    return Path(root) / RUNS_DIR / run_id


def staging_dir(root: Path | str) -> Path:
    """Where runs being computed, their finished stages and their locks live."""
    return Path(root) / STAGING_DIR


def stages_dir(root: Path | str, run_id: str) -> Path:
    """Where a run's finished stages are kept until it is published (beside, not inside, the run)."""
    return staging_dir(root) / f"{run_id}.stages"


def lock_path(root: Path | str, run_id: str) -> Path:
    """The file whose ``flock`` the process computing ``run_id`` holds."""
    return staging_dir(root) / f"{run_id}.lock"


def checked_folder(path: Path, what: str) -> bool:
    """Whether ``path`` exists as a real folder that can be listed and entered (False: it does not exist).

    A symbolic link, a file, or a folder without read and search permission is a ``WarehouseError``
    naming the fix: the warehouse never follows a link out of itself (``gc`` would delete what it
    points to), and a folder it cannot enter would look empty.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # it, or a folder above it, does not exist
        return False
    except NotADirectoryError:  # a file (or device) where a folder above it should be (--warehouse naming a file)
        blocker = next(p for p in reversed(path.parents) if p.exists() and not p.is_dir())
        raise WarehouseError(f"{blocker} is not a folder, so it cannot hold {what} {path}; pass "
                             f"--warehouse (or $NEURON_ATLAS_WAREHOUSE) a folder.") from None
    except OSError as e:
        raise WarehouseError(f"cannot reach {what} {path}: {e.strerror or e}. Check the permissions of the folders "
                             f"above it.") from None
    if stat.S_ISLNK(st.st_mode):
        raise WarehouseError(f"{what} {path} is a symbolic link (to {os.readlink(path)}); the warehouse never follows "
                             f"links out of itself. Replace the link with a real folder (move the folder it points "
                             f"to there).")
    if not stat.S_ISDIR(st.st_mode):
        raise WarehouseError(f"{what} {path} is not a folder; move it away so the warehouse can use the name.")
    if not os.access(path, os.R_OK | os.X_OK):
        raise WarehouseError(f"cannot read {what} {path}: permission denied (it needs read and search permission); "
                             f"give them with chmod u+rx {path}, or use another --warehouse.")
    return True


def open_lock(path: Path, create: bool = True) -> IO[str]:
    """The lock file ``path`` opened for reading and writing, never through a symbolic link (a planted
    link would make the writer truncate whatever it points to) and never truncated on opening."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    return os.fdopen(os.open(path, flags, 0o644), "r+")


def is_published(path: Path) -> bool:
    """Whether ``path`` is a published run folder (its manifest, written last, is there)."""
    return (path / MANIFEST).is_file()


def published_at(path: Path) -> float:
    """Modification time of a published run's manifest: changes when the run is replaced."""
    return (path / MANIFEST).stat().st_mtime


def fingerprint(root: Path | str) -> Fingerprint:
    """(run folder, manifest mtime) of every published run: changes whenever a run is added or replaced."""
    runs = Path(root) / RUNS_DIR
    try:
        entries = sorted(runs.iterdir()) if runs.is_dir() else []
    except OSError:  # an unreadable runs/ folder: list_runs says so
        return ()
    out = []
    for p in entries:
        try:
            out.append((p.name, os.stat(p / MANIFEST).st_mtime_ns))
        except OSError:
            continue
    return tuple(out)
