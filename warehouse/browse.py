"""Queries for moving through results: a unit's neighbours in a filter, facet counts, gallery pages.

Each is one SELECT over ``filter_sql``'s result, with every value bound.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import duckdb
import pandas as pd

from warehouse.class_match import unit_sql
from warehouse.filters import UNIT_METRICS, QueryError, UnitFilter, check_column, order_terms
from warehouse.schema import IMAGE_KINDS

#: Columns the explorer counts values of (Datasette's facets), within the current filter.
FACETS: tuple[str, ...] = ("layer", "pref_class_name", "dead")
#: What a gallery tile shows besides its image.
TILE_COLUMNS: tuple[str, ...] = ("layer", "unit", "layer_index", "selectivity", "pref_class_name",
                                 "abl_loss_delta", "anomaly_max", "dead", "specialization_max")


@dataclass(frozen=True)
class Neighbours:
    """Where a unit stands in a filter's order: 1-based ``position`` of ``total``, and the units
    before and after it (None at the ends); ``position`` None when the filter does not hold it."""

    position: int | None
    total: int
    previous: tuple[str, int] | None
    next: tuple[str, int] | None


def neighbours(con: duckdb.DuckDBPyConnection, f: UnitFilter, layer: str, unit: int) -> Neighbours:
    """The unit's position in ``f`` (its order and limit) and the units before and after it.

    Three scans of the filter, no sort: "before" compares each row's (value, layer_index, unit) with
    the unit's in the filter's order (NULLs last; DuckDB orders NaN above every number, as its
    comparisons do), the previous unit is the largest row before, the next the smallest after. A
    window over the whole filter would sort it: about ten times slower at a million units.
    """
    order = check_column(f.order_by, UNIT_METRICS, "sort column")
    cols = tuple(dict.fromkeys(("layer", "unit", "layer_index", order)))
    inner, params = unit_sql(con, f, cols, ordered=False, matches=False)
    cur = con.execute(f'SELECT "{order}", layer_index FROM units WHERE run_id = ? AND layer = ? AND unit = ?',
                      [f.run_id, layer, int(unit)]).fetchall()
    total_sql = f"SELECT count(*) FROM ({inner}) f"
    if not cur:
        return Neighbours(None, int(con.execute(total_sql, params).fetchall()[0][0]), None, None)
    value, layer_index = cur[0]
    tie = "(f.layer_index < ? OR (f.layer_index = ? AND f.unit < ?))"
    tie_args: list[Any] = [layer_index, layer_index, int(unit)]
    if value is None:
        before, before_args = f'(f."{order}" IS NOT NULL OR {tie})', tie_args
    else:
        cmp = ">" if f.descending else "<"
        before = f'(f."{order}" {cmp} ? OR (f."{order}" = ? AND {tie}))'
        before_args = [value, value, *tie_args]
    here = "(f.layer = ? AND f.unit = ?)"
    here_args: list[Any] = [layer, int(unit)]
    row = con.execute(f"SELECT count(*), count(*) FILTER (WHERE {before}), count(*) FILTER (WHERE {here}) "
                      f"FROM ({inner}) f", before_args + here_args + params).fetchall()[0]
    total, ahead, present = (int(v) for v in row)
    if not present:
        return Neighbours(None, total, None, None)
    forward = order_terms("f", order, f.descending)
    backward = (f'f."{order}" {"ASC" if f.descending else "DESC"} NULLS FIRST, f.layer_index DESC, f.unit DESC')
    prev = con.execute(f"SELECT f.layer, f.unit FROM ({inner}) f WHERE {before} ORDER BY {backward} LIMIT 1",
                       params + before_args).fetchall()
    nxt = con.execute(f"SELECT f.layer, f.unit FROM ({inner}) f WHERE NOT {before} AND NOT {here} "
                      f"ORDER BY {forward} LIMIT 1", params + before_args + here_args).fetchall()
    return Neighbours(ahead + 1, total, (prev[0][0], int(prev[0][1])) if prev else None,
                      (nxt[0][0], int(nxt[0][1])) if nxt else None)


def facet_counts(con: duckdb.DuckDBPyConnection, f: UnitFilter, facets: tuple[str, ...] = FACETS) -> pd.DataFrame:
    """Columns facet, value (as text), units: how many units of ``f`` have each value, most first."""
    cols = tuple(check_column(c, FACETS, "facet") for c in facets)
    inner, params = unit_sql(con, f, tuple(dict.fromkeys((*cols, "layer_index"))), ordered=False, matches=False)
    sets = ", ".join(f'("{c}")' for c in cols)
    which = " ".join(f"WHEN grouping(\"{c}\") = 0 THEN '{c}'" for c in cols)
    value = "coalesce(" + ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols) + ")"
    sql = (f"SELECT CASE {which} END AS facet, {value} AS value, count(*) AS units, min(layer_index) AS _li "
           f"FROM ({inner}) GROUP BY GROUPING SETS ({sets})")
    df = con.execute(sql, params).df()
    order = {c: i for i, c in enumerate(cols)}
    df["_f"] = df["facet"].map(order)
    df["_li"] = df["_li"].where(df["facet"] == "layer", 0)
    df = df.sort_values(["_f", "_li", "units", "value"], ascending=[True, True, False, True])
    return df.drop(columns=["_f", "_li"]).reset_index(drop=True)


def gallery_page(con: duckdb.DuckDBPyConnection, f: UnitFilter, layer: str, sort: str, descending: bool,
                 page: int, per_page: int = 48, kind: str = "top") -> tuple[pd.DataFrame, int]:
    """One page of a layer's units in ``f``, sorted by ``sort``: ``TILE_COLUMNS``, the sort column and
    ``png`` (the unit's rank-0 image of ``kind``, class 0 for class averages; null without images),
    and how many units the layer has in ``f``. One query: the count rides along as a window."""
    sort = check_column(sort, UNIT_METRICS, "sort column")
    if kind not in IMAGE_KINDS:
        raise QueryError(f"unknown image kind {kind!r}; choose one of {', '.join(IMAGE_KINDS)}.")
    if page < 0 or not 1 <= per_page <= 1000:
        raise QueryError(f"page {page} of {per_page} tiles is out of range.")
    cols = tuple(dict.fromkeys((*TILE_COLUMNS, sort)))
    inner, params = unit_sql(con, replace(f, layers=(layer,)), cols, ordered=False, matches=False)
    shown = ", ".join(f'p."{c}"' for c in cols)
    sql = (f"WITH p AS (SELECT f.*, count(*) OVER () AS total, row_number() OVER "
           f"(ORDER BY {order_terms('f', sort, descending)}) AS pos FROM ({inner}) f "
           f"ORDER BY pos LIMIT ? OFFSET ?), "
           "i AS (SELECT i.unit, i.png FROM unit_images i SEMI JOIN p ON p.unit = i.unit "
           "WHERE i.run_id = ? AND i.layer = ? AND i.kind = ? AND i.rank = 0 "
           "QUALIFY row_number() OVER (PARTITION BY i.unit ORDER BY i.\"class\" NULLS FIRST) = 1) "
           f"SELECT {shown}, p.total, i.png FROM p LEFT JOIN i ON i.unit = p.unit ORDER BY p.pos")
    args: list[Any] = params + [int(per_page), int(page) * int(per_page), f.run_id, layer, kind]
    df = con.execute(sql, args).df()
    total = int(df["total"].iloc[0]) if len(df) else _layer_count(con, f, layer)
    return df.drop(columns="total"), total


def _layer_count(con: duckdb.DuckDBPyConnection, f: UnitFilter, layer: str) -> int:
    inner, params = unit_sql(con, replace(f, layers=(layer,)), ("unit",), ordered=False, matches=False)
    return int(con.execute(f"SELECT count(*) FROM ({inner})", params).fetchall()[0][0])


def latest_experiment(con: duckdb.DuckDBPyConnection) -> str | None:
    """The experiment of the newest run that belongs to one; None without experiments."""
    rows = con.execute("SELECT experiment FROM runs WHERE experiment IS NOT NULL "
                       "ORDER BY created_at DESC, run_id LIMIT 1").fetchall()
    return rows[0][0] if rows else None
