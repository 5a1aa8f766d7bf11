"""A DuckDB connection with one view per warehouse table over the published runs' Parquet files.

Tables are read by DuckDB's own Parquet reader (about 2-7x faster than handing it pyarrow
datasets, benchmarks/dashboard_queries.py). File access is then limited to the runs folder with
``allowed_directories``, everything else external is off (no ``read_csv('/etc/passwd')``,
``ATTACH``, ``INSTALL``) and the configuration is locked.

``units`` is the one table the explorer scans whole on every interaction, so it is copied into
DuckDB's memory (about 180 bytes per unit, 0.25 s per million units) as long as the warehouse has
at most ``MEMORY_UNITS`` of them; the per-class and per-epoch tables, ten to hundreds of times
larger, stay on disk, where one unit's rows are found through the row groups' statistics.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse.schema import TABLES
from warehouse.store import RUNS_DIR, default_path, list_runs

#: Largest number of units held in memory (about 0.7 GB); above it ``units`` is read from Parquet too.
MEMORY_UNITS = 4_000_000


def connect(root: Path | str | None = None, memory_units: int = MEMORY_UNITS) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB database with ``runs``, ``layers``, ``units``, ... over the complete runs.

    Broken runs (see ``list_runs``) are left out. The tables are part of the database, so
    ``con.cursor()`` gives further connections to it, one per thread, sharing the in-memory copy.
    """
    root = (Path(root) if root is not None else default_path()).resolve()
    runs = [r for r in list_runs(root) if r.ok]
    con = duckdb.connect(":memory:")
    for name, table in TABLES.items():
        files = [str(r.path / f"{name}.parquet") for r in runs]
        if not files:
            con.from_arrow(table.arrow_schema.empty_table()).create(name)
            continue
        data = con.read_parquet(files)
        if name == "units" and _count(con, files) <= memory_units:
            data.create(name)  # keeps the files' (layer, unit) order, so zone maps still prune by layer
        else:
            data.create_view(name)
    con.execute("SET allowed_directories = ?", [[str(root / RUNS_DIR) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _count(con: duckdb.DuckDBPyConnection, files: list[str]) -> int:
    """Rows in ``files`` from their footers, without reading data."""
    return int(con.execute("SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)", [files]).fetchall()[0][0])
