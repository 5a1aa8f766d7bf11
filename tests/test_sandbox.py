"""The SQL page's sandbox, tried as a hostile user would.

Layer 1 (the statement check) must refuse every statement of ``HOSTILE``; layer 2 (the query
process over a fresh database, no file access, killed at its limits) must hold on its own for
statements that slip past layer 1, so it is tried with the check switched off (``execute``). After
all of it the shared database and the run's files are unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.dashboard_fixtures import RUN_ID
from warehouse.sandbox import SandboxError, check_statement, execute, run_query, sources
from warehouse.validate import list_runs

READ_ONLY = "read-only|not allowed|not INSERT|not UPDATE|not DELETE"
FILES = "not available|unknown table"
# statement -> what the refusal must say (a regular expression)
HOSTILE: dict[str, str] = {
    # writes and schema changes, top level
    "insert into units select * from units": "not INSERT",
    "update units set unit = 0": "not UPDATE",
    "update units set unit = 0 returning *": "not UPDATE",
    "delete from units": "not DELETE",
    "truncate units": "not DELETE",
    "create table t as select 1": "not CREATE",
    "create or replace view units as select 1 as x": "not CREATE",
    "create temp table t(x int)": "not CREATE",
    "create macro m(x) as x": "not CREATE",
    "create sequence s": "not CREATE",
    "create secret (type s3, key_id 'x', secret 'y')": "not",
    "drop view units": "not DROP",
    "drop table units_in_memory": "not DROP",
    "alter view units rename to u": "not ALTER",
    "copy units to '/tmp/neuron-atlas-leak.csv'": "not COPY",
    "copy (select 1) to '/tmp/neuron-atlas-leak.csv'": "not COPY",
    "copy units from '/etc/passwd'": "not COPY",
    "attach '/tmp/neuron-atlas.db' as x": "not ATTACH",
    "attach ':memory:' as m": "not ATTACH",
    "detach memory": "not DETACH",
    "install httpfs": "not LOAD",
    "force install httpfs": "not LOAD",
    "load httpfs": "not LOAD",
    "set enable_external_access = true": "not SET",
    "set lock_configuration = false": "not SET",
    "reset lock_configuration": "not SET",
    "set memory_limit = '100GB'": "not SET",
    "set variable x = 1": "not SET|not VARIABLE",
    "pragma enable_profiling": "not PRAGMA",
    "pragma database_list": "not PRAGMA",
    "call pragma_version()": "not CALL",
    "call duckdb_settings()": "not CALL",
    "export database '/tmp/neuron-atlas-export'": "not EXPORT",
    "import database '/tmp/neuron-atlas-export'": "not",
    "explain select 1": "not EXPLAIN",
    "explain analyze select 1": "not EXPLAIN|not ANALYZE",
    "checkpoint": "not",
    "vacuum": "not",
    "begin transaction": "not TRANSACTION",
    "use system": "not",
    "prepare p as select 1": "not PREPARE",
    "execute p": "not EXECUTE",
    "pivot units on layer using count(*)": "not",
    # data-modifying clauses inside a SELECT: CTEs, subqueries, set operations
    "WITH g AS (DELETE FROM units_in_memory RETURNING *) SELECT count(*) FROM g": READ_ONLY,
    "WITH g AS (UPDATE units_in_memory SET unit = 0 RETURNING *) SELECT count(*) FROM g": READ_ONLY,
    "WITH g AS (INSERT INTO units_in_memory SELECT * FROM units_in_memory RETURNING *) SELECT count(*) FROM g":
        READ_ONLY,
    "WITH a AS (SELECT 1), g AS (DELETE FROM units RETURNING unit) SELECT * FROM a, g": READ_ONLY,
    "WITH g AS MATERIALIZED (DELETE FROM units RETURNING *) SELECT 1": READ_ONLY,
    "SELECT * FROM (WITH g AS (DELETE FROM units RETURNING *) SELECT * FROM g)": READ_ONLY,
    "SELECT (WITH g AS (DELETE FROM units RETURNING 1) SELECT count(*) FROM g)": READ_ONLY,
    "SELECT 1 UNION ALL (WITH g AS (DELETE FROM units RETURNING 1) SELECT * FROM g)": READ_ONLY,
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3), "
    "g AS (UPDATE units SET unit = 1 RETURNING 1) SELECT * FROM r": READ_ONLY + "|not supported",
    "SELECT * FROM units WHERE unit IN (WITH g AS (DELETE FROM units RETURNING unit) SELECT * FROM g)": READ_ONLY,
    # files, paths, settings, system catalogs, other databases
    "select * from read_csv('/etc/passwd')": FILES,
    "select * from read_csv_auto('/etc/passwd')": FILES,
    "select * from read_parquet('/etc/hostname')": FILES,
    "select * from read_text('/etc/passwd')": FILES,
    "select * from read_blob('/etc/passwd')": FILES,
    "select * from read_json('/etc/passwd')": FILES,
    "select * from glob('/*')": FILES,
    "select * from '/etc/passwd'": FILES,
    "select * from 'runs/small/units.parquet'": FILES,
    "select * from parquet_metadata('units.parquet')": FILES,
    "select * from sniff_csv('/etc/passwd')": FILES,
    "select * from duckdb_settings()": FILES,
    "select * from duckdb_databases()": FILES,
    "select * from duckdb_extensions()": FILES,
    "select * from system.main.duckdb_settings()": FILES,
    "select * from duckdb_tables": FILES,
    "select * from pg_catalog.pg_settings": FILES,
    "select * from information_schema.tables": FILES,
    "select * from pragma_database_list": FILES,
    "select * from units_in_memory": FILES,
    "select * from memory.main.units": FILES,
    "select * from con": FILES,
    "select * from range(3) t, read_csv('/etc/passwd')": FILES,
    "select * from units where unit in (select * from read_csv('/etc/passwd'))": FILES,
    "select current_setting('temp_directory')": FILES,
    "select current_setting('allowed_directories')": FILES,
    "select getvariable('x')": FILES,
    "select * from query('delete from units')": FILES,
    "select * from query_table('units_in_memory')": FILES,
    "WITH duckdb_settings AS (SELECT 1) SELECT * FROM duckdb_settings": "reserved",
    "WITH pg_settings AS (SELECT 1) SELECT * FROM pg_settings": "reserved",
    "describe units": "DESCRIBE, SHOW and SUMMARIZE",
    "show tables": "DESCRIBE, SHOW and SUMMARIZE",
    "show databases": "DESCRIBE, SHOW and SUMMARIZE",
    "summarize units": "DESCRIBE, SHOW and SUMMARIZE",
    # several statements, comments and case tricks
    "select 1; drop view units": "one statement at a time",
    "select 1; select 2": "one statement at a time",
    "select 1 /* ; */ ; delete from units": "one statement at a time",
    "/* comment */ delete from units": "not DELETE",
    "-- comment\ndelete from units": "not DELETE",
    "select 1 -- \n; delete from units": "one statement at a time",
    "sElEcT 1; DeLeTe FrOm units": "one statement at a time",
    "": "empty",
    "   ": "empty",
    "selec 1": "does not parse",
    "x" * 200_000: "characters long",
}


def _files(root: Path) -> dict[str, list[str]]:
    return sources([r.path for r in list_runs(root) if r.ok])


def _fingerprint(root: Path) -> dict[str, str]:
    run = root / "runs" / RUN_ID
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir())}


@pytest.mark.parametrize("sql", list(HOSTILE), ids=[f"h{i:02d}" for i in range(len(HOSTILE))])
def test_hostile_statements_are_refused_before_anything_runs(sql):
    with pytest.raises(SandboxError, match=HOSTILE[sql]):
        check_statement(sql)


def test_the_corpus_is_large():
    assert len(HOSTILE) >= 90


# Statements that get past no check, run by the query process alone: it must contain them.
LAYER_TWO = [
    "COPY (SELECT 42) TO '{tmp}/leak.csv'",
    "SELECT * FROM read_text('{tmp}/secret.txt')",
    "WITH g AS (DELETE FROM units RETURNING *) SELECT count(*) FROM g",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "SET enable_external_access = true",
]


@pytest.mark.parametrize("sql", LAYER_TWO, ids=["copy", "read", "delete-cte", "attach", "set"])
def test_the_query_process_contains_what_the_check_would_miss(warehouse_root, tmp_path, sql):
    (tmp_path / "secret.txt").write_text("secret")
    with pytest.raises(SandboxError, match="failed"):
        execute(_files(warehouse_root), sql.format(tmp=tmp_path), time_limit_s=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]


def test_the_query_process_exposes_no_path(warehouse_root):
    """Even the settings table, unreachable through the check, names no server path there."""
    r = execute(_files(warehouse_root), "SELECT name, value FROM duckdb_settings() "
                                        "UNION ALL SELECT database_name, path FROM duckdb_databases()", time_limit_s=30)
    values = " ".join(str(v) for v in r.rows.value.dropna())
    for secret in (str(warehouse_root), str(Path.home()), "/tmp", "/root"):
        assert secret not in values


def test_selects_run_and_are_capped(warehouse_root):
    files = _files(warehouse_root)
    r = run_query(files, "WITH c AS (SELECT layer, count(*) AS n FROM units WHERE run_id = 'small' GROUP BY layer) "
                         "SELECT * FROM c ORDER BY layer", time_limit_s=30)
    assert r.rows.to_dict("list") == {"layer": ["conv1", "conv2", "fc1", "fc2"], "n": [6, 16, 120, 84]}
    assert not r.truncated
    capped = run_query(files, f"SELECT * FROM units WHERE run_id = '{RUN_ID}'", max_rows=100, time_limit_s=30)
    assert len(capped.rows) == 100 and capped.truncated and capped.reason == "rows"


def test_binary_and_exotic_columns_are_shown_not_crashed(warehouse_root):
    """png is shown as its size; nested binary as text; types pandas cannot hold as text."""
    r = run_query(_files(warehouse_root), "SELECT png, octet_length(png) AS n, [png] AS l, {'p': png} AS s, "
                  "1::HUGEINT AS h, INTERVAL 1 DAY AS i, uuid() AS u, '101'::BIT AS b, MAP {'k': 1} AS m, "
                  "NULL AS z, 1 AS dup, 2 AS dup FROM unit_images LIMIT 3", time_limit_s=30)
    assert len(r.rows) == 3
    assert r.rows.png.tolist() == [f"{n:,} bytes" for n in r.rows.n]
    assert r.rows.l.str.contains("bytes").all() and list(r.rows.columns)[-2:] == ["dup", "dup_2"]


@pytest.mark.parametrize("sql,limits,message", [
    ("SELECT repeat('x', 100000) AS s FROM range(10000)", {"max_bytes": 1 << 20}, None),
    ("SELECT repeat('x', 1000000) FROM range(3000)", {"max_memory": 400 << 20}, "memory|longer|failed"),
    ("SELECT repeat('x', 1000000000) AS s", {"time_limit_s": 3}, "memory|longer|failed"),
    ("SELECT count(*) FROM range(100000000000) a, range(100000) b WHERE a.range * b.range = 7", {"time_limit_s": 3},
     "longer than 3 s"),
    ("SELECT list(range) FROM range(1000000000)", {"time_limit_s": 10}, "memory|longer|failed"),
], ids=["bytes", "memory", "uninterruptible", "time", "duckdb-memory"])
def test_time_memory_and_bytes_are_bounded(warehouse_root, sql, limits, message):
    files = _files(warehouse_root)
    if message is None:
        r = run_query(files, sql, time_limit_s=30, **limits)
        assert r.truncated and r.reason == "bytes" and r.rows.s.str.len().sum() <= 1 << 20
    else:
        with pytest.raises(SandboxError, match=message):
            run_query(files, sql, **{"time_limit_s": 10, **limits})


def test_no_session_can_change_what_others_see(warehouse_root, con):
    """Every hostile statement, through both layers, leaves the shared database and the files as they were."""
    before = _fingerprint(warehouse_root)
    files = _files(warehouse_root)
    for sql in list(HOSTILE)[:60]:
        with pytest.raises(SandboxError):
            run_query(files, sql)
    assert con.execute("SELECT count(*) FROM units").fetchall() == [(226,)]
    assert _fingerprint(warehouse_root) == before and all(r.ok for r in list_runs(warehouse_root))


def test_a_dashboard_session_cannot_change_another_sessions_results(monkeypatch, warehouse_root):
    """Two AppTest sessions share the server's cached database: one runs the data-modifying CTE of the
    issue on the SQL page, the other's explorer still shows every unit."""
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_app import APP, count_line, ok, open_page

    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(warehouse_root))
    viewer = open_page(AppTest.from_file(str(APP), default_timeout=60), "explorer", {"run": RUN_ID})
    assert count_line(viewer) == 226
    attacker = open_page(AppTest.from_file(str(APP), default_timeout=60), "sql")
    for sql in ("WITH g AS (DELETE FROM units_in_memory RETURNING *) SELECT count(*) FROM g",
                "WITH g AS (UPDATE units SET dead = true RETURNING *) SELECT count(*) FROM g",
                "SELECT png FROM unit_images LIMIT 2"):
        attacker.text_area(key="sql-query").input(sql)
        ok(attacker.button(key="sql-run").click().run())
    assert not attacker.error and attacker.dataframe[-1].value.png.str.endswith("bytes").all()
    ok(viewer.run())
    assert count_line(viewer) == 226


# --- statements the page must survive: each class of the issue, tried as a corpus -------------------------------
DEEP = {  # nesting: runs, or a clear refusal naming the depth; never a RecursionError in the dashboard process
    "plus-330": "SELECT " + "+".join(["1"] * 330),
    "plus-999": "SELECT " + "+".join(["1"] * 999),
    "plus-5000": "SELECT " + "+".join(["1"] * 5000),
    "subquery-330": "SELECT " + "(SELECT " * 330 + "1" + ")" * 330,
    "concat-1000": "SELECT " + "||".join(["'a'"] * 1000),
    "parens-30000": "SELECT " + "(" * 30000 + "1" + ")" * 30000,
    "lists-500": "SELECT " + "[" * 500 + "1" + "]" * 500,
    "case-400": "SELECT " + "CASE WHEN true THEN " * 400 + "1" + " END" * 400,
    "not-900": "SELECT " + "NOT " * 900 + "true",
    "abs-600": "SELECT " + "abs(" * 600 + "1" + ")" * 600,
    "union-2000": " UNION ALL ".join(["SELECT 1 AS x"] * 2000),
    "ctes-1000": "WITH " + ", ".join(f"t{i} AS (SELECT {i} AS x)" for i in range(1000)) + " SELECT count(*) FROM t999",
    "and-2000": "SELECT 1 WHERE " + " AND ".join(["true"] * 2000),
}
TYPES = {  # every DuckDB type the views or a SELECT can produce: a grid value and a CSV/Parquet download
    "infinity-date": "SELECT 'infinity'::DATE AS d, '-infinity'::DATE AS e",
    "infinity-timestamp": "SELECT 'infinity'::TIMESTAMP AS t, '-infinity'::TIMESTAMPTZ AS u",
    "far-dates": "SELECT DATE '294247-01-10' AS d, TIMESTAMP '290309-12-22 00:00:00' AS t",
    "list": "SELECT [1, 2] AS l, [[1], []] AS ll, ['a', NULL] AS ls",
    "interval": "SELECT run_id, now() - created_at AS age, INTERVAL '1 month 2 days 3 seconds' AS i FROM runs",
    "unit-images": "SELECT * FROM unit_images LIMIT 5",
    "map-struct-union": "SELECT MAP {'k': 1} AS m, {'a': [1, 2], 'b': {'c': DATE '2020-01-01'}} AS s, "
                        "union_value(k := 1) AS un, [1, 2]::INT[2] AS arr",
    "wide-integers": "SELECT 170141183460469231731687303715884105727::HUGEINT AS h, 1::UHUGEINT AS uh, "
                     "(2::BIGNUM ^ 200)::VARCHAR AS big, 18446744073709551615::UBIGINT AS ub",
    "decimal-bit-uuid-enum": "SELECT 1.5::DECIMAL(38, 10) AS d, '101'::BIT AS b, uuid() AS u, "
                             "'a'::ENUM('a', 'b') AS e, '10:00:00+01'::TIMETZ AS t, '{\"a\": 1}'::JSON AS j",
    "nested-binary": "SELECT [png] AS l, {'p': png, 'n': 1} AS s, MAP {'k': png} AS m FROM unit_images LIMIT 2",
    "nulls": "SELECT NULL AS n, NULL::DATE AS d, NULL::INT[] AS l, NULL::INTERVAL AS i",
    "floats": "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, -0.0 AS c, 1e-320 AS d, 1e308 * 10 AS e",
    "time-series": "SELECT * FROM generate_series(TIMESTAMP '2020-01-01', TIMESTAMP '2020-01-02', INTERVAL 6 HOUR)",
}
NAMES = {  # column names: duplicate (in any case), empty, quoted, a page's own link column name
    "duplicate": ("SELECT 1 AS a, 2 AS a", ["a", "a_2"]),
    "duplicate-case": ("SELECT 1 AS a, 2 AS A, 3 AS a", ["a", "A_2", "a_3"]),
    "taken-suffix": ('SELECT 1 AS "a_2", 2 AS a, 3 AS a', ["a_2", "a", "a_3"]),
    "join": ("SELECT * FROM runs r1, runs r2 LIMIT 1", None),
    "quotes": ('SELECT 1 AS "x""y", 2 AS "with space", 3 AS "ünï"', ['x"y', "with space", "ünï"]),
    "open": ("SELECT 'x' AS open, run_id, layer, unit FROM units LIMIT 3", ["open", "run_id", "layer", "unit"]),
    "open-2": ("SELECT 1 AS open, 2 AS open_2, run_id, layer, unit FROM units LIMIT 2", None),
}


def _downloads(frame) -> None:
    """What the page does with a result: a grid (Arrow) and the CSV and Parquet downloads."""
    import pyarrow as pa

    from warehouse.export import table_bytes

    table = pa.Table.from_pandas(frame, preserve_index=False)
    for fmt in ("csv", "parquet"):
        assert table_bytes(table, fmt)


@pytest.mark.parametrize("name", list(DEEP))
def test_deeply_nested_statements_run_or_are_refused_clearly(warehouse_root, name):
    try:
        r = run_query(_files(warehouse_root), DEEP[name], time_limit_s=30)
    except SandboxError as e:  # refused for its depth, or (on a machine loaded enough) for its time: both clear
        assert ("nest" in str(e) or "ran longer than" in str(e)) and "max_expression_depth" not in str(e), str(e)
    else:
        _downloads(r.rows)


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_has_a_display_and_a_download_form(warehouse_root, name):
    r = run_query(_files(warehouse_root), TYPES[name], time_limit_s=30)
    assert len(r.rows) > 0
    _downloads(r.rows)
    if name == "infinity-date":
        assert r.rows.d.tolist() == ["infinity"] and r.rows.e.tolist() == ["-infinity"]
    if name == "list":
        assert r.rows.l.tolist() == ["[1,2]"]
    if name == "nested-binary":
        assert r.rows.l.str.contains("bytes").all()


@pytest.mark.parametrize("name", list(NAMES))
def test_odd_column_names_are_made_distinct(warehouse_root, name):
    sql, expected = NAMES[name]
    r = run_query(_files(warehouse_root), sql, time_limit_s=30)
    assert not r.rows.columns.duplicated().any()
    if expected is not None:
        assert r.rows.columns.tolist() == expected
    _downloads(r.rows)


LINK_VALUES = [  # (run_id, layer, unit) in a SQL result: a link only for a valid unit, never an exception
    ("small", "fc1", 3, True), ("small", "fc1", 3.0, True), ("small", "fc1", float("inf"), False),
    ("small", "fc1", float("nan"), False), ("small", "fc1", -1, False), ("small", "fc1", 1.5, False),
    ("small", "fc1", None, False), ("small", "fc1", 10**30, False), ("small", "fc1", "7", True),
    ("small", "fc1", "x", False), ("small", "[a](https://evil.example)", 1, False), ("small", None, 1, False),
    ("bad id\n", "fc1", 1, False), (None, "fc1", 1, False), ("small", "fc1", True, True),
]


def test_unit_links_only_for_valid_units_and_never_over_a_column():
    import pandas as pd

    from dashboard.nav import with_unit_links

    rows = pd.DataFrame(LINK_VALUES, columns=["run_id", "layer", "unit", "valid"], dtype=object)
    rows.insert(0, "open", "mine")
    shown, config = with_unit_links(rows, None)
    assert list(shown.columns[:2]) == ["open_2", "open"] and list(config) == ["open_2"]
    assert shown["open_2"].notna().tolist() == rows.valid.tolist()
    inf_only = pd.DataFrame({"run_id": ["small"], "layer": ["fc1"], "unit": [float("inf")]})
    assert with_unit_links(inf_only, None) == (inf_only, {})


def test_small_floats_are_shown_in_significant_digits():
    import pandas as pd

    from dashboard.ui import number_formats

    frame = pd.DataFrame({"q": [1e-12, 0.5], "p": [0.5, 0.25], "n": [1, 2], "z": [0.0, 0.0]})
    assert list(number_formats(frame)) == ["q"]


def test_sql_figures():
    """Statements tried by class, for the closing note (all must pass for the figures to hold)."""
    print(f"nesting {len(DEEP)}/{len(DEEP)}, types {len(TYPES)}/{len(TYPES)}, names {len(NAMES)}/{len(NAMES)}, "
          f"link values {len(LINK_VALUES)}/{len(LINK_VALUES)}")
