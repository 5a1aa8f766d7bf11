"""Neighbours in a filter, facet counts and gallery pages against pandas on the same Parquet files."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.dashboard_fixtures import RUN_ID
from warehouse import browse
from warehouse import queries as q
from warehouse.queries import PRESETS, Range, UnitFilter


def ordered(u: pd.DataFrame, column: str, descending: bool) -> list[tuple[str, int]]:
    """pandas' order of the filter: column (NaN above numbers as DuckDB orders it, nulls last), layer, unit."""
    key = u[column].astype(float)
    rank = key.where(key.notna(), float("inf") if not descending else float("-inf"))
    df = u.assign(_k=rank, _nan=u[column].isna())
    df = df.sort_values(["_nan", "_k", "layer_index", "unit"], ascending=[True, not descending, True, True])
    return list(zip(df.layer, df.unit.astype(int)))


@pytest.mark.parametrize("f", [
    UnitFilter(RUN_ID, order_by="selectivity", descending=True),
    UnitFilter(RUN_ID, layers=("fc1", "fc2"), order_by="abl_loss_delta"),
    PRESETS["highly selective"].apply(UnitFilter(RUN_ID)),
    UnitFilter(RUN_ID, ranges=(Range("frac_active", 0.1, None),), order_by="mean_act", descending=True, limit=30),
], ids=["all-desc", "two-layers-asc", "preset", "limited"])
def test_neighbours_follow_the_filters_order(con, tables, f):
    want = list(zip(*[q.filter_units(con, f)[c] for c in ("layer", "unit")]))
    want = [(layer, int(unit)) for layer, unit in want]
    u = tables["units"]
    if f.limit is None and not f.ranges and f.order_by != "abl_loss_delta":
        assert want == ordered(u[u.layer.isin(f.layers)] if f.layers else u, f.order_by, f.descending)
    for i in (0, 1, len(want) // 2, len(want) - 1):
        n = browse.neighbours(con, f, *want[i])
        assert (n.position, n.total) == (i + 1, len(want))
        assert n.previous == (want[i - 1] if i > 0 else None)
        assert n.next == (want[i + 1] if i + 1 < len(want) else None)
    outside = next((k for k in zip(u.layer, u.unit.astype(int)) if k not in set(want)), None)
    if outside:
        assert browse.neighbours(con, f, *outside) == browse.Neighbours(None, len(want), None, None)


def test_facet_counts_match_pandas(con, tables):
    f = UnitFilter(RUN_ID, ranges=(Range("selectivity", 0.1, None),))
    got = browse.facet_counts(con, f)
    u = tables["units"]
    u = u[u.selectivity >= 0.1]
    for facet in browse.FACETS:
        mine = got[got.facet == facet].set_index("value").units.to_dict()
        want = u.groupby(u[facet].astype(str).str.lower()).size().to_dict()
        assert mine == want, facet


def test_gallery_pages_partition_the_layer_in_order(con, tables):
    f = PRESETS["highly selective"].apply(UnitFilter(RUN_ID))
    u = tables["units"]
    fc1 = u[(u.layer == "fc1") & (u.selectivity >= 0.5)]
    want = [int(x) for _, x in ordered(fc1, "abl_loss_delta", True)]
    pages = [browse.gallery_page(con, f, "fc1", "abl_loss_delta", True, p, 7, "top") for p in range(-(-len(want) // 7))]
    assert all(total == len(want) for _, total in pages)
    assert [int(x) for df, _ in pages for x in df.unit] == want
    first = pages[0][0]
    assert first.png.notna().all()
    empty, total = browse.gallery_page(con, f, "fc1", "abl_loss_delta", True, 99, 7, "top")
    assert empty.empty and total == len(want)
