"""Ad-hoc SQL over the warehouse views for the SQL page: read-only by construction, bounded in time and bytes.

Two independent layers:

1. **The statement is checked** on DuckDB's own parse tree (``json_serialize_sql``): exactly one
   SELECT, every query node a plain SELECT / set operation / CTE (so ``WITH g AS (DELETE ...
   RETURNING *)`` is refused, not just top-level writes), tables only the warehouse views or the
   query's own CTEs, table functions only ``range``/``generate_series``/``unnest``, and no
   function that reads settings, variables or files.
2. **The query runs in a process of its own** (``warehouse/sandbox_worker.py``) over a fresh
   in-memory database: the shared dashboard database is never touched, so nothing one session
   runs can change another's results. There it has no file access at all (the tables are
   registered as pyarrow datasets), no path in any setting, a locked configuration, and the
   operating system refuses it any file write. Time is enforced three times over: DuckDB is
   interrupted at the limit, the kernel stops the process after the limit plus 2 s of CPU, and
   the parent kills it after the limit plus a start-up allowance; memory is watched from outside
   (killed above ``MAX_MEMORY_BYTES``). So functions DuckDB cannot interrupt (``repeat('x', 1e9)``)
   are bounded too. The result is capped
   at ``MAX_ROWS`` rows and ``MAX_RESULT_BYTES`` bytes while it is fetched.

Each process serves one query and ends; a spare one is started ahead (``_worker``), so its start-up
(imports: about a second, more on a busy machine) is not waited for.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from warehouse.errors import AtlasError
from warehouse.schema import TABLES

MAX_ROWS = 10_000
TIME_LIMIT_S = 10.0
MAX_RESULT_BYTES = 32 << 20  # what is fetched and sent to the browser
MAX_MEMORY_BYTES = 1 << 30  # resident memory of the query process
MAX_QUERY_CHARS = 100_000
STARTUP_S = 15.0  # allowed for the query process to start (imports) on a busy machine, beside the query's limit
WORKER = Path(__file__).with_name("sandbox_worker.py")
MAX_DEPTH = 1_000  # DuckDB's max_expression_depth, which its parser enforces (the setting is locked at its default)
DEEP_STACK_BYTES = 512 << 20  # the thread that decodes a deep parse tree (virtual: only what is used is touched)
DEEP_RECURSION = 200_000
#: The query nodes of a read-only statement; anything else (DELETE/INSERT/UPDATE inside a CTE...) is refused.
QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
#: Table references refused: DESCRIBE/SHOW/SUMMARIZE (they list databases and settings) and internal kinds.
REFUSED_REFS = {"SHOW_REF": "DESCRIBE, SHOW and SUMMARIZE are not available; the views' columns are listed "
                            "beside the query box", "COLUMN_DATA": "", "DELIM_GET": "", "BOUND_TABLE_REF": "",
                "INVALID": ""}
TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}
#: Scalar functions (name prefixes) that read settings, variables, the environment or files.
REFUSED_FUNCTIONS = ("current_setting", "getvariable", "getenv", "duckdb_", "pragma", "read_", "glob", "query",
                     "sql_", "enable_", "disable_", "checkpoint", "force_checkpoint", "which_secret", "parquet_",
                     "sniff_", "load", "install", "test_", "file", "current_database", "current_schema")
#: CTE names that would shadow system views: refused so a name can never reach the catalog's.
SYSTEM_PREFIXES = ("duckdb_", "pragma_", "pg_", "sqlite_", "information_schema")


class SandboxError(AtlasError, ValueError):
    """A refused or failed query; the message says why."""


@dataclass
class SandboxResult:
    rows: pd.DataFrame
    truncated: bool  # more rows existed than the cap, or the result exceeded the byte cap
    reason: str = ""  # "rows" or "bytes" when truncated


def _nodes(tree: object) -> Iterator[dict]:
    """Every dict of the parse tree, iteratively (a deeply nested query cannot exhaust the stack)."""
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            yield x
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def _plain_depth(message: str) -> str:
    """DuckDB's depth error, which advises a SET the SQL page does not allow, said as what to do."""
    if "expression depth" not in message:
        return message
    return (f"it nests deeper than DuckDB's limit of {MAX_DEPTH:,} levels (parentheses, subqueries, operators in "
            f"a chain); simplify it, e.g. with a CTE or sum() over a list.")


_deep_lock = threading.Lock()


def _tree(text: str) -> dict:
    """The JSON parse tree, however deeply nested.

    DuckDB allows ``MAX_DEPTH`` levels of expression, and each level is several levels of JSON, so a
    query of 330 chained ``+`` already exceeds Python's recursion limit in ``json.loads`` (which
    raises ``RecursionError``, cleanly). Such a tree is decoded again in a thread of its own with a
    large stack and a raised limit, for that call only; no statement can take the dashboard down.
    """
    try:
        return json.loads(text)
    except RecursionError:
        pass
    out: dict[str, object] = {}

    def decode() -> None:
        try:
            out["tree"] = json.loads(text)
        except RecursionError:
            pass

    with _deep_lock:
        limit, stack = sys.getrecursionlimit(), threading.stack_size(DEEP_STACK_BYTES)
        sys.setrecursionlimit(max(limit, DEEP_RECURSION))
        try:
            worker = threading.Thread(target=decode, name="sql-parse-tree")
            worker.start()
            worker.join()
        finally:
            threading.stack_size(stack)
            sys.setrecursionlimit(limit)
    if "tree" not in out:
        raise SandboxError("the query nests too deeply to be checked; simplify it (a CTE, fewer nested levels).")
    return out["tree"]  # type: ignore[return-value]


def _parse(sql: str) -> tuple[str, list]:
    con = duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(sql)
        if len(statements) != 1:
            raise SandboxError(f"only one statement at a time is allowed; found {len(statements)}.")
        stmt = statements[0]
        if stmt.type != duckdb.StatementType.SELECT:
            raise SandboxError(f"only SELECT (or WITH ... SELECT) is allowed, not {stmt.type.name}: "
                               f"the SQL page is read-only.")
        tree = _tree(con.execute("SELECT json_serialize_sql(?)", [stmt.query]).fetchall()[0][0])
    except duckdb.Error as e:
        raise SandboxError(f"the query does not parse: {_plain_depth(str(e).strip())}") from None
    finally:
        con.close()
    if tree.get("error"):
        raise SandboxError(f"this statement cannot be checked ({tree.get('error_message')}); write a plain "
                           f"SELECT over the views.")
    return stmt.query, tree["statements"]


def check_statement(sql: str) -> str:
    """The single read-only SELECT in ``sql``, or a ``SandboxError`` naming why it is refused."""
    return _check(sql)[0]


def _check(sql: str) -> tuple[str, set[str]]:
    """``check_statement``, and the views the statement reads (only those are loaded to run it)."""
    if not sql.strip():
        raise SandboxError("the query is empty: write one SELECT statement.")
    if len(sql) > MAX_QUERY_CHARS:
        raise SandboxError(f"the query is {len(sql):,} characters long; the limit is {MAX_QUERY_CHARS:,}.")
    query, tree = _parse(sql)
    nodes = list(_nodes(tree))
    ctes = {str(entry["key"]).lower() for n in nodes if isinstance(n.get("cte_map"), dict)
            for entry in n["cte_map"].get("map", []) if isinstance(entry, dict) and "key" in entry}
    shadowing = sorted(c for c in ctes if c.startswith(SYSTEM_PREFIXES))
    if shadowing:
        raise SandboxError(f"the CTE name {shadowing[0]!r} is reserved for system views; choose another name.")
    views, used = set(TABLES), set()
    for n in nodes:
        kind = n.get("type")
        if not isinstance(kind, str):
            continue
        if kind.endswith("_NODE") and kind not in QUERY_NODES:
            what = kind.removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
            raise SandboxError(f"{what} is not allowed, also not inside a WITH clause: the SQL page is read-only.")
        if kind in REFUSED_REFS:
            raise SandboxError((REFUSED_REFS[kind] or f"{kind} references are not allowed") + ".")
        if kind == "BASE_TABLE":
            name = str(n.get("table_name", ""))
            qualified = n.get("schema_name") or n.get("catalog_name")
            if qualified or (name.lower() not in views and name.lower() not in ctes):
                shown = ".".join(str(p) for p in (n.get("catalog_name"), n.get("schema_name"), name) if p)
                raise SandboxError(f"unknown table {shown!r}: the SQL page reads only the views "
                                   f"{', '.join(TABLES)} (and your own WITH names).")
            if name.lower() in views:
                used.add(name.lower())
        if kind == "TABLE_FUNCTION":
            fn = n.get("function") or {}
            name = str(fn.get("function_name", "")).lower() if isinstance(fn, dict) else ""
            if name not in TABLE_FUNCTIONS or (isinstance(fn, dict) and (fn.get("schema") or fn.get("catalog"))):
                raise SandboxError(f"the table function {name or '?'}() is not available; query the views "
                                   f"({', '.join(TABLES)}) or use {', '.join(sorted(TABLE_FUNCTIONS))}.")
        if "function_name" in n and str(n["function_name"]).lower().startswith(REFUSED_FUNCTIONS):
            raise SandboxError(f"the function {n['function_name']}() is not available on the SQL page "
                               f"(settings, variables and files are not exposed).")
    return query, used


def sources(run_paths: Sequence[Path]) -> dict[str, list[str]]:
    """The Parquet files of each view over the given (validated) run folders."""
    return {name: [str(Path(p) / f"{name}.parquet") for p in run_paths] for name in TABLES}


def _rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (0 where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_spare: subprocess.Popen | None = None
_spare_lock = threading.Lock()


def _spawn() -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "HOME": tempfile.gettempdir()}
    return subprocess.Popen([sys.executable, "-I", "-W", "ignore", str(WORKER)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir(), env=env)


def _worker() -> subprocess.Popen:
    """A fresh query process: the spare started (and done importing) while the last query ran, if any.

    Every process serves one query, so nothing carries over between queries or sessions; the spare
    only hides the start-up time (seconds on a busy machine).
    """
    global _spare
    with _spare_lock:
        proc, _spare = _spare, None
        if proc is None or proc.poll() is not None:
            proc = _spawn()
        _spare = _spawn()
    return proc


@atexit.register
@atexit.register
def _drop_spare() -> None:
    """The ready query process is not left behind when the dashboard exits."""
    if _spare is not None and _spare.poll() is None:
        _spare.kill()
        _spare.wait()


def run_query(files: Mapping[str, Sequence[str]], sql: str, max_rows: int = MAX_ROWS,
              time_limit_s: float = TIME_LIMIT_S, max_bytes: int = MAX_RESULT_BYTES,
              max_memory: int = MAX_MEMORY_BYTES) -> SandboxResult:
    """Run one checked SELECT over the views made of ``files`` (view name -> Parquet files).

    At most ``max_rows`` rows and ``max_bytes`` bytes come back; the query is stopped after
    ``time_limit_s`` seconds (execution and fetching together, counted from when the query process
    is ready: its start-up has a separate allowance, ``STARTUP_S``) or when its process holds more
    than ``max_memory`` bytes.
    """
    query, used = _check(sql)
    return execute({name: paths for name, paths in files.items() if name in used}, query, max_rows, time_limit_s,
                   max_bytes, max_memory)


def execute(files: Mapping[str, Sequence[str]], query: str, max_rows: int = MAX_ROWS,
            time_limit_s: float = TIME_LIMIT_S, max_bytes: int = MAX_RESULT_BYTES,
            max_memory: int = MAX_MEMORY_BYTES) -> SandboxResult:
    """``query`` in the query process over the views named in ``files``, unchecked: the second layer
    alone (``run_query`` checks first)."""
    started = time.time()
    request = {
        "query": query, "time_limit_s": time_limit_s, "max_rows": max_rows, "max_bytes": max_bytes,
        "tables": {name: {"files": list(paths),
                          "schema": base64.b64encode(TABLES[name].arrow_schema.serialize().to_pybytes()).decode()}
                   for name, paths in files.items() if name in TABLES},
    }
    proc = _worker()
    killed = ""
    payload: bytes | None = json.dumps(request).encode()
    out, err = b"", b""
    while True:
        try:
            out, err = proc.communicate(payload, timeout=0.02)
            break
        except subprocess.TimeoutExpired:
            payload = None
            if time.time() > started + STARTUP_S + time_limit_s + 1.0:
                killed = "timeout"
            elif _rss(proc.pid) > max_memory:
                killed = "memory"
            if killed:
                proc.kill()
                out, err = proc.communicate()
                break
    message = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
    if "expression depth" in message:
        message = "the query failed: " + _plain_depth(message)
    for paths in files.values():  # an error about a file (<root>/runs/<id>/<table>.parquet) hides the root
        for p in paths:
            message = message.replace(str(Path(p).parent.parent.parent), "<warehouse>")
    if killed == "timeout" or message == "timeout" or proc.returncode == -signal.SIGXCPU:
        raise SandboxError(f"the query ran longer than {time_limit_s:g} s and was stopped; narrow it "
                           f"(WHERE run_id = ..., LIMIT).")
    if killed == "memory":
        raise SandboxError(f"the query needed more than {max_memory / 2**30:g} GiB of memory and was stopped; "
                           f"select fewer or smaller values (LIMIT, length(...), no huge strings).")
    if proc.returncode == 2:
        raise SandboxError(message or "the query failed.")
    if proc.returncode == -signal.SIGKILL:  # the kernel's out-of-memory killer, before the watcher saw it
        raise SandboxError("the query process was killed by the system, most likely for running out of memory; "
                           "select fewer or smaller values (LIMIT, length(...), no huge strings).")
    if proc.returncode != 0:
        raise SandboxError(f"the query process ended abnormally (exit code {proc.returncode}); simplify the query.")
    table = pa.ipc.open_stream(out).read_all()
    reason = (table.schema.metadata or {}).get(b"truncated", b"").decode()
    return SandboxResult(_frame(table), bool(reason), reason)


def _frame(table: pa.Table) -> pd.DataFrame:
    """A DataFrame of ``table``; a column pandas cannot take (an exotic type) is shown as text."""
    series = []
    for i, (name, column) in enumerate(zip(table.column_names, table.columns)):
        try:
            s = column.to_pandas()
        except Exception:  # noqa: BLE001 - any value pandas cannot hold is shown as text
            s = pd.Series(_texts(column), dtype=object)
        series.append(s.rename(name))
    return pd.concat(series, axis=1) if series else pd.DataFrame()


def _texts(column: pa.ChunkedArray) -> list[str | None]:
    """Each value as text, one by one: a value even Python cannot hold (a date beyond year 9999) reads
    as what Arrow says of it."""
    out: list[str | None] = []
    for chunk in column.chunks:
        for k in range(len(chunk)):
            scalar = chunk[k]
            try:
                out.append(None if not scalar.is_valid else str(scalar.as_py()))
            except Exception:  # noqa: BLE001
                out.append(str(scalar))
    return out
