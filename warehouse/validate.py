"""Which run folders are valid runs: each validated on its own, never taking the others down.

A run is valid only if its manifest is a regular file holding a valid record whose run id is the
folder's name, every file it lists has the recorded size and SHA-256, every table's footer
reads with the columns of ``warehouse.schema`` and rows of this run only, its units are exactly those
its layers list, and its class and unit indices lie within what the run has (docs/storage.md).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from warehouse.errors import WarehouseError
from warehouse.layout import MANIFEST, RUN_ID_PATTERN, RUNS_DIR, checked_folder
from warehouse.schema import SCHEMA_VERSION, TABLES


def stored_run_config(path: Path) -> dict[str, Any]:
    """The settings a published run was computed with (``runs.config``, a JSON object)."""
    try:
        stored = pq.read_table(path / "runs.parquet", columns=["config"]).column(0)[0].as_py()
        config = json.loads(stored)
        if not isinstance(config, dict):
            raise ValueError(f"its config is {type(config).__name__}, not a JSON object")
        return config
    except (OSError, ValueError, TypeError, IndexError, KeyError, pa.ArrowException) as e:  # TypeError: a null
        raise WarehouseError(f"{path} is not a readable published run (its runs table: {e}); recompute it "
                             "or remove the folder.") from e


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
        if e.errno == errno.ELOOP:  # O_NOFOLLOW on a link
            raise BrokenRun(f"{path.name} is a symbolic link (to {os.readlink(path)}); a run's files are never "
                            f"read through links: put the file itself in the run folder") from None
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


#: A file's identity and state: (path, device, inode, size, mtime_ns, ctime_ns). Any write to the file,
#: a replacement or a restored modification time (``touch -d``) changes one of them: the kernel sets the
#: ctime on every change of content or metadata, and nothing lets a user set it back.
FileKey = tuple[str, int, int, int, int, int]
#: FileKey -> SHA-256 of the files already hashed (by this process, or by an earlier one through the
#: verification cache): a file is hashed again only when its key changes, so listing stays cheap.
_VERIFIED: dict[FileKey, str] = {}
_CACHE_STATE = {"loaded": False, "dirty": False}
#: Entries kept in the verification cache file (the newest): a few per published file.
MAX_CACHED = 20_000


def verification_cache() -> Path | None:
    """The file that remembers hashed files across processes: ``$NEURON_ATLAS_CACHE/verified-files.json``
    (default ``~/.cache/neuron-atlas``, or under ``$XDG_CACHE_HOME``); None when ``NEURON_ATLAS_CACHE`` is
    set empty (every process then hashes every file once)."""
    where = os.environ.get("NEURON_ATLAS_CACHE")
    if where == "":
        return None
    base = Path(where) if where else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuron-atlas"
    return base / "verified-files.json"


def _load_verifications() -> None:
    """The cache file's entries into ``_VERIFIED`` (once per process); a malformed file or entry is ignored."""
    if _CACHE_STATE["loaded"]:
        return
    _CACHE_STATE["loaded"] = True
    path = verification_cache()
    try:
        entries = json.loads(path.read_bytes()) if path is not None else []
    except (OSError, ValueError, RecursionError):
        return
    for e in entries if isinstance(entries, list) else []:
        if (isinstance(e, list) and len(e) == 7 and isinstance(e[0], str) and isinstance(e[6], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in e[1:6])
                and re.fullmatch(r"[0-9a-f]{64}", e[6])):
            _VERIFIED.setdefault(tuple(e[:6]), e[6])  # type: ignore[arg-type]


def _save_verifications() -> None:
    """Write ``_VERIFIED`` (the newest ``MAX_CACHED``) to the cache file, atomically; skipped when there is
    nothing new or the cache cannot be written (a read-only home: the next process hashes again)."""
    path = verification_cache()
    if path is None or not _CACHE_STATE["dirty"]:
        return
    _CACHE_STATE["dirty"] = False
    entries = [[*k, v] for k, v in list(_VERIFIED.items())[-MAX_CACHED:]]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, path)
    except OSError:
        pass


def file_key(path: Path | str, st: os.stat_result | None = None) -> FileKey:
    """``path``'s identity and state (see ``FileKey``); ``st`` when already taken."""
    st = os.stat(path) if st is None else st
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_file(path: Path, entry: FileEntry | None) -> None:
    """``path`` is a regular file of the size and SHA-256 the manifest records (hashed once per state of
    the file, see ``FileKey``)."""
    if entry is None:
        raise BrokenRun(f"{path.name} is not listed in the manifest")
    _load_verifications()
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size != entry.bytes:
            raise BrokenRun(f"{path.name} has {st.st_size:,} bytes, the manifest says {entry.bytes:,}")
        key = file_key(path, st)
        digest = _VERIFIED.get(key)
        if digest is None:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            digest = h.hexdigest()
            if file_key(path, os.fstat(f.fileno())) == key:  # not changed while it was read
                _VERIFIED[key] = digest
                _CACHE_STATE["dirty"] = True
    if digest != entry.sha256:
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


#: Columns holding a class index, checked to lie in [0, number of the run's classes); and unit/layer indices,
#: checked to be non-negative. A run whose values fall outside names classes it does not have.
CLASS_COLUMNS = ("class", "label", "pred", "pred_ablated", "pref_class")
INDEX_COLUMNS = ("unit", "layer_index")


def _class_count(path: Path) -> int:
    """The number of classes the run's one ``runs`` row names (at least two: the atlas compares classes)."""
    table = pq.read_table(path / "runs.parquet", columns=["class_names"])
    if table.num_rows != 1:
        raise BrokenRun(f"its runs table has {table.num_rows} rows, not one")
    names = table.column(0)[0].as_py() or []
    if len(names) < 2:
        raise BrokenRun(f"its runs table names {len(names)} class(es); a run compares at least two")
    return len(names)


def _column_range(path: Path, name: str, meta: pq.FileMetaData, column: str) -> tuple[Any, Any] | None:
    """(min, max) of a column over the non-null values: from the footer's statistics, else the column."""
    i = meta.schema.to_arrow_schema().get_field_index(column)
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(i).statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == meta.row_group(g).num_rows:
                continue
            values = pq.read_table(path / f"{name}.parquet", columns=[column]).column(0)
            low, high = pa.compute.min_max(values).values()
            return (low.as_py(), high.as_py()) if low.is_valid else None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


#: Manifests (``file_key``) whose run passed ``_check_contents``: its files were just verified against the
#: manifest's hashes, so an unchanged manifest means unchanged values (the checks take ~0.1 s at 1M units).
_CONTENTS_CHECKED: set[FileKey] = set()


def _check_contents(path: Path) -> None:
    """What the hashes cannot vouch for (a run's files may be consistent and still wrong): its units are
    those its layers list, and its values name only classes and units it has."""
    key = file_key(path / MANIFEST)
    if key in _CONTENTS_CHECKED:
        return
    n_classes = _class_count(path)
    footers = {name: pq.read_metadata(path / f"{name}.parquet") for name in TABLES}
    _check_nulls(path, footers)  # the footers' statistics first: no column read
    _check_value_ranges(path, n_classes, footers)
    _check_unit_grid(path, n_classes)
    _CONTENTS_CHECKED.add(key)


def _check_unit_grid(path: Path, n_classes: int) -> None:
    """At least one layer, each named once with n_units >= 1 and its own layer_index; ``units`` holds units 0 to
    n_units - 1 of each listed layer, once each, with the layer's layer_index, and nothing else; ``unit_classes``
    one row per unit and class (the pages and the in-memory copy of ``units`` rely on both). One counting pass
    over the units: ~0.1 s at 1M units."""
    layers = pq.read_table(path / "layers.parquet", columns=["layer", "n_units", "layer_index"])
    if layers.num_rows == 0:
        raise BrokenRun("its layers table is empty; a run probes at least one layer")
    sizes = dict(zip(layers["layer"].to_pylist(), layers["n_units"].to_pylist()))
    if len(sizes) != layers.num_rows or None in sizes or any(n is None or n < 1 for n in sizes.values()):
        raise BrokenRun("its layers table names a layer twice, names none, or gives a layer no units")
    order = dict(zip(layers["layer"].to_pylist(), layers["layer_index"].to_pylist()))
    if len(set(order.values())) != len(order):  # a unit is keyed by (layer_index, unit) in memory
        raise BrokenRun("its layers table gives two layers the same layer_index; each layer has its own position")
    units = pq.read_table(path / "units.parquet", columns=["layer", "unit", "layer_index"])
    total = sum(sizes.values())
    if total != units.num_rows:  # also bounds the count below by the file's own rows
        raise BrokenRun(f"table units has {units.num_rows:,} rows; its layers table lists {total:,} units, each "
                        f"held once")
    encoded = pa.compute.dictionary_encode(units["layer"]).combine_chunks()
    names = encoded.dictionary.to_pylist()
    ghost = next((name for name in names if name not in sizes), None)
    if ghost is not None:
        raise BrokenRun(f"table units holds units of layer {ghost!r}, which its layers table does not list")
    which = encoded.indices.to_numpy(zero_copy_only=False)
    unit = units["unit"].to_numpy()
    wrong = np.flatnonzero(units["layer_index"].to_numpy() != np.array([order[n] for n in names])[which])
    if wrong.size:
        i = wrong[0]
        raise BrokenRun(f"table units gives layer {names[which[i]]!r} layer_index {units['layer_index'][i].as_py()}, "
                        f"its layers table {order[names[which[i]]]}")
    size = np.array([sizes[name] for name in names], dtype=np.int64)[which]
    outside = np.flatnonzero((unit < 0) | (unit >= size))
    if outside.size:
        i = outside[0]
        raise BrokenRun(f"table units holds unit {unit[i]} of layer {names[which[i]]!r}, which has units 0 to "
                        f"{size[i] - 1}")
    starts = dict(zip(sizes, np.cumsum([0, *sizes.values()])))
    seen = np.bincount(np.array([starts[name] for name in names], dtype=np.int64)[which] + unit, minlength=total)
    twice = np.flatnonzero(seen > 1)  # as many rows as units, all in range: a unit missing means one held twice
    if twice.size:
        layer = next(name for name in reversed(sizes) if starts[name] <= twice[0])
        raise BrokenRun(f"table units holds unit {twice[0] - starts[layer]} of layer {layer!r} twice or more; a run "
                        f"holds each unit its layers table lists once")
    grid = pq.read_metadata(path / "unit_classes.parquet").num_rows
    if grid != units.num_rows * n_classes:
        raise BrokenRun(f"table unit_classes has {grid:,} rows, not one per unit and class ({units.num_rows:,} x "
                        f"{n_classes})")


def _check_value_ranges(path: Path, n_classes: int, footers: dict[str, pq.FileMetaData]) -> None:
    """Class indices within the run's classes, unit and layer indices non-negative (footers' statistics)."""
    for name, table in TABLES.items():
        for col in table.columns:
            if col.name in CLASS_COLUMNS or col.name in INDEX_COLUMNS:
                span = _column_range(path, name, footers[name], col.name)
                hi = n_classes - 1 if col.name in CLASS_COLUMNS else None
                if span is not None and (span[0] < 0 or (hi is not None and span[1] > hi)):
                    allowed = f"0 to {hi}" if hi is not None else "0 or more"
                    raise BrokenRun(f"table {name} holds {col.name} values from {span[0]} to {span[1]}; the run's "
                                    f"are {allowed}")


def _check_nulls(path: Path, footers: dict[str, pq.FileMetaData]) -> None:
    """No null where the schema has none (``Column.nullable``): the pages read such values as numbers and
    flags. From the footers' null counts; a row group without them has its column read."""
    for name, table in TABLES.items():
        meta = footers[name]
        fields = meta.schema.to_arrow_schema()
        for col in table.columns:
            if col.nullable:
                continue
            i = fields.get_field_index(col.name)
            nulls = 0
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(i).statistics
                if stats is None or not stats.has_null_count:
                    nulls = pq.read_table(path / f"{name}.parquet", columns=[col.name]).column(0).null_count
                    break
                nulls += stats.null_count
            if nulls:
                raise BrokenRun(f"table {name} holds {nulls:,} null value(s) in column {col.name}, which a run never "
                                f"leaves empty")


def _check_real_folder(path: Path) -> None:
    """A run is a real folder inside ``runs/``: a link (to a folder elsewhere) is not followed, since the
    readers' file access is limited to ``runs/``."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise BrokenRun(f"the run folder is a symbolic link (to {os.readlink(path)}); a run must be a real folder "
                        f"inside runs/: move the folder there instead of linking it")
    if not stat.S_ISDIR(st.st_mode):
        raise BrokenRun("it is not a folder")


def inspect_run(path: Path) -> RunInfo:
    """One run folder validated on its own: whatever is wrong becomes its ``error``, never an exception."""
    manifest = None
    try:
        _check_real_folder(path)
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
                            f"{SCHEMA_VERSION} (firing and specialization, sequential ablation, flips' predictions, any activation; version 5: specialization weighted by removal cost); recompute it with "
                            f"`python -m compute run --run-id {path.name} ...` after removing the folder")
        for name in TABLES:  # the most specific reasons first: a missing, unreadable or foreign table
            if f"{name}.parquet" not in manifest.files:
                raise BrokenRun(f"table {name} is missing ({name}.parquet is not in the manifest)")
            _check_table(path, name, manifest.run_id)
        for name, entry in manifest.files.items():  # then every byte: mid-file damage, files swapped
            _check_file(path / name, entry)
        _check_contents(path)  # then contents that contradict each other or name what the run does not have
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
    if not checked_folder(runs_dir, "the runs folder"):
        return []
    try:
        with os.scandir(runs_dir) as it:
            entries = sorted((e for e in it if e.is_symlink() or e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    except OSError as e:
        raise WarehouseError(f"cannot list the runs in {runs_dir}: {e.strerror or e}. Check its permissions.") from e
    runs = [inspect_run(Path(e.path)) for e in entries]
    _save_verifications()
    return runs
