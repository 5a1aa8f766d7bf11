"""The SQL page's sandbox refuses everything but one SELECT, caps rows and stops long queries."""

from __future__ import annotations

import pytest

from tests.dashboard_fixtures import RUN_ID
from warehouse.sandbox import SandboxError, check_statement, run_query

HOSTILE = {
    "select * from read_csv('/etc/passwd')": "file system operations are disabled",
    "select * from read_parquet('/etc/hostname')": "file system operations are disabled",
    "select * from glob('/*')": "file system operations are disabled",
    "copy units to '/tmp/neuron-atlas-leak.csv'": "not COPY",
    "copy (select 1) to '/tmp/neuron-atlas-leak.csv'": "not COPY",
    "attach '/tmp/neuron-atlas.db' as x": "not ATTACH",
    "install httpfs": "not LOAD",
    "load httpfs": "not LOAD",
    "set enable_external_access = true": "not SET",
    "reset lock_configuration": "not SET",
    "pragma enable_profiling": "not PRAGMA",
    "create table t as select 1": "not CREATE",
    "create or replace view units as select 1 as x": "not CREATE",
    "drop view units": "not DROP",
    "insert into units select * from units": "not INSERT",
    "update units set unit = 0": "not UPDATE",
    "delete from units": "not DELETE",
    "export database '/tmp/neuron-atlas-export'": "not EXPORT",
    "call pragma_version()": "not CALL",
    "explain select 1": "not EXPLAIN",
    "select 1; drop view units": "one statement at a time",
    "select 1; select 2": "one statement at a time",
    "": "empty",
    "   ": "empty",
    "selec 1": "does not parse",
}


@pytest.mark.parametrize("sql", list(HOSTILE))
def test_hostile_queries_are_refused(con, sql):
    with pytest.raises(SandboxError, match=HOSTILE[sql]):
        run_query(con, sql)
    # The views and the locked configuration are intact afterwards.
    assert con.execute("SELECT count(*) FROM units").fetchall()[0][0] == 226
    assert con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0] is False


def test_file_reads_stay_inside_the_runs_folder(con, warehouse_root):
    """DuckDB reads the runs' Parquet itself, so file access is limited to the runs folder, not off."""
    inside = warehouse_root / "runs" / RUN_ID / "units.parquet"
    assert run_query(con, f"SELECT count(*) AS n FROM read_parquet('{inside}')").rows.n[0] == 226
    outside = warehouse_root / "neuron-atlas-secret.txt"
    outside.write_text("secret")
    try:
        for sql in (f"SELECT * FROM read_text('{outside}')", f"SELECT * FROM read_text('{inside.parent}/../../*')",
                    f"SELECT * FROM read_csv('{warehouse_root}/runs/../neuron-atlas-secret.txt')"):
            with pytest.raises(SandboxError, match="Permission|disabled|not allowed"):
                run_query(con, sql)
    finally:
        outside.unlink()


def test_select_and_with_run_and_are_capped(con):
    r = run_query(con, "WITH c AS (SELECT layer, count(*) AS n FROM units WHERE run_id = 'small' GROUP BY layer) "
                       "SELECT * FROM c ORDER BY layer")
    assert r.rows.to_dict("list") == {"layer": ["conv1", "conv2", "fc1", "fc2"], "n": [6, 16, 120, 84]}
    assert not r.truncated
    capped = run_query(con, f"SELECT * FROM units WHERE run_id = '{RUN_ID}'", max_rows=100)
    assert len(capped.rows) == 100 and capped.truncated


def test_long_queries_are_interrupted(con):
    with pytest.raises(SandboxError, match="longer than 0.5 s"):
        run_query(con, "SELECT count(*) FROM range(100000000000) a, range(100000) b WHERE a.range * b.range = 7",
                  time_limit_s=0.5)
    assert run_query(con, "SELECT 42 AS x").rows.x.tolist() == [42]


def test_check_statement_returns_the_single_statement(con):
    assert check_statement(con, "select 1;").strip().rstrip(";").strip() == "select 1"
