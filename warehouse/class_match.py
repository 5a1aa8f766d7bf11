"""Class-level conditions answered once per connection: the units they match, kept in a temporary table.

A filter with class-level conditions needs ``unit_classes`` (ten times ``units``, read from Parquet),
and the explorer asks the same filter for its count, its first rows, its facets, its scatter and its
dead units, on every rerun. The units it matches (layer, unit, the matching classes) are few beside
``unit_classes``: they are computed once per connection and conditions into a temporary table (a
DuckDB connection's own, so sessions do not share or race on it) that every later query joins. The
last ``MAX_TABLES`` condition sets are kept per connection.

With ``units`` in memory the matches come from the per-class values in memory
(``warehouse.class_values``, a numpy pass) instead of a scan of ``unit_classes``: the same rows.
"""

from __future__ import annotations

import hashlib
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from warehouse import class_values
from warehouse.connect import UNIT_KEY_SHIFT, has_units_in_memory
from warehouse.filters import (CLASS_METRICS, FIELD, UNIT_COLUMNS, Compare, OneOf, UnitFilter, class_match_sql,
                               filter_sql, needs_class_scan)
from warehouse.schema import TABLES

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
        matches = _matches_in_memory(con, f) if memory else None
        if matches is None:
            con.execute(f"CREATE TEMP TABLE {name} AS {sql}", params)
        else:
            con.register("_class_matches", matches)
            try:
                con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _class_matches")
            finally:
                con.unregister("_class_matches")
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


#: ``class_match_sql``'s columns: (layer_index, unit, matched classes, class-ordered).
_MATCHES = pa.schema([("layer_index", TABLES["layers"].arrow_schema.field("layer_index").type),
                      ("unit", TABLES["unit_classes"].arrow_schema.field("unit").type),
                      ("matched", pa.list_(TABLES["unit_classes"].arrow_schema.field("class").type)),
                      ("unit_key", pa.int64())])


def _matches_in_memory(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> pa.Table | None:
    """``class_match_sql(f)``'s rows from the run's per-class values in memory; None when its grid is not
    registered (then SQL answers). The clauses are ``f``'s own (``Field.class_sql``), each applied as DuckDB
    would: layer names, the class, the metric ranges."""
    grid = class_values.grid(con, f.run_id)
    if grid is None:
        return None
    k = grid.n_classes
    layers: list[int] | None = None
    classes = slice(0, k)  # the classes' columns the conditions are asked of
    ranges: list[Compare] = []
    for fld in ("layers", "condition_class", "class_conditions"):
        for clause in FIELD[fld].class_sql(getattr(f, fld)):  # type: ignore[misc]
            if isinstance(clause, OneOf) and clause.column == "layer":
                layers = [grid.layers[n] for n in clause.values if n in grid.layers]
            elif isinstance(clause, Compare) and clause.column == "class":
                c = int(clause.value)
                classes = slice(c, c + 1) if 0 <= c < k else slice(0, 0)
            elif isinstance(clause, Compare) and clause.column in CLASS_METRICS and clause.op in (">=", "<="):
                ranges.append(clause)
            else:
                return None  # a clause this pass does not know: SQL answers
    width = len(range(k)[classes])
    mask = np.ones((len(grid.unit), width), dtype=bool)
    for clause in ranges:
        v = class_values.values(grid, clause.column)
        np.logical_and(mask, class_values.meets(v, clause.op, clause.value, classes), out=mask)
    flat = np.flatnonzero(mask)  # row-major: by unit, then class
    unit_row, cls = flat // max(width, 1), (flat % max(width, 1) + classes.start).astype(np.int32)
    if layers is not None:
        keep = np.isin(grid.layer_index[unit_row], layers)
        unit_row, cls = unit_row[keep], cls[keep]
    hit, first = np.unique(unit_row, return_index=True)  # sorted: each unit's classes are consecutive
    offsets = np.append(first, len(unit_row)).astype(np.int32)
    key = (grid.layer_index[hit].astype(np.int64) << UNIT_KEY_SHIFT) + grid.unit[hit]
    return pa.table([pa.array(grid.layer_index[hit]), pa.array(grid.unit[hit]),
                     pa.ListArray.from_arrays(pa.array(offsets), pa.array(cls)), pa.array(key)], schema=_MATCHES)
