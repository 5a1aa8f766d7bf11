"""A DuckDB connection with one view per warehouse table over the published runs' Parquet files.

The Parquet files are opened by pyarrow and handed to DuckDB as Arrow datasets, so the connection
itself needs no file-system access: it is switched off (no ``read_csv('/etc/passwd')``, ``COPY``,
``ATTACH``, ``INSTALL``) and the configuration is locked. Filters and projections are still pushed
down into the Parquet scans.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.dataset as ds

from warehouse.schema import TABLES
from warehouse.store import default_path, list_runs


def connect(root: Path | str | None = None) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory DuckDB connection with views ``runs``, ``layers``, ``units``, ...

    Broken runs (see ``list_runs``) are left out. Registered views belong to this connection
    only (not to its cursors): open one connection per thread.
    """
    root = Path(root) if root is not None else default_path()
    runs = [r for r in list_runs(root) if r.ok]
    con = duckdb.connect(":memory:")
    for name, table in TABLES.items():
        schema = table.arrow_schema
        files = [str(r.path / f"{name}.parquet") for r in runs]
        data = ds.dataset(files, schema=schema, format="parquet") if files else schema.empty_table()
        con.register(name, data)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con
