"""The warehouse on disk: runs are staged, then published atomically; readers see only whole runs.

Layout::

    <root>/runs/<run_id>/manifest.json      written last; a run without it does not exist
    <root>/runs/<run_id>/<table>.parquet    one file per table of warehouse.schema
    <root>/runs/<run_id>/<other files>      e.g. checkpoint.pt, listed in the manifest
    <root>/.staging/<run_id>/               a run being written; never read
    <root>/.staging/<run_id>.stages/        its finished stages, for --resume; removed on publish
    <root>/.staging/<run_id>.lock           flock held by the process computing the run

Publishing renames the finished staging folder into ``runs/``. A rename within one file system is
atomic, so a crash leaves either no run or a whole one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.faults import crash_point
from warehouse.schema import SCHEMA_VERSION, TABLES
from warehouse.errors import AtlasError

RUNS_DIR = "runs"
STAGING_DIR = ".staging"
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt"  # the trained weights inside a run folder (a state dict, safe to load)
ENV_VAR = "NEURON_ATLAS_WAREHOUSE"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Rows per Parquet row group. Tables are written in (layer, unit) order, so the row groups' min/max
# statistics let a lookup of one unit (the dashboard's unit page) read one group, not the table.
ROW_GROUP_ROWS = 65_536
# LZ4 rather than zstd: files are ~6% larger but DuckDB scans them about twice as fast, which is
# what the dashboard's 1M-unit latency target needs (benchmarks/dashboard_queries.py).
COMPRESSION = "lz4"


Fingerprint = tuple[tuple[str, int], ...]


def run_dir(root: Path | str, run_id: str) -> Path:
    """The folder of published run ``run_id`` (it may not exist)."""
    return Path(root) / RUNS_DIR / run_id


def staging_dir(root: Path | str) -> Path:
    """Where runs being computed, their finished stages and their locks live."""
    return Path(root) / STAGING_DIR


def is_published(path: Path) -> bool:
    """Whether ``path`` is a published run folder (its manifest, written last, is there)."""
    return (path / MANIFEST).is_file()


def published_at(path: Path) -> float:
    """Modification time of a published run's manifest: changes when the run is replaced."""
    return (path / MANIFEST).stat().st_mtime


def fingerprint(root: Path | str) -> Fingerprint:
    """(run folder, manifest mtime) of every published run: changes whenever a run is added or replaced."""
    runs = Path(root) / RUNS_DIR
    if not runs.is_dir():
        return ()
    out = []
    for p in sorted(runs.iterdir()):
        try:
            out.append((p.name, os.stat(p / MANIFEST).st_mtime_ns))
        except OSError:
            continue
    return tuple(out)


def stored_run_config(path: Path) -> dict[str, Any]:
    """The settings a published run was computed with (``runs.config``, JSON)."""
    try:
        stored = pq.read_table(path / "runs.parquet", columns=["config"]).column(0)[0].as_py()
        return json.loads(stored)
    except (OSError, ValueError, IndexError, KeyError, pa.ArrowException) as e:
        raise WarehouseError(f"{path} is not a readable published run (its runs table: {e}); recompute it "
                             "or remove the folder.") from e


class WarehouseError(AtlasError):
    """A warehouse problem a person can fix; the message says what and how."""


def default_path() -> Path:
    """$NEURON_ATLAS_WAREHOUSE, else ``warehouse/data`` in the repository (git-ignored)."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parent / "data"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise WarehouseError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit."
        )
    return run_id


@dataclass(frozen=True)
class RunInfo:
    """A published run folder; ``error`` says why it cannot be read, if it cannot."""

    run_id: str
    path: Path
    manifest: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _inspect(path: Path) -> RunInfo:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return RunInfo(path.name, path, None, f"unreadable manifest: {e}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        return RunInfo(path.name, path, manifest,
                       f"written with schema version {version}; this version reads up to {SCHEMA_VERSION}. "
                       f"Upgrade Neuron Atlas to read it.")
    for name in TABLES:
        f = path / f"{name}.parquet"
        try:
            pq.read_metadata(f)
        except FileNotFoundError:
            return RunInfo(path.name, path, manifest, f"table {name} is missing ({f.name}).")
        except (OSError, pa.ArrowException) as e:
            return RunInfo(path.name, path, manifest, f"table {name} is corrupt ({f.name}: {e}).")
    return RunInfo(path.name, path, manifest)


def list_runs(root: Path) -> list[RunInfo]:
    """Every published run under ``root``, sorted by id; broken ones carry their reason."""
    runs_dir = Path(root) / RUNS_DIR
    if not runs_dir.is_dir():
        return []
    return [_inspect(p) for p in sorted(runs_dir.iterdir()) if (p / MANIFEST).exists()]


def write_file(path: Path, data: bytes | memoryview, what: str) -> None:
    """Write ``data`` to ``path`` through a temporary file, synced and renamed into place.

    A failed write (a full disk, a file-size limit) leaves no partial file and raises a
    ``WarehouseError`` naming ``what``; the run's finished stages are kept for ``--resume``.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(what, path.parent, e) from e


def write_failed(what: str, where: Path, e: OSError) -> WarehouseError:
    """The error for a write that failed (a full disk, a file-size limit), with what to do about it."""
    return WarehouseError(f"cannot write {what} to {where}: {e.strerror or e}. Free space (or raise the "
                          f"file-size limit) and run again; finished stages are kept for --resume.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunWriter:
    """Writes one run into its staging folder and publishes it whole, or not at all.

    The staging folder is ``.staging/<run_id>/``, guarded by an exclusive ``flock`` on
    ``.staging/<run_id>.lock``: two processes cannot compute the same run id, and a lock left by a
    killed process is free again at once (the kernel drops it). Finished stages saved in
    ``.staging/<run_id>.stages/`` survive a crash, so ``resume=True`` can continue an interrupted
    run. Used as a context manager: on an exception the staging folders are kept only if they
    hold finished stages worth resuming.
    """

    def __init__(self, root: Path, run_id: str, resume: bool = False) -> None:
        self.root = Path(root)
        self.run_id = check_run_id(run_id)
        self.final = self.root / RUNS_DIR / run_id
        if self.final.exists():
            raise WarehouseError(f"run {run_id!r} already exists in {self.root}; choose another --run-id.")
        staging_root = self.root / STAGING_DIR
        try:
            (self.root / RUNS_DIR).mkdir(parents=True, exist_ok=True)
            staging_root.mkdir(parents=True, exist_ok=True)
            self._lock_path = staging_root / f"{run_id}.lock"
            self._lock = open(self._lock_path, "a+")
        except OSError as e:
            raise WarehouseError(f"cannot write to warehouse {self.root}: {e.strerror or e}. "
                                 f"Choose a writable --warehouse or set ${ENV_VAR}.") from e
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise WarehouseError(
                f"run {run_id!r} is being computed right now ({holder}); wait for it to finish or "
                f"choose another --run-id.") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        self._lock.flush()
        self.staging = staging_root / run_id
        if (self.staging.exists() or self.stages_dir.exists()) and not resume:
            self._give_up()
            raise WarehouseError(
                f"an interrupted computation of run {run_id!r} is in {staging_root}. Continue it with "
                f"--resume --run-id {run_id}, or delete {self.staging.name} and {self.stages_dir.name} "
                f"there to start again.")
        if resume and not self.stages_dir.exists():
            self._give_up()
            raise WarehouseError(f"nothing to resume: no interrupted run {run_id!r} in {staging_root}.")
        try:
            self.staging.mkdir(exist_ok=True)
        except OSError as e:
            self._give_up()
            raise WarehouseError(f"cannot write to warehouse {self.root}: {e.strerror or e}.") from e
        self.tables: list[str] = []

    @property
    def stages_dir(self) -> Path:
        """Where finished stages are kept until the run is published (beside, not inside, the run)."""
        return self.root / STAGING_DIR / f"{self.run_id}.stages"

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and not any(self.stages_dir.glob("*.pt")):
            self.abort()
        self.release()

    def _give_up(self) -> None:
        """Leave without having written anything: drop the lock and its file."""
        self._lock_path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Drop the run-id lock (idempotent)."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def file(self, name: str) -> Path:
        """Path for an extra file of the run (e.g. the checkpoint), inside the staging folder."""
        return self.staging / name

    def write_table(self, name: str, columns: dict[str, Any], row_group_size: int | None = None) -> None:
        """Write ``columns`` (name -> sequence) as table ``name``, typed by the schema; ``run_id`` is
        filled with this run's id when not given.

        A small ``row_group_size`` lets readers skip row groups by their statistics (see unit_images).
        """
        schema = TABLES[name].arrow_schema
        if "run_id" not in columns:
            rows = len(next(iter(columns.values()), []))
            columns = {**columns, "run_id": [self.run_id] * rows}
        missing = set(schema.names) - set(columns)
        extra = set(columns) - set(schema.names)
        if missing or extra:
            raise ValueError(f"table {name}: missing columns {sorted(missing)}, unknown columns {sorted(extra)}")
        n = {len(v) for v in columns.values()}
        if len(n) > 1:
            raise ValueError(f"table {name}: columns have different lengths {sorted(n)}")
        table = pa.table({c: pa.array(columns[c], type=schema.field(c).type) for c in schema.names}, schema=schema)
        try:
            pq.write_table(table, self.staging / f"{name}.parquet", compression=COMPRESSION,
                           row_group_size=row_group_size or ROW_GROUP_ROWS)
        except OSError as e:
            raise write_failed(f"table {name}", self.staging, e) from e
        self.tables.append(name)

    def publish(self, extra: dict[str, Any] | None = None) -> Path:
        """Write the manifest last and move the run into place atomically."""
        missing = set(TABLES) - set(self.tables)
        if missing:
            raise ValueError(f"run {self.run_id}: tables not written: {sorted(missing)}")
        try:
            files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                     for p in sorted(self.staging.iterdir())}
            manifest = {
                "run_id": self.run_id,
                "schema_version": SCHEMA_VERSION,
                "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "tables": sorted(self.tables),
                "files": files,
                **(extra or {}),
            }
            for p in self.staging.iterdir():
                _fsync(p)
            tmp = self.staging / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=2))
            _fsync(tmp)
            tmp.rename(self.staging / MANIFEST)
            _fsync(self.staging)
            crash_point("before-rename")
            if self.final.exists():
                raise WarehouseError(f"run {self.run_id!r} was published by another process meanwhile.")
            os.rename(self.staging, self.final)
            _fsync(self.final.parent)
            shutil.rmtree(self.stages_dir, ignore_errors=True)
            self._lock_path.unlink(missing_ok=True)
        except OSError as e:
            self.abort()
            raise WarehouseError(f"cannot publish run {self.run_id} to {self.root}: {e}") from e
        except WarehouseError:
            self.abort()
            raise
        return self.final

    def abort(self) -> None:
        """Remove the staging folder, saved stages and lock file: nothing of this run remains."""
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.stages_dir, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)
