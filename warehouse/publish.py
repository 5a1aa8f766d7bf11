"""Writing a run: staged in ``.staging/<run_id>/``, then published whole by one rename into ``runs/``.

The manifest is the commit point inside the staging folder and the folder's rename into ``runs/`` the
commit point of the warehouse. Every step is a crash point (``warehouse.faults``); the order of
writes, what each interruption leaves and how ``--resume`` finishes it are in docs/storage.md.
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
from warehouse.layout import ENV_VAR, MANIFEST, check_run_id, checked_folder, lock_path, open_lock, run_dir, stages_dir, staging_dir
from warehouse.schema import SCHEMA_VERSION, TABLES
from warehouse.validate import inspect_run

# Rows per Parquet row group. Tables are written in (layer, unit) order, so the row groups' min/max
# statistics let a lookup of one unit (the dashboard's unit page) read one group, not the table.
ROW_GROUP_ROWS = 65_536
# LZ4 rather than zstd: files are ~6% larger but DuckDB scans them about twice as fast, which is
# what the dashboard's 1M-unit latency target needs (benchmarks/dashboard_queries.py).
COMPRESSION = "lz4"


#: Runs published by this process, in order: an interrupted command can say truthfully what landed.
PUBLISHED: list[Path] = []


def write_file(path: Path, data: bytes | memoryview, what: str, synced: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file, synced and renamed into place.

    A failed write (a full disk, a file-size limit) leaves no partial file and raises a
    ``WarehouseError`` naming ``what``; the run's finished stages are kept for ``--resume``.
    ``synced=False`` skips the fsync: a killed process still leaves the whole file or none, but after
    a crash of the machine the file may be torn, so only for data whose reader detects that
    (``compute.run.stage_store.ItemStore``).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if synced:
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
    run: the staging folder only ever holds files derived from them, so it is emptied and written
    again. A resumed run that the interrupted process had already published (a kill after the
    rename) is recognised, validated and only cleaned up (``already_published``). Used as a
    context manager: on an exception the saved stages are kept if there are any worth resuming.
    """

    def __init__(self, root: Path, run_id: str, resume: bool = False) -> None:
        self.root = Path(root)
        self.run_id = check_run_id(run_id)
        self.final = run_dir(root, run_id)
        self.staging = staging_dir(root) / run_id
        self._lock_path = lock_path(root, run_id)
        self.tables: list[str] = []
        self.files: list[str] = []
        self.published = False
        self.already_published = False
        self._cleaned = False
        self._staged_inode: tuple[int, int] | None = None  # the staging folder's identity once its manifest is in
        if os.path.lexists(self.final) and not resume:
            raise WarehouseError(f"run {run_id!r} already exists in {self.root}; choose another --run-id.")
        self._left_lock = os.path.lexists(self._lock_path)  # a killed computation's, or none
        try:
            for folder in (self.final.parent, staging_dir(root)):
                if not checked_folder(folder, "the warehouse folder"):
                    folder.mkdir(parents=True, exist_ok=True)
            self._lock = open_lock(self._lock_path)
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
        try:
            self._settle(resume)
        except BaseException:
            self.release()
            raise

    def _settle(self, resume: bool) -> None:
        """Decide, under the lock, what this writer continues: a fresh run, an interrupted one, or a
        published one whose clean-up was cut short."""
        staging_root = staging_dir(self.root)
        leftovers = os.path.lexists(self.staging) or os.path.lexists(self.stages_dir)
        if os.path.lexists(self.final):
            if not resume:
                self._give_up()
                raise WarehouseError(f"run {self.run_id!r} already exists in {self.root}; choose another --run-id.")
            info = inspect_run(self.final)
            if not info.ok:
                self._give_up()
                raise WarehouseError(
                    f"run {self.run_id!r} is in {self.final.parent} but broken ({info.error}) Nothing is "
                    f"overwritten: move or delete {self.final} and --resume again"
                    + (" (its finished stages are kept)." if leftovers else "; nothing is left to resume from, so "
                       "compute it again without --resume."))
            if not (leftovers or self._left_lock):
                self._give_up()
                raise WarehouseError(f"nothing to resume: run {self.run_id!r} is published and complete in "
                                     f"{self.final.parent}.")
            self.published = self.already_published = True  # the exit cleans what the kill left
            return
        if leftovers and not resume:
            self._give_up()
            raise WarehouseError(
                f"an unfinished computation of run {self.run_id!r} (interrupted, or stopped by an error) is in "
                f"{staging_root}. Continue it with --resume --run-id {self.run_id} (with the settings it started "
                f"with), or delete {self.staging.name} and {self.stages_dir.name} there to start again (after "
                f"changing a setting or its input files, start again).")
        if resume and not os.path.isdir(self.stages_dir):
            self._give_up()
            raise WarehouseError(f"nothing to resume: no interrupted run {self.run_id!r} in {staging_root}.")
        try:
            self._empty_staging()
            self.staging.mkdir()
        except OSError as e:
            self._give_up()
            raise WarehouseError(f"cannot write to warehouse {self.root}: {e.strerror or e}.") from e

    def _empty_staging(self) -> None:
        """Remove what an interrupted publish left in the staging folder: it is all rebuilt from the stages.

        A symbolic link there is removed itself, never followed."""
        if os.path.islink(self.staging) or os.path.isfile(self.staging):
            os.unlink(self.staging)
        elif os.path.lexists(self.staging):
            shutil.rmtree(self.staging)

    @property
    def stages_dir(self) -> Path:
        """Where finished stages are kept until the run is published (beside, not inside, the run)."""
        return stages_dir(self.root, self.run_id)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self.published and self._renamed():  # interrupted between the rename and its bookkeeping
                self._mark_published()
            if self.published and not self._cleaned:
                self._clean_up()  # again, if an interrupt cut the first clean-up short
            elif exc_type is not None:
                if any(self.stages_dir.glob("*.pt")):
                    shutil.rmtree(self.staging, ignore_errors=True)  # derived from the stages: rebuilt on resume
                else:
                    self.abort()
        finally:
            self.release()

    def _renamed(self) -> bool:
        """Whether this writer's staging folder is now the run folder (the rename happened)."""
        if self._staged_inode is None:
            return False
        try:
            st = os.lstat(self.final)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._staged_inode

    def _mark_published(self) -> None:
        self.published = True
        PUBLISHED.append(self.final)

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
        """Path for an extra file of the run (e.g. the checkpoint), inside the staging folder; the
        manifest lists it."""
        if name not in self.files:
            self.files.append(name)
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
        if name not in self.tables:
            self.tables.append(name)
        crash_point(f"after-table-{name}")

    def publish(self, extra: dict[str, Any] | None = None) -> Path:
        """Sync every file, write the manifest last, then move the run into place with one rename.

        Until the rename nothing of the run is visible; after it the run is whole. A failure before
        the rename keeps the finished stages (``--resume`` publishes again from them).
        """
        if self.already_published:
            return self.final
        missing = set(TABLES) - set(self.tables)
        if missing:
            raise ValueError(f"run {self.run_id}: tables not written: {sorted(missing)}")
        try:
            names = sorted({f"{t}.parquet" for t in self.tables} | set(self.files))
            files = {}
            for name in names:
                _fsync(self.staging / name)
                files[name] = {"bytes": (self.staging / name).stat().st_size, "sha256": _sha256(self.staging / name)}
            manifest = {
                "run_id": self.run_id,
                "schema_version": SCHEMA_VERSION,
                "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "tables": sorted(self.tables),
                "files": files,
                **(extra or {}),
            }
            crash_point("before-manifest")
            tmp = self.staging / (MANIFEST + ".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(manifest, indent=2))
                f.flush()
                os.fsync(f.fileno())
            crash_point("after-manifest-tmp")
            tmp.rename(self.staging / MANIFEST)
            _fsync(self.staging)
            st = os.lstat(self.staging)
            self._staged_inode = (st.st_dev, st.st_ino)
            crash_point("before-rename")
            if os.path.lexists(self.final):
                raise WarehouseError(f"run {self.run_id!r} appeared in {self.final.parent} meanwhile (not written by "
                                     f"this computation); move it away and --resume --run-id {self.run_id}.")
            os.rename(self.staging, self.final)
            self._mark_published()
            crash_point("after-rename")
            _fsync(self.final.parent)
            self._clean_up()
        except OSError as e:
            if self.published:  # the run is whole and in place; only the clean-up failed
                raise WarehouseError(f"run {self.run_id} was published to {self.final}, but its staging leftovers "
                                     f"could not be removed ({e}); remove them with python -m compute gc "
                                     f"--remove.") from e
            raise WarehouseError(f"cannot publish run {self.run_id} to {self.root}: {e.strerror or e}. Free space "
                                 f"or fix the permissions, then --resume --run-id {self.run_id} (the finished "
                                 f"stages are kept).") from e
        return self.final

    def _clean_up(self) -> None:
        """After publishing: the saved stages and the lock file are no longer needed."""
        shutil.rmtree(self.stages_dir, ignore_errors=True)
        crash_point("after-clean-stages")
        self._lock_path.unlink(missing_ok=True)
        self._cleaned = True

    def abort(self) -> None:
        """Remove the staging folder, saved stages and lock file: nothing of this run remains."""
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.stages_dir, ignore_errors=True)
        self._lock_path.unlink(missing_ok=True)
