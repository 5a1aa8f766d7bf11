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
    assert r.rows.l.str.contains("bytes").all() and list(r.rows.columns).count("dup") == 2


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
