"""The neuron warehouse: Parquet files per run, read through DuckDB.

Writers use ``RunWriter``; readers use ``connect``, which sees only complete runs.
"""

import sys

#: Ctrl-C while ``python -m warehouse`` / ``python -m compute`` load their modules: one line, exit code 130.
INTERRUPTED_AT_START = "interrupted while starting; nothing was done."

try:
    from warehouse.connect import connect
    from warehouse.schema import SCHEMA_VERSION, TABLES
    from warehouse.errors import WarehouseError
    from warehouse.layout import default_path
    from warehouse.publish import RunWriter
    from warehouse.validate import RunInfo, list_runs
except KeyboardInterrupt:
    _argv = list(getattr(sys, "orig_argv", []))
    if "-m" not in _argv or _argv[_argv.index("-m") + 1:][:1] != ["warehouse"]:
        raise  # a program importing the package (python -m compute too) handles its own KeyboardInterrupt
    print(INTERRUPTED_AT_START, file=sys.stderr)
    raise SystemExit(130) from None

__all__ = [
    "SCHEMA_VERSION", "TABLES", "RunInfo", "RunWriter", "WarehouseError", "connect", "default_path", "list_runs",
]
