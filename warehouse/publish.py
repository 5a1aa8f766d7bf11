"""Writing a run: staged in ``.staging/<run_id>/``, then published whole by one rename into ``runs/``.

The order of writes and what each interruption leaves are in docs/storage.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.errors import WarehouseError
from warehouse.faults import crash_point
from warehouse.layout import ENV_VAR, MANIFEST, RUNS_DIR, STAGING_DIR, check_run_id
from warehouse.schema import SCHEMA_VERSION, TABLES

# Rows per Parquet row group. Tables are written in (layer, unit) order, so the row groups' min/max
# statistics let a lookup of one unit (the dashboard's unit page) read one group, not the table.
ROW_GROUP_ROWS = 65_536
# LZ4 rather than zstd: files are ~6% larger but DuckDB scans them about twice as fast, which is
# what the dashboard's 1M-unit latency target needs (benchmarks/dashboard_queries.py).
COMPRESSION = "lz4"


#: Runs published by this process, in order: an interrupted command can say truthfully what landed.
PUBLISHED: list[Path] = []


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
        self.published = False

    @property
    def stages_dir(self) -> Path:
        """Where finished stages are kept until the run is published (beside, not inside, the run)."""
        return self.root / STAGING_DIR / f"{self.run_id}.stages"

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self.published:
                self._clean_up()  # again, if an interrupt cut the first clean-up short
            elif exc_type is not None and not any(self.stages_dir.glob("*.pt")):
                self.abort()
        finally:
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
            self.published = True
            PUBLISHED.append(self.final)
            crash_point("after-rename")
            _fsync(self.final.parent)
            self._clean_up()
        except OSError as e:
            if self.published:  # the run is whole and in place; only the clean-up failed
                raise WarehouseError(f"run {self.run_id} was published to {self.final}, but its staging leftovers "
                                     f"could not be removed ({e}); remove them with python -m compute gc "
                                     f"--remove.") from e
            self.abort()
            raise WarehouseError(f"cannot publish run {self.run_id} to {self.root}: {e}") from e
        except WarehouseError:
            self.abort()
            raise
        return self.final

    def _clean_up(self) -> None:
        """After publishing: the saved stages and the lock file are no longer needed."""
        shutil.rmtree(self.stages_dir, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove the staging folder, saved stages and lock file: nothing of this run remains."""
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.stages_dir, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)

