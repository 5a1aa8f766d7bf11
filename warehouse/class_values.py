"""Per-class values of a run held in memory as numpy arrays, for class-level conditions and per-class ranks.

A class-level condition ("some class with anomaly >= 1 and grad_mean >= 0", "for class 3") or a rank
by one class's value needs ``unit_classes``, ten rows per unit: about 150-350 ms per ask at a
million units through DuckDB's Parquet reader, most of it reading and joining ten million rows.
When ``units`` is copied into memory (``warehouse.connect``), the copy already checks that a run's
``unit_classes`` file is the full (unit, class) grid in the row order of its ``units`` file and reads
its ``anomaly`` column by position. It then registers the run's grid here (``remember_grid``): its
units' (layer_index, unit) and its number of classes. A metric's values are read once from the file
as an (units x classes) array, in the type stored (float64: values compare exactly as in DuckDB);
every later condition or rank on them is a numpy pass (tens of ms) whose result, a few units,
DuckDB joins with the rest of the filter.

The results are DuckDB's, row for row: a comparison follows its rules (NaN is above every number,
so ``NaN >= lo`` holds and ``NaN <= hi`` does not; a null compares false), and the final order and
limit are DuckDB's ``ORDER BY``. ``sql_path()`` turns this off, which the tests and the benchmark use
as the reference.

Grids are found by a database table, ``class_grids`` (run_id, file), and kept process-wide by the
file's identity (path, device, inode, size, mtime, ctime: any write changes ctime), so a replaced
or rewritten file is never answered from an old array.
Arrays are kept up to ``MAX_BYTES`` in all (about 80 MB per metric per million units, ten classes),
least recently used dropped first.

A column is read into one preallocated array a few row groups at a time (``_read``): one copy, through
Arrow buffers of a few MB that its pool reuses, about 100 ms per metric at a million units. ``warm``
reads the metrics a caller expects to be asked (the dashboard: its presets' and defaults') ahead of
the first ask, in the thread that copies ``units``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.validate import FileKey, file_key

#: Most bytes of per-class arrays kept in the process (about six metrics at a million units).
MAX_BYTES = 512 * 2**20
#: Table of the database (run_id, file) naming each run's ``unit_classes`` file registered here.
CLASS_GRIDS = "class_grids"
#: Grids kept (their keys are small; their arrays count toward ``MAX_BYTES``).
MAX_GRIDS = 16


@dataclass
class Values:
    """One metric of a grid: (units x classes) values as stored, and where they are not null (None: all)."""

    values: np.ndarray
    valid: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.valid is None else self.valid.nbytes)


@dataclass
class Grid:
    """A run's ``unit_classes`` file known to be the full (unit, class) grid in its ``units`` row order."""

    file: str
    layer_index: np.ndarray  # int32, per unit (row of the grid)
    unit: np.ndarray  # int32, per unit
    layers: dict[str, int]  # layer name -> layer_index
    n_classes: int
    metrics: dict[str, Values] = field(default_factory=dict)
    tops: dict[tuple, tuple[np.ndarray, bool]] = field(default_factory=dict)  # see ``top``


_lock = threading.Lock()
_grids: OrderedDict[FileKey, Grid] = OrderedDict()
_used: OrderedDict[tuple[FileKey, str], int] = OrderedDict()  # (grid, metric) -> bytes, least recent first
_reading: dict[tuple[FileKey, str], threading.Lock] = {}  # (grid, metric) being read by ``values``
_enabled = True


def remember_grid(key: FileKey, layer: pa.Array | pa.ChunkedArray, layer_index: np.ndarray, unit: np.ndarray,
                  n_classes: int, anomaly: pa.Array | pa.ChunkedArray | None = None) -> None:
    """Register a checked grid (``key`` taken before its file was read); ``anomaly``, already read, is kept.
    A grid already registered under ``key`` (the same file, opened again) is kept with its arrays."""
    with _lock:
        known = _grids.get(key)
        if known is not None:
            _grids.move_to_end(key)
            if anomaly is not None and "anomaly" not in known.metrics:
                _keep(key, known, "anomaly", _values(anomaly, len(unit), n_classes))
            return
    names = pa.chunked_array([layer]) if isinstance(layer, pa.Array) else layer
    pairs = pa.table({"l": names, "i": pa.array(layer_index)}).group_by(["l", "i"]).aggregate([]).to_pydict()
    grid = Grid(key[0], np.asarray(layer_index, dtype=np.int32), np.asarray(unit, dtype=np.int32),
                dict(zip(pairs["l"], pairs["i"])), n_classes)
    with _lock:
        _grids[key] = grid
        _grids.move_to_end(key)
        while len(_grids) > MAX_GRIDS:
            old, _ = _grids.popitem(last=False)
            for k in [k for k in _used if k[0] == old]:
                del _used[k]
        if anomaly is not None:
            _keep(key, grid, "anomaly", _values(anomaly, len(unit), n_classes))


def grid_table(rows: list[tuple[str, str]]) -> pa.Table:
    """The ``class_grids`` table's rows: (run_id, file)."""
    return pa.table({"run_id": pa.array([r for r, _ in rows], pa.string()),
                     "file": pa.array([f for _, f in rows], pa.string())})


class _Filler:
    """Values of ``n`` x ``k`` rows of one type, filled chunk by chunk in row order: each chunk copied once
    into the final array, nulls as a validity mask (made at the first null; their values 0)."""

    def __init__(self, n: int, k: int, type_: pa.DataType) -> None:
        self.n, self.k = n, k
        self.values = np.empty(n * k, dtype=type_.to_pandas_dtype())
        self.valid: np.ndarray | None = None
        self.at = 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
            end = self.at + len(chunk)
            if end > len(self.values):
                raise ValueError(f"more than {self.n} x {self.k} values")
            if chunk.null_count:
                if self.valid is None:
                    self.valid = np.ones(len(self.values), dtype=bool)
                self.valid[self.at:end] = chunk.is_valid().to_numpy(zero_copy_only=False)
                chunk = chunk.fill_null(0)
            self.values[self.at:end] = chunk.to_numpy(zero_copy_only=False)
            self.at = end

    def done(self) -> Values:
        if self.at != len(self.values):
            raise ValueError(f"{self.at} values where {self.n} x {self.k} were expected")
        return Values(self.values.reshape(self.n, self.k),
                      None if self.valid is None else self.valid.reshape(self.n, self.k))


def _values(column: pa.Array | pa.ChunkedArray, n: int, k: int) -> Values:
    """A column already read, copied into numpy's memory (so that Arrow's buffers can go)."""
    filler = _Filler(n, k, column.type)
    filler.add(column)
    return filler.done()


#: Rows read from Parquet per step of ``_read`` (a few row groups: 2 MB of float64).
READ_ROWS = 2**18


def _read(file: str, metric: str, n: int, k: int) -> Values:
    """``metric``'s column of ``file`` as (n x k) values, read a few row groups at a time into the final array.

    Reading the whole column and then copying it costs a second copy and, at a million units, an 80 MB
    Arrow buffer whose fresh pages fault in: 140 to 440 ms per metric against about 100 ms here."""
    source = pq.ParquetFile(file)
    meta = source.metadata
    if meta.num_rows != n * k:
        raise ValueError(f"{file} has {meta.num_rows} rows where {n} x {k} were expected")
    filler = _Filler(n, k, source.schema_arrow.field(metric).type)
    step: list[int] = []
    rows = 0
    for g in range(meta.num_row_groups):
        step.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= READ_ROWS or g == meta.num_row_groups - 1:
            filler.add(source.read_row_groups(step, columns=[metric])[metric])
            step, rows = [], 0
    return filler.done()


def _keep(key: FileKey, grid: Grid, metric: str, values: Values) -> None:
    grid.metrics[metric] = values
    _used[(key, metric)] = values.nbytes
    _used.move_to_end((key, metric))
    while sum(_used.values()) > MAX_BYTES and len(_used) > 1:
        (old, name), _ = _used.popitem(last=False)
        if old in _grids:
            _grids[old].metrics.pop(name, None)


def grid(con: duckdb.DuckDBPyConnection, run_id: str) -> Grid | None:
    """``run_id``'s registered grid in ``con``'s database, if its file is unchanged (else None: ask SQL)."""
    if not _enabled:
        return None
    try:
        rows = con.execute(f"SELECT file FROM {CLASS_GRIDS} WHERE run_id = ?", [run_id]).fetchall()
    except duckdb.CatalogException:
        return None
    if len(rows) != 1:
        return None
    try:
        key = file_key(rows[0][0])
    except OSError:
        return None
    with _lock:
        return _grids.get(key)


def _kept(key: FileKey, g: Grid, metric: str) -> Values | None:
    with _lock:
        if metric in g.metrics and (key, metric) in _used:
            _used.move_to_end((key, metric))
            return g.metrics[metric]
    return None


def values(g: Grid, metric: str) -> Values:
    """``metric``'s values of grid ``g``, read from its file on first use (one reader at a time per metric:
    an ask while ``warm`` reads it waits for that read)."""
    key = file_key(g.file)
    got = _kept(key, g, metric)
    if got is not None:
        return got
    with _lock:
        reading = _reading.setdefault((key, metric), threading.Lock())
    with reading:
        got = _kept(key, g, metric)
        if got is None:
            got = _read(g.file, metric, len(g.unit), g.n_classes)
            with _lock:
                if _grids.get(key) is g:
                    _keep(key, g, metric, got)
    with _lock:
        _reading.pop((key, metric), None)
    return got


def warm(con: duckdb.DuckDBPyConnection, metrics: tuple[str, ...]) -> int:
    """Read ``metrics`` of each grid registered for ``con``'s database (its runs in name order) ahead of their
    first use, while they fit in ``MAX_BYTES`` beside the arrays held (none is dropped for them: each counted
    with a validity mask, which it has if its column holds nulls); the number of arrays read."""
    read = 0
    for (file,) in con.execute(f"SELECT file FROM {CLASS_GRIDS} ORDER BY run_id").fetchall():
        try:
            key = file_key(file)
        except OSError:
            continue
        with _lock:
            g = _grids.get(key)
        if g is None:
            continue
        schema = pq.read_schema(file)
        for metric in metrics:
            if schema.get_field_index(metric) < 0:
                continue
            with _lock:
                held = metric in g.metrics
            if not held:
                if nbytes() + len(g.unit) * g.n_classes * (schema.field(metric).type.byte_width + 1) > MAX_BYTES:
                    break
                try:
                    values(g, metric)
                except (OSError, ValueError, pa.ArrowException):
                    break  # the file replaced meanwhile: its first use reads it again (or asks SQL)
                read += 1
    return read


#: Candidate lists kept per grid by ``top`` (a few KB each).
MAX_TOPS = 64


def top(g: Grid, metric: str, cls: int, layers: tuple[int, ...] | None, take: int) -> tuple[np.ndarray, bool]:
    """Rows of ``g`` whose ``metric`` for class ``cls`` is a number among its ``take`` largest (every row tied
    with the last included), within ``layers`` (layer indexes; None: all), and whether that is every row with
    a number. Kept per grid (the file's values do not change): a rank by one class asks the same candidates
    whatever the rest of the filter."""
    key = (metric, cls, layers, take)
    with _lock:
        kept = g.tops.get(key)
    if kept is not None:
        return kept
    v = values(g, metric)
    numbers = np.flatnonzero(is_number(v, cls))
    if layers is not None:
        numbers = numbers[np.isin(g.layer_index[numbers], layers)]
    column = v.values[:, cls]
    rows = numbers
    if take < len(numbers):
        kth = np.partition(column[numbers], len(numbers) - take)[len(numbers) - take]  # the take-th largest
        rows = numbers[column[numbers] >= kth]
    with _lock:
        g.tops[key] = rows, len(rows) == len(numbers)
        while len(g.tops) > MAX_TOPS:
            del g.tops[next(iter(g.tops))]
    return rows, len(rows) == len(numbers)


def forget_values() -> None:
    """Drop every metric's array and candidate list (the next use reads its column again); the grids stay."""
    with _lock:
        for g in _grids.values():
            g.metrics.clear()
            g.tops.clear()
        _used.clear()


@contextmanager
def sql_path() -> Iterator[None]:
    """Answer from ``unit_classes`` through SQL meanwhile (the reference; not thread-safe: tests, benchmarks)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def meets(v: Values, op: str, bound: float, classes: slice | int | None = None) -> np.ndarray:
    """Where ``v`` (or its ``classes`` columns) meets ``op bound`` as DuckDB compares: NaN is above every number."""
    x = v.values if classes is None else v.values[:, classes]
    if op == ">=":
        out = np.less(x, bound)  # NaN < bound is false, so NaN >= bound holds, as in DuckDB
        np.logical_not(out, out=out)
    elif op == "<=":
        out = x <= bound
    else:
        raise ValueError(f"unknown comparison {op!r}")
    if v.valid is not None:
        out &= v.valid if classes is None else v.valid[:, classes]
    return out


def is_number(v: Values, cls: int) -> np.ndarray:
    """Where column ``cls`` of ``v`` is neither null nor NaN (``NOT isnan(x)`` in DuckDB)."""
    x = v.values[:, cls]
    out = ~np.isnan(x) if x.dtype.kind == "f" else np.ones(len(x), dtype=bool)
    if v.valid is not None:
        out &= v.valid[:, cls]
    return out


def nbytes() -> int:
    """Bytes of per-class arrays held now."""
    with _lock:
        return sum(_used.values())
