"""The neuron warehouse: Parquet files per run, read through DuckDB.

Writers use ``RunWriter``; readers use ``connect``, which sees only complete runs.
"""

from warehouse.connect import connect
from warehouse.schema import SCHEMA_VERSION, TABLES
from warehouse.errors import WarehouseError
from warehouse.layout import default_path
from warehouse.publish import RunWriter
from warehouse.validate import RunInfo, list_runs

__all__ = [
    "SCHEMA_VERSION", "TABLES", "RunInfo", "RunWriter", "WarehouseError", "connect", "default_path", "list_runs",
]
