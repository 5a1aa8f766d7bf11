"""Queries on ``unit_images``: one unit's evidence, and thumbnails for a table of units.

Values are always bound parameters. The table is written sorted by (layer, unit) in small row
groups, so the filters below skip most of the file.
"""

from __future__ import annotations

import base64
import json

import duckdb
import pandas as pd

from warehouse.schema import IMAGE_KINDS, TABLES

META_COLUMNS = tuple(c.name for c in TABLES["unit_images"].columns if c.name != "png")


def unit_images(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int,
                kinds: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every image row of one unit (with ``png``), ordered by kind, rank and class."""
    sql = "SELECT * FROM unit_images WHERE run_id = ? AND layer = ? AND unit = ?"
    params: list[object] = [run_id, layer, int(unit)]
    if kinds:
        sql += " AND list_contains(?, kind)"
        params.append(list(kinds))
    df = con.execute(sql, params).df()
    order = {k: i for i, k in enumerate(IMAGE_KINDS)}
    df["_k"] = df["kind"].map(order)
    return df.sort_values(["_k", "rank", "class"], na_position="first").drop(columns="_k").reset_index(drop=True)


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI, the form st.column_config.ImageColumn shows."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnails(con: duckdb.DuckDBPyConnection, run_id: str, kind: str = "top", rank: int = 0,
               layer: str | None = None) -> pd.DataFrame:
    """Columns layer, unit, thumbnail (data URI): one image of ``kind``/``rank`` per unit of the run
    (of ``layer`` if given), for a thumbnail column in the unit explorer. For averages the class 0
    image is taken, for the first match only."""
    sql = ("SELECT layer, unit, png FROM unit_images WHERE run_id = ? AND kind = ? AND rank = ?"
           " AND (? IS NULL OR layer = ?) QUALIFY row_number() OVER (PARTITION BY layer, unit ORDER BY class) = 1"
           " ORDER BY layer, unit")
    df = con.execute(sql, [run_id, kind, int(rank), layer, layer]).df()
    df["thumbnail"] = [data_uri(bytes(p)) for p in df.pop("png")]
    return df


def input_shape(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int, ...] | None:
    """The network's input shape (C, H, W) recorded in the run's configuration; None if absent."""
    rows = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchall()
    try:
        shape = json.loads(rows[0][0])["model_spec"]["in_shape"]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return tuple(int(v) for v in shape) if shape else None
