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
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat
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
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" allows a final newline
# Rows per Parquet row group. Tables are written in (layer, unit) order, so the row groups' min/max
# statistics let a lookup of one unit (the dashboard's unit page) read one group, not the table.
ROW_GROUP_ROWS = 65_536
# LZ4 rather than zstd: files are ~6% larger but DuckDB scans them about twice as fast, which is
# what the dashboard's 1M-unit latency target needs (benchmarks/dashboard_queries.py).
COMPRESSION = "lz4"


#: Runs published by this process, in order: an interrupted command can say truthfully what landed.
PUBLISHED: list[Path] = []


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
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise WarehouseError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit."
        )
    return run_id


#: Largest manifest read (a real one is a few kB); a bigger file is not a manifest.
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """A file of a run as the manifest records it."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` parsed and typed; ``extra`` holds the publisher's additions (model, dataset, ...)."""

    run_id: str
    schema_version: int
    published_at: str
    tables: tuple[str, ...]
    files: dict[str, FileEntry]
    extra: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        """A value the publisher added (``model``, ``dataset``), or ``default``."""
        return self.extra.get(key, default)

    @staticmethod
    def parse(value: object) -> Manifest:
        """The typed record of a decoded manifest, or ``ValueError`` naming the first bad field."""
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, found {type(value).__name__}")
        def field(key: str, kind: type | tuple[type, ...]) -> Any:
            v = value.get(key)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise ValueError(f"field {key!r} is {v!r}, not a {getattr(kind, '__name__', kind)}")
            return v
        files = field("files", dict)
        entries = {}
        for name, entry in files.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
                    and entry["bytes"] >= 0 and isinstance(entry.get("sha256"), str)
                    and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
                raise ValueError(f"files[{name!r}] is not {{bytes, sha256}}")
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"files names {name!r}, not a file of the run folder")
            entries[name] = FileEntry(entry["bytes"], entry["sha256"])
        tables = field("tables", list)
        if not all(isinstance(t, str) for t in tables):
            raise ValueError("field 'tables' is not a list of names")
        known = {"run_id", "schema_version", "published_at", "tables", "files"}
        return Manifest(field("run_id", str), field("schema_version", int), field("published_at", str),
                        tuple(tables), entries, {k: v for k, v in value.items() if k not in known})


@dataclass(frozen=True)
class RunInfo:
    """A published run folder; ``error`` says why it cannot be read, if it cannot."""

    run_id: str
    path: Path
    manifest: Manifest | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BrokenRun(Exception):
    """Why one run folder cannot be read (internal to ``list_runs``)."""


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file; never blocks (a FIFO is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise BrokenRun(f"{path.name} is missing") from None
    except OSError as e:
        raise BrokenRun(f"cannot open {path.name}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BrokenRun(f"{path.name} is not a regular file")
    return fd


def _read_manifest(path: Path) -> Manifest:
    fd = _open_regular(path / MANIFEST)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BrokenRun(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES:,} bytes: not a manifest")
    try:
        return Manifest.parse(json.loads(raw))
    except (ValueError, RecursionError) as e:
        raise BrokenRun(f"{MANIFEST} is not a valid manifest ({e})") from None


#: (path, size, mtime, inode) -> sha256 of files already verified by this process: listing stays cheap.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _check_file(path: Path, entry: FileEntry | None) -> None:
    """``path`` is a regular file of the size and SHA-256 the manifest records."""
    if entry is None:
        raise BrokenRun(f"{path.name} is not listed in the manifest")
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size != entry.bytes:
            raise BrokenRun(f"{path.name} has {st.st_size:,} bytes, the manifest says {entry.bytes:,}")
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _VERIFIED:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            _VERIFIED[key] = h.hexdigest()
    if _VERIFIED[key] != entry.sha256:
        raise BrokenRun(f"{path.name} does not match its SHA-256 in the manifest (changed or corrupted)")


@functools.cache
def _stored_schema(name: str) -> pa.Schema:
    """Table ``name``'s schema as a Parquet footer gives it back (e.g. timestamp[s] is stored as [ms])."""
    buffer = pa.BufferOutputStream()
    pq.write_table(TABLES[name].arrow_schema.empty_table(), buffer)
    return pq.read_schema(pa.BufferReader(buffer.getvalue()))


def _check_table(path: Path, name: str, run_id: str) -> None:
    """The file's footer reads, its columns are ``name``'s in warehouse.schema and it holds only ``run_id``."""
    f = path / f"{name}.parquet"
    with os.fdopen(_open_regular(f), "rb") as handle:  # a FIFO or folder is refused, never read
        try:
            meta = pq.read_metadata(handle)
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException) as e:
            raise BrokenRun(f"table {name} is corrupt ({f.name}: {e})") from None
        _check_columns(schema, name)
        _check_run_ids(handle, meta, schema, name, run_id)


def _check_columns(schema: pa.Schema, name: str) -> None:
    """The footer's columns and types are those ``warehouse.schema`` gives table ``name``."""
    expected = _stored_schema(name)
    got = {fld.name: fld.type for fld in schema}
    want = {fld.name: fld.type for fld in expected}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        retyped = sorted(c for c in set(want) & set(got) if want[c] != got[c])
        raise BrokenRun(f"table {name} ({name}.parquet) does not have the columns of warehouse.schema: missing "
                        f"{missing}, unexpected {extra}, other types {retyped}")


def _check_run_ids(handle: Any, meta: pq.FileMetaData, schema: pa.Schema, name: str, run_id: str) -> None:
    """Every row of the table is of ``run_id``: from the row groups' statistics, else the column itself."""
    col = schema.get_field_index("run_id")
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            handle.seek(0)
            values = set(pq.read_table(handle, columns=["run_id"]).column(0).unique().to_pylist())
        else:
            values = {stats.min, stats.max}
        values = {v.decode() if isinstance(v, bytes) else v for v in values}
        if values - {run_id}:
            raise BrokenRun(f"table {name} holds rows of run {sorted(values - {run_id})[0]!r}, not {run_id!r} "
                            f"(a file copied from another run?)")


def _inspect(path: Path) -> RunInfo:
    """One run folder validated on its own: whatever is wrong becomes its ``error``, never an exception."""
    manifest = None
    try:
        if not RUN_ID_PATTERN.fullmatch(path.name):
            raise BrokenRun("the folder name is not a valid run id")
        manifest = _read_manifest(path)
        if manifest.run_id != path.name:
            raise BrokenRun(f"the folder is named {path.name!r} but its manifest says run {manifest.run_id!r} "
                            f"(a copied folder?); rename it back or remove it")
        if manifest.schema_version > SCHEMA_VERSION or manifest.schema_version < 1:
            raise BrokenRun(f"written with schema version {manifest.schema_version}; this version reads up to "
                            f"{SCHEMA_VERSION}. Upgrade Neuron Atlas to read it")
        if manifest.schema_version < SCHEMA_VERSION:
            raise BrokenRun(f"written with schema version {manifest.schema_version}, before the tables of version "
                            f"{SCHEMA_VERSION} (training signal, significance, examples); recompute it with "
                            f"`python -m compute run --run-id {path.name} ...` after removing the folder")
        for name in TABLES:  # the most specific reasons first: a missing, unreadable or foreign table
            if f"{name}.parquet" not in manifest.files:
                raise BrokenRun(f"table {name} is missing ({name}.parquet is not in the manifest)")
            _check_table(path, name, manifest.run_id)
        for name, entry in manifest.files.items():  # then every byte: mid-file damage, files swapped
            _check_file(path / name, entry)
    except BrokenRun as e:
        return RunInfo(path.name, path, manifest, f"{e}.")
    except (OSError, ValueError, pa.ArrowException) as e:  # anything else the file system or a footer throws
        return RunInfo(path.name, path, manifest, f"cannot be read: {e}.")
    return RunInfo(path.name, path, manifest)


def verified_bytes(run_dir: Path, name: str) -> bytes:
    """The bytes of file ``name`` of a published run, read once and checked against the SHA-256 its
    manifest records, so what is used is exactly what was published (no window to swap the file)."""
    run_dir = Path(run_dir)
    try:
        manifest = _read_manifest(run_dir)
        entry = manifest.files.get(name)
        if entry is None:
            raise BrokenRun(f"{name} is not listed in the manifest")
        with os.fdopen(_open_regular(run_dir / name), "rb") as f:
            data = f.read(entry.bytes + 1)
    except BrokenRun as e:
        raise WarehouseError(f"cannot use {name} of run {run_dir.name}: {e}. Recompute the run.") from None
    except OSError as e:
        raise WarehouseError(f"cannot read {run_dir / name}: {e.strerror or e}.") from None
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise WarehouseError(f"{name} of run {run_dir.name} does not match the SHA-256 in its manifest: it was "
                             f"changed or replaced after publishing, so it is not loaded. Recompute the run.")
    return data


def list_runs(root: Path) -> list[RunInfo]:
    """Every run folder under ``root``'s ``runs/``, sorted by name, each validated in isolation.

    A run is ok only if its manifest is a regular file holding a valid manifest whose run id is the
    folder's name, every file it lists has the recorded size and SHA-256, and every table's footer
    reads with the columns of ``warehouse.schema`` and rows of this run only. Anything else makes
    that run broken, with the reason in ``error``; other runs are unaffected, and nothing blocks.
    """
    runs_dir = Path(root) / RUNS_DIR
    try:
        entries = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    except OSError as e:
        raise WarehouseError(f"cannot list the runs in {runs_dir}: {e.strerror or e}. Check its permissions.") from e
    out = []
    for p in entries:
        try:
            is_dir = p.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            out.append(_inspect(p))
    return out


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
