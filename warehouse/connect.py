"""A DuckDB connection with one view per warehouse table over the published runs' Parquet files.

Tables are read by DuckDB's own Parquet reader (about 2-7x faster than handing it pyarrow
datasets, benchmarks/dashboard_queries.py). File access is then limited to the runs folder with
``allowed_directories``, everything else external is off (no ``read_csv('/etc/passwd')``,
``ATTACH``, ``INSTALL``) and the configuration is locked.

``units`` is the one table the explorer scans whole on every interaction, so it is copied into
DuckDB's memory (table ``units_in_memory``; ``units`` is then a view of its schema columns) as
long as the warehouse has at most ``MEMORY_UNITS`` units. Beside each unit the copy keeps its
per-class anomalies (``class_anomaly``, a list indexed by class), so the "high gradient, low
activation" preset names its classes without scanning ``unit_classes`` (read by position from the
files, see ``_with_class_anomaly``; the runs whose files are so laid out are listed in the table
``class_grids`` and registered with ``warehouse.class_values``, which keeps their per-class values as
numpy arrays for class-level conditions). Per million units this takes about 270 MB (and 80 MB for the anomalies' array); the per-class and per-epoch tables, ten to hundreds of times larger,
stay on disk, where one unit's rows are found through the row groups' statistics.

With ``background=True`` (the dashboard) the copy is made in a thread: ``units`` is first a view of
the Parquet files, so the first page does not wait for the copy (seconds per million units), and
becomes the in-memory copy once it is complete. The queries ask for the copy on every call
(``has_units_in_memory``), so each is answered from whichever is there, with the same rows. The thread
then reads the per-class metrics named by ``warm`` into ``warehouse.class_values`` (the dashboard's
presets' and defaults'), so that their first class-level condition is not a Parquet read.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from warehouse import class_values
from warehouse.schema import TABLES
from warehouse.layout import RUNS_DIR, default_path
from warehouse.validate import file_key, list_runs

#: Largest number of units held in memory (about 0.55 GB); above it ``units`` is read from Parquet too.
MEMORY_UNITS = 2_000_000
#: The in-memory copy of ``units`` with the extra columns ``class_anomaly`` and ``unit_key``.
UNITS_IN_MEMORY = "units_in_memory"
#: ``unit_key`` is layer_index * 2**UNIT_KEY_SHIFT + unit, one integer per unit of a run: DuckDB pushes a
#: join on one integer key into the scan (a Bloom filter), so joining the few units of a class-level
#: condition reads about half as much of the in-memory ``units`` as a join on (layer_index, unit).
UNIT_KEY_SHIFT = 32


def unit_key(layer_index: str, unit: str) -> str:
    """``unit_key`` in SQL, of the columns named."""
    return f"({layer_index}::BIGINT << {UNIT_KEY_SHIFT}) + {unit}"


def connect(root: Path | str | None = None, memory_units: int = MEMORY_UNITS, *,
            background: bool = False, warm: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB database with ``runs``, ``layers``, ``units``, ... over the complete runs.

    Broken runs (see ``list_runs``) are left out. The tables are part of the database, so
    ``con.cursor()`` gives further connections to it, one per thread, sharing the in-memory copy.
    ``background``: copy ``units`` into memory in a thread, answering from Parquet meanwhile (see the
    module's docstring); ``wait_for_units`` waits for it. ``warm``: per-class metrics (columns of
    ``unit_classes``) read into ``warehouse.class_values`` once ``units`` is in memory (``class_values.warm``),
    so that their first class-level condition or rank is a numpy pass.
    """
    root = (Path(root) if root is not None else default_path()).resolve()
    runs = [r for r in list_runs(root) if r.ok]
    files = {name: [str(r.path / f"{name}.parquet") for r in runs] for name in TABLES}
    con = duckdb.connect(":memory:")
    in_memory = bool(runs) and _count(con, files["units"]) <= memory_units
    for name, table in TABLES.items():
        if not runs:
            con.from_arrow(table.arrow_schema.empty_table()).create(name)
        elif name == "units" and in_memory and not background:
            _units_in_memory(con, files["units"], files["unit_classes"], warm)
        else:
            con.read_parquet(files[name]).create_view(name)
    con.execute("SET allowed_directories = ?", [[str(root / RUNS_DIR) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    if in_memory and background:
        copy = threading.Thread(target=_units_in_memory_later, args=(con.cursor(), files["units"], files["unit_classes"], warm),
                                name="units-into-memory", daemon=True)
        _COPIES[id(con)] = copy
        copy.start()
    return con


#: The thread copying ``units`` into memory, per connection made with ``background`` (by id).
_COPIES: dict[int, threading.Thread] = {}


def wait_for_units(con: duckdb.DuckDBPyConnection, timeout: float | None = None) -> bool:
    """Wait until ``con``'s background copy of ``units`` (and the metrics it warms) is complete (or failed);
    whether ``units`` is in memory."""
    copy = _COPIES.get(id(con))
    if copy is not None:
        copy.join(timeout)
    return has_units_in_memory(con)


def _units_in_memory_later(cursor: duckdb.DuckDBPyConnection, units: list[str], classes: list[str],
                           warm: tuple[str, ...]) -> None:
    """``_units_in_memory`` on a cursor of its own, in a thread; on any failure (the database closed,
    a file replaced meanwhile) ``units`` stays the Parquet view, which answers the same."""
    try:
        _units_in_memory(cursor, units, classes, warm)
    except (duckdb.Error, OSError, pa.ArrowException):
        pass
    finally:
        try:
            cursor.close()
        except duckdb.Error:
            pass


def _units_in_memory(con: duckdb.DuckDBPyConnection, units: list[str], classes: list[str],
                     warm: tuple[str, ...] = ()) -> None:
    # unit_classes holds one row per class of every unit (the compute step writes the full grid), so
    # position k + 1 of the class-ordered list is class k. Sorted like the files, so that zone maps
    # still skip other layers.
    by_position = [_with_class_anomaly(u, c) for u, c in zip(units, classes)]
    grids = [(t["run_id"][0].as_py(), c) for t, c in zip(by_position, classes) if t is not None and t.num_rows]
    con.register("_class_grids", class_values.grid_table(grids))
    con.execute(f"CREATE OR REPLACE TABLE {class_values.CLASS_GRIDS} AS SELECT * FROM _class_grids")
    con.unregister("_class_grids")
    if all(t is not None for t in by_position):
        con.register("_units_by_position", pa.concat_tables(by_position))  # type: ignore[arg-type]
        con.execute(f"CREATE TABLE {UNITS_IN_MEMORY} AS SELECT *, {unit_key('u.layer_index', 'u.unit')} AS unit_key "
                    "FROM _units_by_position u ORDER BY run_id, layer_index, unit")
        con.unregister("_units_by_position")
    else:
        _units_in_memory_grouped(con, units, classes)
    columns = ", ".join(f'"{c.name}"' for c in TABLES["units"].columns)
    con.execute(f"CREATE OR REPLACE VIEW units AS SELECT {columns} FROM {UNITS_IN_MEMORY}")
    class_values.warm(con, warm)


def _with_class_anomaly(units_file: str, classes_file: str) -> pa.Table | None:
    """One run's ``units`` with ``class_anomaly`` read by position: the compute step writes
    ``unit_classes`` as the full (unit, class) grid in the row order of ``units``, so row i * K + k is
    unit i's class k. Reading one column so is about four times faster than grouping ten million rows
    in SQL, which is most of the dashboard's cold start. None when the files are not laid out so.
    A grid so checked is registered with ``warehouse.class_values``, its anomalies kept there."""
    key = file_key(classes_file)
    table = pq.read_table(units_file)
    grid = pq.read_table(classes_file, columns=["layer", "unit", "class", "anomaly"])
    n = table.num_rows
    if n == 0 or grid.num_rows == 0 or grid.num_rows % n:
        return None
    k = grid.num_rows // n
    unit = grid["unit"].to_numpy().reshape(n, k)
    cls = grid["class"].to_numpy().reshape(n, k)
    firsts = pa.array(np.arange(0, n * k, k))
    if not (np.array_equal(unit, np.repeat(table["unit"].to_numpy()[:, None], k, 1))
            and np.array_equal(cls, np.broadcast_to(np.arange(k), (n, k)))
            and grid["layer"].take(firsts).equals(table["layer"])
            and grid["layer"].take(pa.compute.add(firsts, k - 1)).equals(table["layer"])):
        return None
    anomaly = grid["anomaly"].combine_chunks()
    class_values.remember_grid(key, table["layer"], table["layer_index"].to_numpy(), table["unit"].to_numpy(), k,
                               anomaly)
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), anomaly)
    return table.append_column("class_anomaly", lists)


def _units_in_memory_grouped(con: duckdb.DuckDBPyConnection, units: list[str], classes: list[str]) -> None:
    con.execute(
        f"CREATE TABLE {UNITS_IN_MEMORY} AS SELECT u.*, a.class_anomaly, {unit_key('u.layer_index', 'u.unit')} AS unit_key "
        "FROM read_parquet(?) u LEFT JOIN "
        "(SELECT run_id, layer, unit, list(anomaly ORDER BY \"class\") AS class_anomaly FROM read_parquet(?) "
        "GROUP BY run_id, layer, unit) a ON a.run_id = u.run_id AND a.layer = u.layer AND a.unit = u.unit "
        "ORDER BY u.run_id, u.layer_index, u.unit", [units, classes])


def has_units_in_memory(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s database holds ``units_in_memory`` (see ``connect``)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                            [UNITS_IN_MEMORY]).fetchall()[0][0])


def _count(con: duckdb.DuckDBPyConnection, files: list[str]) -> int:
    """Rows in ``files`` from their footers, without reading data."""
    return int(con.execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)", [files]).fetchall()[0][0])
