"""A DuckDB connection with one view per warehouse table over the published runs' Parquet files.

Tables are read by DuckDB's own Parquet reader (about 2-7x faster than handing it pyarrow
datasets, benchmarks/dashboard_queries.py). File access is then limited to the runs folder with
``allowed_directories``, everything else external is off (no ``read_csv('/etc/passwd')``,
``ATTACH``, ``INSTALL``) and the configuration is locked.

``units`` is the one table the explorer scans whole on every interaction, so it is copied into
DuckDB's memory (table ``units_in_memory``; ``units`` is then a view of its schema columns) as
long as the warehouse has at most ``MEMORY_UNITS`` units. Beside each unit the copy keeps its
per-class anomalies (``class_anomaly``, a list indexed by class), so the "high gradient, low
activation" preset names its classes without scanning ``unit_classes``. Per million units this
takes about 1.2 s and 270 MB; the per-class and per-epoch tables, ten to hundreds of times larger,
stay on disk, where one unit's rows are found through the row groups' statistics.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse.schema import TABLES
from warehouse.layout import RUNS_DIR, default_path
from warehouse.validate import list_runs

#: Largest number of units held in memory (about 0.55 GB); above it ``units`` is read from Parquet too.
MEMORY_UNITS = 2_000_000
#: The in-memory copy of ``units`` with the extra column ``class_anomaly``.
UNITS_IN_MEMORY = "units_in_memory"


def connect(root: Path | str | None = None, memory_units: int = MEMORY_UNITS) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB database with ``runs``, ``layers``, ``units``, ... over the complete runs.

    Broken runs (see ``list_runs``) are left out. The tables are part of the database, so
    ``con.cursor()`` gives further connections to it, one per thread, sharing the in-memory copy.
    """
    root = (Path(root) if root is not None else default_path()).resolve()
    runs = [r for r in list_runs(root) if r.ok]
    files = {name: [str(r.path / f"{name}.parquet") for r in runs] for name in TABLES}
    con = duckdb.connect(":memory:")
    for name, table in TABLES.items():
        if not runs:
            con.from_arrow(table.arrow_schema.empty_table()).create(name)
        elif name == "units" and _count(con, files[name]) <= memory_units:
            _units_in_memory(con, files["units"], files["unit_classes"])
        else:
            con.read_parquet(files[name]).create_view(name)
    con.execute("SET allowed_directories = ?", [[str(root / RUNS_DIR) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _units_in_memory(con: duckdb.DuckDBPyConnection, units: list[str], classes: list[str]) -> None:
    # unit_classes holds one row per class of every unit (the compute step writes the full grid), so
    # position k + 1 of the class-ordered list is class k. Sorted like the files, so that zone maps
    # still skip other layers.
    con.execute(
        f"CREATE TABLE {UNITS_IN_MEMORY} AS SELECT u.*, a.class_anomaly FROM read_parquet(?) u LEFT JOIN "
        "(SELECT run_id, layer, unit, list(anomaly ORDER BY \"class\") AS class_anomaly FROM read_parquet(?) "
        "GROUP BY run_id, layer, unit) a ON a.run_id = u.run_id AND a.layer = u.layer AND a.unit = u.unit "
        "ORDER BY u.run_id, u.layer_index, u.unit", [units, classes])
    columns = ", ".join(f'"{c.name}"' for c in TABLES["units"].columns)
    con.execute(f"CREATE VIEW units AS SELECT {columns} FROM {UNITS_IN_MEMORY}")


def has_units_in_memory(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s database holds ``units_in_memory`` (see ``connect``)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                            [UNITS_IN_MEMORY]).fetchall()[0][0])


def _count(con: duckdb.DuckDBPyConnection, files: list[str]) -> int:
    """Rows in ``files`` from their footers, without reading data."""
    return int(con.execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)", [files]).fetchall()[0][0])
