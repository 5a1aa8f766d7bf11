"""warehouse.queries against pandas/numpy/scipy computations on the same Parquet files."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from tests.dashboard_fixtures import RUN_ID
from warehouse import queries as q
from warehouse.queries import PRESETS, QueryError, Range, UnitFilter


def keys(df: pd.DataFrame) -> list[tuple[str, int]]:
    return sorted(zip(df["layer"], df["unit"].astype(int)))


def test_range_layer_and_class_filters_match_pandas(con, tables):
    u = tables["units"]
    f = UnitFilter(RUN_ID, layers=("fc1", "fc2"), ranges=(Range("selectivity", 0.2, None), Range("frac_active", None, 0.9)),
                   pref_classes=(1, 3, 7))
    got = q.filter_units(con, f)
    want = u[u.layer.isin(["fc1", "fc2"]) & (u.selectivity >= 0.2) & (u.frac_active <= 0.9) & u.pref_class.isin([1, 3, 7])]
    assert len(want) > 0
    assert keys(got) == keys(want)
    assert q.count_units(con, f) == len(want)


def test_class_conditions_hold_on_the_same_class(con, tables):
    uc = tables["unit_classes"]
    f = UnitFilter(RUN_ID, class_conditions=(Range("grad_mean", 0.0, None), Range("mean_act", None, -0.5)))
    got = q.filter_units(con, f)
    hit = uc[(uc.grad_mean >= 0) & (uc.mean_act <= -0.5)]
    assert len(hit) > 0
    assert keys(got) == sorted(set(zip(hit.layer, hit.unit.astype(int))))
    # matched_classes lists exactly the classes meeting both conditions, in class order.
    want = hit.sort_values("class").groupby(["layer", "unit"])["class_name"].apply(list)
    for row in got.itertuples():
        assert list(row.matched_classes) == want[(row.layer, row.unit)]
    # Restricted to one class.
    one = q.filter_units(con, UnitFilter(RUN_ID, class_conditions=f.class_conditions, condition_class=3))
    assert keys(one) == sorted(set(zip(hit[hit["class"] == 3].layer, hit[hit["class"] == 3].unit.astype(int))))


def test_presets_match_their_definitions(con, tables):
    u, uc = tables["units"], tables["unit_classes"]
    base = UnitFilter(RUN_ID)
    hgla = q.filter_units(con, PRESETS["high gradient, low activation"].apply(base))
    hit = uc[uc.anomaly >= 1.0]
    assert len(hgla) > 0 and keys(hgla) == sorted(set(zip(hit.layer, hit.unit.astype(int))))
    assert list(hgla.anomaly_max) == sorted(hgla.anomaly_max, reverse=True)
    assert not hgla.dead.any() and (hgla.frac_active > 0).all()  # no dead unit is in the anomaly preset
    assert uc[uc.set_index(["layer", "unit"]).index.isin(list(zip(u[u.dead].layer, u[u.dead].unit)))].anomaly.isna().all()
    wanted = q.filter_units(con, PRESETS["dead, but the loss wants them on"].apply(base))
    assert keys(wanted) == keys(u[u.dead & (u.grad_z_max >= 1.0)])
    sel = q.filter_units(con, PRESETS["highly selective"].apply(base))
    assert keys(sel) == keys(u[(u.selectivity >= 0.5) & (u.n_active >= q.MIN_ACTIVE)])
    top = q.filter_units(con, PRESETS["most important"].apply(base))
    assert list(top.abl_loss_delta) == sorted(u.abl_loss_delta, reverse=True)[:50]
    sig = q.filter_units(con, PRESETS["removal significantly hurts"].apply(base))
    assert len(sig) > 0 and keys(sig) == keys(u[(u.abl_loss_q <= q.ALPHA) & (u.abl_loss_lo >= 0)])
    assert (sig.abl_loss_delta > 0).all()
    sbu = q.filter_units(con, PRESETS["selective but unimportant"].apply(base))
    assert keys(sbu) == keys(u[(u.selectivity >= 0.5) & (u.n_active >= q.MIN_ACTIVE) & (u.abl_loss_delta <= 0.005)])
    dead = q.filter_units(con, PRESETS["dead units"].apply(base))
    assert len(dead) > 0 and keys(dead) == keys(u[u.frac_active == 0])
    assert dead.pref_class.isna().all() and dead.anomaly_max.isna().all()


@pytest.mark.parametrize("lo", [-0.5, 0.5, 1.0, 50.0])
@pytest.mark.parametrize("layers", [(), ("conv2", "fc2")])
def test_anomaly_floor_shortcut_equals_the_class_scan(con, tables, lo, layers):
    """"Some class has anomaly >= lo" is answered from units.anomaly_max; a redundant upper bound forces
    the general path through unit_classes. Rows, order, counts and matched classes must agree."""
    fast = UnitFilter(RUN_ID, layers=layers, class_conditions=(Range("anomaly", lo, None),),
                      order_by="anomaly_max", descending=True)
    slow = replace(fast, class_conditions=(Range("anomaly", lo, None), Range("anomaly", None, 1e300)))
    assert "unit_classes" not in q.filter_sql(fast, matches=False)[0]
    assert "unit_classes" in q.filter_sql(slow, matches=False)[0]
    a, b = q.filter_units(con, fast), q.filter_units(con, slow)
    assert (len(a) > 0) == (lo < 50)
    pd.testing.assert_frame_equal(a, b)
    assert q.count_units(con, fast) == q.count_units(con, slow) == len(a)
    uc = tables["unit_classes"]
    hit = uc[(uc.anomaly >= lo) & (uc.layer.isin(layers) if layers else True)]
    assert keys(a) == sorted(set(zip(hit.layer, hit.unit.astype(int))))
    pa_, pb = q.scatter_data(con, fast, "selectivity", "anomaly_max"), q.scatter_data(con, slow, "selectivity", "anomaly_max")
    pd.testing.assert_frame_equal(pa_[0], pb[0])
    # Limited pages: the same first rows, and matched classes computed for them alone.
    # (dtype unchecked: a nullable integer column reads as Int32 only on pages where it holds a null)
    pd.testing.assert_frame_equal(q.filter_units(con, replace(fast, limit=7)), a.head(7), check_dtype=False)


def test_preset_keeps_run_layers_and_class():
    f = PRESETS["dead units"].apply(UnitFilter(RUN_ID, layers=("fc1",), condition_class=2,
                                               ranges=(Range("selectivity", 0.1, None),)))
    assert (f.run_id, f.layers, f.condition_class, f.ranges, f.dead) == (RUN_ID, ("fc1",), 2, (), True)


def test_user_values_are_bound_and_columns_whitelisted(con):
    sql, params = q.filter_sql(UnitFilter("x' OR '1'='1", layers=("fc1'; DROP VIEW units; --",)))
    assert "x' OR" not in sql and "DROP" not in sql and "x' OR '1'='1" in params
    assert q.filter_units(con, UnitFilter("x' OR '1'='1")).empty
    for bad in (UnitFilter(RUN_ID, ranges=(Range('selectivity" OR 1=1 --', 0, 1),)),
                UnitFilter(RUN_ID, order_by="random()"),
                UnitFilter(RUN_ID, class_conditions=(Range("run_id", 0, 1),)),
                UnitFilter(RUN_ID, ranges=(Range("selectivity", math.nan, None),)),
                UnitFilter(RUN_ID, limit=0)):
        with pytest.raises(QueryError):
            q.filter_sql(bad)
    with pytest.raises(QueryError, match="unknown x axis"):
        q.scatter_data(con, UnitFilter(RUN_ID), "1; SELECT 1", "selectivity")


def test_parse_range_errors_name_the_problem():
    assert q.parse_range("anomaly:1:", q.CLASS_METRICS) == Range("anomaly", 1.0, None)
    for text, msg in (("selectivity", "COLUMN:LO:HI"), ("nope:1:2", "unknown column"),
                      ("selectivity:a:1", "a finite number"), ("selectivity:2:1", "above upper bound"),
                      ("selectivity:inf:", "finite")):
        with pytest.raises(QueryError, match=msg):
            q.parse_range(text)


@given(st.sampled_from(q.UNIT_METRICS),
       st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64)),
       st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64)))
def test_range_text_round_trips(column, lo, hi):
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    r = Range(column, lo, hi)
    assert q.parse_range(q.format_range(r)) == r


def test_scatter_data_counts_and_samples_deterministically(con, tables):
    f = UnitFilter(RUN_ID, layers=("fc1", "fc2"))
    pts, total = q.scatter_data(con, f, "selectivity", "abl_loss_delta")
    assert total == len(pts) == int(tables["units"].layer.isin(["fc1", "fc2"]).sum())
    sample, total2 = q.scatter_data(con, f, "selectivity", "abl_loss_delta", max_points=50)
    again, _ = q.scatter_data(con, f, "selectivity", "abl_loss_delta", max_points=50)
    assert total2 == total and len(sample) == 50 and keys(sample) == keys(again)
    merged = sample.merge(tables["units"], on=["layer", "unit"], suffixes=("", "_src"))
    assert np.allclose(merged.selectivity, merged.selectivity_src)


def test_layer_percentiles_match_scipy(con, tables):
    u = tables["units"]
    layer = u[u.layer == "fc1"]
    row = layer.iloc[7]
    got = q.layer_percentiles(con, RUN_ID, "fc1", {c: row[c] for c in q.PERCENTILE_METRICS})
    for c in q.PERCENTILE_METRICS:
        # Null values (a dead unit's anomaly) are left out of the percentile.
        assert got[c] == pytest.approx(stats.percentileofscore(layer[c].dropna(), row[c], kind="weak"),
                                       nan_ok=True), c


def test_histogram_matches_numpy(con, tables):
    u = tables["units"]
    h = q.layer_histogram(con, RUN_ID, "selectivity", bins=10)
    lo, hi = u.selectivity.min(), u.selectivity.max()
    for layer, g in u.groupby("layer"):
        counts, _ = np.histogram(g.selectivity, bins=10, range=(lo, hi))
        mine = np.zeros(10, dtype=int)
        for r in h[h.layer == layer].itertuples():
            mine[int(round((r.lo - lo) / ((hi - lo) / 10)))] = r.count
        assert mine.tolist() == counts.tolist(), layer
    with pytest.raises(QueryError):
        q.layer_histogram(con, RUN_ID, "frac_active; DROP")


def test_unit_page_data(con, tables):
    page = q.unit_page(con, RUN_ID, "conv2", 5)
    u, uc, tr = tables["units"], tables["unit_classes"], tables["train_trace"]
    want = u[(u.layer == "conv2") & (u.unit == 5)].iloc[0]
    assert page.unit["selectivity"] == want.selectivity and page.layer["n_units"] == 16
    mine = uc[(uc.layer == "conv2") & (uc.unit == 5)].sort_values("class")
    assert page.classes["grad_mean"].tolist() == mine.grad_mean.tolist()
    assert len(page.trace) == len(tr[(tr.layer == "conv2") & (tr.unit == 5)]) == 2 * 10
    assert q.unit_page(con, RUN_ID, "conv2", 99) is None


def test_overview_queries(con, tables):
    runs = q.runs_overview(con)
    assert runs.run_id.tolist() == [RUN_ID] and runs.test_acc.iloc[0] == tables["runs"].test_acc.iloc[0]
    s = q.layer_summary(con, RUN_ID)
    u = tables["units"]
    assert s.layer.tolist() == ["conv1", "conv2", "fc1", "fc2"]
    assert s.dead.tolist() == [int(u[u.layer == lay].dead.sum()) for lay in s.layer]
    assert s.median_selectivity.tolist() == pytest.approx([u[u.layer == lay].selectivity.median() for lay in s.layer])


def test_scatter_respects_the_filters_limit(con, tables):
    top = PRESETS["most important"].apply(UnitFilter(RUN_ID))
    pts, total = q.scatter_data(con, top, "selectivity", "abl_loss_delta")
    assert total == len(pts) == 50
    assert sorted(pts.abl_loss_delta) == sorted(tables["units"].abl_loss_delta.nlargest(50))


def test_class_matches_kept_per_connection_answer_like_the_scan(con, tables):
    """A filter's class-level matches, kept in a temporary table once per connection, give what the plain
    scan of unit_classes gives: rows, matched classes, order, counts, facets; old tables are dropped."""
    from warehouse import browse
    from warehouse.class_match import MAX_TABLES, class_table
    from warehouse.connect import has_units_in_memory
    from warehouse.filters import filter_sql

    f = UnitFilter(RUN_ID, layers=("fc1", "conv2"), class_conditions=(Range("grad_mean", 0.0, None),),
                   order_by="selectivity", descending=True, limit=40)
    sql, params = filter_sql(f, memory=has_units_in_memory(con))  # the plain scan, no table
    plain = con.execute(sql, params).df()
    kept = q.filter_units(con, f)
    assert len(plain) == 40
    pd.testing.assert_frame_equal(kept, plain)
    unlimited = replace(f, limit=None)
    assert q.count_units(con, unlimited) == con.execute(
        f"SELECT count(*) FROM ({filter_sql(unlimited, ('unit',), ordered=False, matches=False)[0]})",
        filter_sql(unlimited, ("unit",), ordered=False, matches=False)[1]).fetchall()[0][0]
    facets = browse.facet_counts(con, unlimited)
    assert facets[facets.facet == "layer"].units.sum() == q.count_units(con, unlimited)
    name = class_table(con, f, has_units_in_memory(con))
    assert name == class_table(con, f, has_units_in_memory(con))  # made once, then reused
    for lo in range(MAX_TABLES + 1):
        class_table(con, replace(f, class_conditions=(Range("grad_mean", float(lo), None),)), True)
    left = con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name LIKE 'class_match_%'")
    assert left.fetchall()[0][0] == MAX_TABLES


def test_class_anomalies_read_by_position_equal_the_grouped_ones(warehouse_root, tables, tmp_path):
    """``units_in_memory.class_anomaly`` read by position from the files equals grouping unit_classes in SQL,
    and the grouped path is taken when the files are not a full (unit, class) grid."""
    import duckdb

    from warehouse.connect import _units_in_memory, _units_in_memory_grouped, _with_class_anomaly

    run = warehouse_root / "runs" / RUN_ID
    files = [str(run / "units.parquet")], [str(run / "unit_classes.parquet")]
    fast, slow = duckdb.connect(":memory:"), duckdb.connect(":memory:")
    _units_in_memory(fast, *files)
    _units_in_memory_grouped(slow, *files)
    sql = "SELECT layer, unit, class_anomaly FROM units_in_memory ORDER BY layer_index, unit"
    a, b = fast.execute(sql).df(), slow.execute(sql).df()
    assert len(a) == len(tables["units"]) == len(b)
    for x, y in zip(a.class_anomaly, b.class_anomaly):
        np.testing.assert_array_equal(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    import pyarrow.parquet as pq

    grid = pq.read_table(run / "unit_classes.parquet")
    pq.write_table(grid.take(np.arange(grid.num_rows)[::-1]), tmp_path / "shuffled.parquet")
    assert _with_class_anomaly(str(run / "units.parquet"), str(tmp_path / "shuffled.parquet")) is None


@pytest.fixture(scope="module")
def odd_values_root(warehouse_root, tmp_path_factory):
    """The small run, a copy of it (run ``odd``) whose unit_classes hold NaN values, more nulls and many
    ties (values on a coarse grid), and one (``shuffled``) whose unit_classes rows are not in units order."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.run_copies import clone_run, refresh_manifest
    from warehouse.publish import COMPRESSION
    from warehouse.schema import TABLES

    root = tmp_path_factory.mktemp("odd_values")
    shutil.copytree(warehouse_root / "runs", root / "runs")
    run = clone_run(root / "runs" / RUN_ID, root, "odd")
    table = pq.read_table(run / "unit_classes.parquet")
    rng = np.random.default_rng(7)
    nullable = {c.name for c in TABLES["unit_classes"].columns if c.nullable}  # a null elsewhere breaks the run
    for name in ("grad_mean", "anomaly", "abl_loss_delta", "mean_act", "specialization"):
        more = (rng.random(table.num_rows) < 0.05) & (name in nullable)
        nulls = table[name].is_null().to_numpy(zero_copy_only=False) | more
        x = table[name].fill_null(0.0).to_numpy().copy()
        if name in ("abl_loss_delta", "mean_act"):
            x = np.round(x / x.std() * 4) / 4  # about twenty distinct values: ties
        x[rng.random(len(x)) < 0.15] = np.nan
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(x, pa.float64(), mask=nulls))
    pq.write_table(table, run / "unit_classes.parquet", compression=COMPRESSION)
    refresh_manifest(run)
    # A third run whose unit_classes rows are in reverse order: not the grid, so answered by SQL, and the
    # in-memory units of all three are then grouped in SQL (warehouse.connect._units_in_memory_grouped).
    shuffled = clone_run(root / "runs" / RUN_ID, root, "shuffled")
    grid = pq.read_table(shuffled / "unit_classes.parquet")
    pq.write_table(grid.take(np.arange(grid.num_rows)[::-1]), shuffled / "unit_classes.parquet",
                   compression=COMPRESSION)
    refresh_manifest(shuffled)
    return root


def _random_filter(rng: np.random.Generator, run_id: str, uc: pd.DataFrame) -> UnitFilter:
    from warehouse.filters import CLASS_METRICS

    conds = []
    odd = ["grad_mean", "anomaly", "abl_loss_delta", "mean_act"]  # NaN, nulls and ties in run "odd"
    metrics = rng.choice(odd if rng.random() < 0.6 else CLASS_METRICS, size=int(rng.integers(0, 3)), replace=False)
    for metric in metrics:
        x = uc[metric].dropna().to_numpy(dtype=float)
        x = x[np.isfinite(x)]
        lo, hi = (float(v) for v in np.sort(rng.choice(x, 2))) if len(x) else (0.0, 1.0)
        conds.append(Range(str(metric), *[(lo, None), (None, hi), (lo, hi)][int(rng.integers(3))]))
    layers = tuple(rng.choice(["conv1", "conv2", "fc1", "fc2", "fc9"], size=int(rng.integers(0, 3)), replace=False))
    return UnitFilter(run_id, layers=layers, class_conditions=tuple(conds),
                      condition_class=[None, None, None, None, 0, 3, 9, 10, 12][int(rng.integers(9))],
                      dead=[None, None, None, True, False][int(rng.integers(5))],
                      ranges=(Range("selectivity", float(rng.uniform(0, 0.5)), None),) if rng.random() < 0.3 else (),
                      order_by=str(rng.choice(["layer_index", "selectivity", "abl_loss_delta", "anomaly_max"])),
                      descending=bool(rng.random() < 0.5), limit=[None, 1, 7, 40][int(rng.integers(4))])


def test_class_values_in_memory_answer_like_the_sql_scan(odd_values_root, monkeypatch):
    """Class-level conditions and per-class ranks from the numpy arrays in memory give the plain SQL scan's
    rows, order, counts and matched classes, over random filters: NaN and null values, ties, classes the run
    does not have, layers it does not have, empty results; the rank's candidate rounds forced small; a run
    whose file is not the grid is answered by SQL beside them.

    The reference is the SQL path on a second connection whose unit_classes is a DuckDB table: over Parquet,
    DuckDB 2.0 skips a comparison that a row group's statistics say always holds, and those statistics leave
    NaN out (``x <= 5`` then keeps a NaN), so NaN would be answered by how rows fall into row groups. The
    compute step stores no NaN in unit_classes (an undefined value is null), so real runs are not affected."""
    import warehouse
    from warehouse import class_values
    from warehouse.class_match import forget
    from warehouse.filters import CLASS_METRICS

    con, ref = warehouse.connect(odd_values_root), warehouse.connect(odd_values_root)
    ref.execute("CREATE TABLE unit_classes_in_memory AS SELECT * FROM unit_classes")
    ref.execute("CREATE OR REPLACE VIEW unit_classes AS SELECT * FROM unit_classes_in_memory")
    monkeypatch.setattr(q, "RANK_CANDIDATES", 1)  # 8 x limit candidates first: the later rounds are taken too
    assert class_values.grid(con, RUN_ID) is not None and class_values.grid(con, "odd") is not None
    assert class_values.grid(ref, "odd") is class_values.grid(con, "odd")  # the same files: one grid, one set of arrays
    assert class_values.grid(con, "shuffled") is None
    with class_values.sql_path():
        assert class_values.grid(con, "odd") is None
    assert ref.execute("SELECT count_if(isnan(grad_mean)) FROM unit_classes WHERE run_id = 'odd'").fetchall()[0][0] > 0
    rng = np.random.default_rng(0)
    seen = {"empty": 0, "rows": 0, "rank rows": 0, "rank short": 0}
    for run_id, n in ((RUN_ID, 40), ("odd", 40), ("shuffled", 10)):
        uc = con.execute("SELECT * FROM unit_classes WHERE run_id = ?", [run_id]).df()
        for _ in range(n):
            f = _random_filter(rng, run_id, uc)
            forget(con)
            whole = replace(f, limit=None)
            metric, cls = str(rng.choice(CLASS_METRICS)), [0, 3, 9, 10][int(rng.integers(4))]
            limit = [1, 5, 50][int(rng.integers(3))]
            fast = q.filter_units(con, f), q.count_units(con, whole), q.rank_by_class(con, whole, metric, cls, limit)
            with class_values.sql_path():
                pd.testing.assert_frame_equal(fast[0], q.filter_units(ref, f))
                assert fast[1] == q.count_units(ref, whole)
                pd.testing.assert_frame_equal(fast[2], q.rank_by_class(ref, whole, metric, cls, limit))
            seen["empty" if fast[1] == 0 else "rows"] += 1
            seen["rank rows" if len(fast[2]) == limit else "rank short"] += 1
    assert min(seen.values()) >= 5, seen  # every kind of outcome was compared
    con.close(), ref.close()


def test_class_values_read_a_few_row_groups_at_a_time_equal_the_column(tmp_path, monkeypatch):
    """``class_values._read`` fills its array from row groups (7 rows each here, read 10 rows or more at a
    time, so steps span groups): values and nulls as ``to_pylist`` gives them, NaN kept, the stored type kept,
    null values 0, no mask for a column without nulls; a file of another size is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from warehouse import class_values

    n, k = 30, 4
    rng = np.random.default_rng(3)
    x = rng.normal(size=n * k)
    x[[5, 50]] = np.nan
    x_null = np.zeros(n * k, dtype=bool)
    x_null[[3, 4, 60, 119]] = True  # in some row groups only
    c_null = rng.random(n * k) < 0.2
    table = pa.table({"x": pa.array(x, mask=x_null), "c": pa.array(rng.integers(-5, 5, n * k), mask=c_null),
                      "y": pa.array(rng.normal(size=n * k))})
    file = tmp_path / "grid.parquet"
    pq.write_table(table, file, row_group_size=7)
    monkeypatch.setattr(class_values, "READ_ROWS", 10)
    for name in ("x", "c", "y"):
        got = class_values._read(str(file), name, n, k)
        listed = table[name].to_pylist()
        assert got.values.shape == (n, k) and got.values.dtype == table[name].type.to_pandas_dtype()
        if name == "y":
            assert got.valid is None
        else:
            np.testing.assert_array_equal(got.valid.ravel(), [v is not None for v in listed])
        expected = np.array([0 if v is None else v for v in listed], dtype=got.values.dtype)
        np.testing.assert_array_equal(got.values.ravel(), expected)  # NaN equals NaN here
        whole = class_values._values(pa.chunked_array(table[name].chunks[:1] + table[name].chunks[1:]), n, k)
        np.testing.assert_array_equal(whole.values, got.values)
    with pytest.raises(ValueError, match="rows where 31 x 4"):
        class_values._read(str(file), "x", 31, k)


def test_warm_reads_the_named_metrics_ahead_within_max_bytes(odd_values_root, monkeypatch):
    """``connect(background=True, warm=...)`` reads the named per-class metrics in its thread, equal to
    ``unit_classes`` in SQL (nulls and NaN included), and stops where the next would pass ``MAX_BYTES``
    (nothing held is dropped for it); a metric not named is read on first use."""
    import warehouse
    from warehouse import class_values
    from warehouse.connect import wait_for_units

    class_values.forget_values()
    con = warehouse.connect(odd_values_root, background=True, warm=("specialization", "abl_loss_delta"))
    assert wait_for_units(con, timeout=120)
    g = class_values.grid(con, "odd")
    assert set(g.metrics) == {"anomaly", "specialization", "abl_loss_delta"}
    for metric in ("specialization", "abl_loss_delta"):
        rows = {(g.layers[layer], unit, c): value for layer, unit, c, value in con.execute(
            f'SELECT layer, unit, "class", {metric} FROM unit_classes WHERE run_id = \'odd\'').fetchall()}
        v = g.metrics[metric]
        valid = np.ones(v.values.shape, bool) if v.valid is None else v.valid
        assert (metric == "abl_loss_delta") == valid.all()  # nulls in the nullable metric, NaN in both
        for i, (layer_index, unit) in enumerate(zip(g.layer_index, g.unit)):
            for c in range(g.n_classes):
                value, have = rows[(layer_index, unit, c)], v.values[i, c]
                assert valid[i, c] == (value is not None)
                assert value is None or value == have or (math.isnan(value) and math.isnan(have))
    assert "taylor" not in g.metrics
    class_values.values(g, "taylor")
    assert "taylor" in g.metrics
    con.close()

    class_values.forget_values()
    con = warehouse.connect(odd_values_root)  # each grid's anomalies only
    odd, small = class_values.grid(con, "odd"), class_values.grid(con, RUN_ID)
    assert set(odd.metrics) == set(small.metrics) == {"anomaly"}
    # Room for one more metric (float64 and its validity mask); grids are warmed in run order, "odd" first.
    monkeypatch.setattr(class_values, "MAX_BYTES", class_values.nbytes() + len(odd.unit) * odd.n_classes * 9)
    assert class_values.warm(con, ("grad_mean", "abl_loss_delta")) == 1
    assert set(odd.metrics) == {"anomaly", "grad_mean"} and set(small.metrics) == {"anomaly"}
    con.close()
