"""The SQL page's query process: runs one checked SELECT where nothing can be written or read but the views.

Started by ``warehouse.sandbox`` as ``python -I sandbox_worker.py`` (standalone: it imports only
duckdb and pyarrow), usually ahead of time as a spare that waits for its JSON request on stdin;
each process runs one query and ends. Its database is a fresh in-memory DuckDB with
the warehouse's tables registered as pyarrow datasets, so the SQL itself needs no file access at
all: external access is off with no allowed directories, every path setting is blanked, the
configuration is locked, and the process cannot write a byte to any file (``RLIMIT_FSIZE`` 0).
Whatever the query does dies with the process. The result goes back on stdout as one Arrow IPC
stream of at most ``max_rows`` rows and ``max_bytes`` bytes, every column in a form any grid and
file format can hold (``_display_query``: DuckDB's own text for dates, intervals, huge integers and
the like, JSON for lists, structs and maps; binary columns replaced by their sizes; duplicate column
names numbered); an error goes to stderr with exit code 2.
"""

from __future__ import annotations

import base64
import json
import resource
import sys
import threading
import time

#: DuckDB's own memory limit (its buffers; huge strings may exceed it, so the parent also watches the process).
MEMORY_LIMIT = "512MB"
#: Settings fixed before the configuration is locked; paths blanked so none can be read back.
SETTINGS = (
    ("python_enable_replacements", False), ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False), ("allow_community_extensions", False),
    ("temp_directory", ""), ("extension_directory", ""), ("secret_directory", ""), ("home_directory", ""),
    ("enable_external_access", False), ("lock_configuration", True),
)


def _fail(message: str) -> None:
    sys.stderr.write("\n" + " ".join(message.split()))  # one line, the last of stderr
    sys.stderr.flush()
    sys.exit(2)


def _shown(column, pa, pc):
    """Binary values as their size ("1,234 bytes"), nested ones as text: a grid can show every column."""
    t = column.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        sizes = pc.binary_length(column).to_pylist()
        return pa.array([None if n is None else f"{n:,} bytes" for n in sizes], pa.string())
    if pa.types.is_nested(t) and "binary" in str(t):
        return pa.array([None if v is None else _text(v) for v in column.to_pylist()], pa.string())
    return column


#: DuckDB types shown as they are: numbers, text, booleans (and binary, turned into sizes by ``_shown``).
KEPT_TYPES = {"boolean", "tinyint", "smallint", "integer", "bigint", "utinyint", "usmallint", "uinteger", "ubigint",
              "float", "double", "decimal", "varchar", "null", "blob"}
NESTED_TYPES = {"list", "struct", "map", "array", "union"}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def unique_names(names: list[str]) -> list[str]:
    """Column names made distinct (DuckDB compares them case-insensitively): ``a, a`` -> ``a, a_2``;
    an empty name becomes ``column<N>``."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        base = name or f"column{i + 1}"
        candidate, k = base, 1
        while candidate.lower() in seen:
            k += 1
            candidate = f"{base}_{k}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def _display_query(con, query: str) -> str | None:
    """``query`` wrapped so every column comes back displayable: dates, times, intervals, huge integers,
    UUIDs, bits, enums as DuckDB's text (``infinity`` stays ``infinity``), lists, structs, maps and
    unions as JSON text (those holding binary are left to ``_shown``), names made distinct. None for a
    statement that returns no relation."""
    rel = con.sql(query)
    if rel is None:
        return None
    names = unique_names(list(rel.columns))
    columns = []
    for name, t in zip(names, rel.types):
        ref = f"q.{_ident(name)}"
        if t.id in KEPT_TYPES or (t.id in NESTED_TYPES and "BLOB" in str(t)):
            expr = ref
        elif t.id in NESTED_TYPES:
            expr = f"CAST(to_json({ref}) AS VARCHAR)"
        else:
            expr = f"CAST({ref} AS VARCHAR)"
        columns.append(f"{expr} AS {_ident(name)}")
    return f"SELECT {', '.join(columns)} FROM (\n{query}\n) AS q({', '.join(map(_ident, names))})"


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value):,} bytes>"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return repr(value)


def main() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    import duckdb  # before the request arrives: a spare process waits here, imports done
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": MEMORY_LIMIT})
    raw = sys.stdin.read()
    if not raw:
        return  # the server ended without using this spare
    request = json.loads(raw)

    for name, source in request["tables"].items():
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(source["schema"])))
        data = ds.dataset(source["files"], schema=schema, format="parquet") if source["files"] else schema.empty_table()
        con.register(name, data)
    for key, value in SETTINGS:
        con.execute(f"SET {key} = ?", [value])
    max_rows, max_bytes = int(request["max_rows"]), int(request["max_bytes"])
    # The limit counts from here: start-up is not the query's time (the parent allows for it separately).
    limit = float(request["time_limit_s"])
    cpu = int(time.process_time() + limit) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    timer = threading.Timer(limit, con.interrupt)
    timer.start()
    batches, rows, size, truncated = [], 0, 0, ""
    try:
        shown = _display_query(con, request["query"])
        if shown is None:
            _fail("the query failed: the statement returns no rows; write a SELECT.")
        reader = con.sql(shown).to_arrow_reader(256)
        for batch in reader:
            columns = [_shown(c, pa, pc) for c in batch.columns]
            batch = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
            if rows + batch.num_rows > max_rows:
                batch, truncated = batch.slice(0, max_rows - rows), "rows"
            if size + batch.nbytes > max_bytes:
                truncated = "bytes"
                break
            batches.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if truncated:
                break
        schema = batches[0].schema if batches else pa.schema(
            [pa.field(f.name, _shown(pa.array([], f.type), pa, pc).type) for f in reader.schema])
    except duckdb.InterruptException:
        _fail("timeout")
    except (duckdb.Error, pa.ArrowException) as e:
        _fail(f"the query failed: {str(e).strip()}")
    except Exception as e:  # this process is the boundary: whatever else breaks is the query's failure too
        _fail(f"the query failed: {type(e).__name__}: {e}")
    finally:
        timer.cancel()
    schema = schema.with_metadata({"truncated": truncated})
    with pa.ipc.new_stream(sys.stdout.buffer, schema) as out:
        for batch in batches:
            out.write_batch(batch.replace_schema_metadata(schema.metadata))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
