"""Class-level conditions answered once per connection: the units they match, kept in a temporary table.

A filter with class-level conditions needs ``unit_classes`` (ten times ``units``, read from Parquet),
and the explorer asks the same filter for its count, its first rows, its facets, its scatter and its
dead units, on every rerun. The units it matches (layer, unit, the matching classes) are few beside
``unit_classes``: they are computed once per connection and conditions into a temporary table (a
DuckDB connection's own, so sessions do not share or race on it) that every later query joins. The
last ``MAX_TABLES`` condition sets are kept per connection.
"""

from __future__ import annotations

import hashlib
from typing import Any

import duckdb

from warehouse.connect import has_units_in_memory
from warehouse.filters import UNIT_COLUMNS, UnitFilter, class_match_sql, filter_sql, needs_class_scan

MAX_TABLES = 8
_made: dict[int, list[str]] = {}  # per connection (by id), its tables, oldest first


def class_table(con: duckdb.DuckDBPyConnection, f: UnitFilter, memory: bool) -> str | None:
    """The temporary table of ``f``'s class-level matches on ``con`` (made now if needed); None when
    ``f`` needs no scan of ``unit_classes``."""
    if not needs_class_scan(f, memory):
        return None
    sql, params = class_match_sql(f)
    name = "class_match_" + hashlib.sha1(repr((sql, params)).encode()).hexdigest()[:24]
    made = _made.setdefault(id(con), [])
    # Asked of the catalog, not of ``made``: a connection that reused a closed one's id has none of its
    # tables. (CREATE ... IF NOT EXISTS AS would run the query again each time.)
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?",
                       [name]).fetchall()[0][0]:
        con.execute(f"CREATE TEMP TABLE {name} AS {sql}", params)
    if name in made:
        made.remove(name)
    made.append(name)
    while len(made) > MAX_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {made.pop(0)}")
    return name


def forget(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the class-level matches kept on ``con`` (the next ask scans ``unit_classes`` again)."""
    for name in _made.pop(id(con), []):
        con.execute(f"DROP TABLE IF EXISTS {name}")


def unit_sql(con: duckdb.DuckDBPyConnection, f: UnitFilter, columns: tuple[str, ...] = UNIT_COLUMNS,
             ordered: bool = True, matches: bool = True) -> tuple[str, list[Any]]:
    """``filter_sql`` for ``con``: with its in-memory units and its table of ``f``'s class-level matches."""
    memory = has_units_in_memory(con)
    return filter_sql(f, columns, ordered=ordered, matches=matches, memory=memory,
                      class_table=class_table(con, f, memory))
