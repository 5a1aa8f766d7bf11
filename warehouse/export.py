"""Exactly the filtered units as CSV or Parquet bytes, for the dashboard's downloads and the CLI."""

from __future__ import annotations

import io

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from warehouse.queries import UnitFilter, filter_units_arrow

FORMATS = ("csv", "parquet")
MIME = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def _flat(table: pa.Table) -> pa.Table:
    """List columns (``matched_classes``) joined with ';' so CSV can hold them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            table = table.set_column(i, f.name, pc.binary_join(table.column(i), ";"))
    return table


def table_bytes(table: pa.Table, fmt: str) -> bytes:
    """``table`` as a CSV (header row, list columns ';'-joined) or Parquet (zstd) file."""
    buf = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(_flat(table), buf)
    elif fmt == "parquet":
        pq.write_table(table, buf, compression="zstd")
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    return buf.getvalue()


def export_units(con: duckdb.DuckDBPyConnection, f: UnitFilter, fmt: str) -> bytes:
    """The units matching ``f`` (the same rows and order the explorer shows) as file bytes."""
    return table_bytes(filter_units_arrow(con, f), fmt)
