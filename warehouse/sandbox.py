"""Read-only ad-hoc SQL over the warehouse views: one SELECT, a row cap and a time limit.

The connection from ``warehouse.connect`` already has file access off and its configuration
locked; on top of that a statement is accepted only if DuckDB's own parser says it is a single
SELECT (``WITH ... SELECT`` included), so COPY, ATTACH, SET, PRAGMA, CREATE and friends are refused
before anything runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pandas as pd
from warehouse.errors import AtlasError

MAX_ROWS = 10_000
TIME_LIMIT_S = 10.0


class SandboxError(AtlasError, ValueError):
    """A refused or failed query; the message says why."""


@dataclass
class SandboxResult:
    rows: pd.DataFrame
    truncated: bool  # more rows existed than the cap


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The single SELECT statement in ``sql``, or a ``SandboxError`` naming why it is refused."""
    if not sql.strip():
        raise SandboxError("the query is empty: write one SELECT statement.")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise SandboxError(f"the query does not parse: {e}") from None
    if len(statements) != 1:
        raise SandboxError(f"only one statement at a time is allowed; found {len(statements)}.")
    stmt = statements[0]
    if stmt.type != duckdb.StatementType.SELECT:
        raise SandboxError(f"only SELECT (or WITH ... SELECT) is allowed, not {stmt.type.name}: "
                           f"the SQL page is read-only.")
    return stmt.query


def run_query(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = MAX_ROWS,
              time_limit_s: float = TIME_LIMIT_S) -> SandboxResult:
    """Run one checked SELECT; at most ``max_rows`` rows, interrupted after ``time_limit_s``."""
    query = check_statement(con, sql)
    timer = threading.Timer(time_limit_s, con.interrupt)
    timer.start()
    try:
        rel = con.execute(query)
        batch = rel.fetchmany(max_rows + 1)
        columns = [d[0] for d in rel.description]
    except duckdb.InterruptException:
        raise SandboxError(f"the query ran longer than {time_limit_s:g} s and was stopped; "
                           f"narrow it (WHERE run_id = ..., LIMIT).") from None
    except duckdb.Error as e:
        raise SandboxError(f"the query failed: {e}") from None
    finally:
        timer.cancel()
    return SandboxResult(pd.DataFrame.from_records(batch[:max_rows], columns=columns), len(batch) > max_rows)
