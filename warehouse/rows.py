"""Rows of a warehouse table, gathered block by block with the schema's column names.

Every table the compute step writes is built through ``TableRows``: a block (one layer's units, one
epoch's trace) must give exactly the schema's columns (``run_id`` excepted: ``RunWriter`` fills it),
so a column added to ``warehouse/schema.py`` and not computed, or computed and not declared, fails
at the first block instead of at publishing time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from warehouse.schema import TABLES

RUN_ID = "run_id"


class TableRows:
    def __init__(self, table: str) -> None:
        self.table = table
        self.names = tuple(n for n in TABLES[table].arrow_schema.names if n != RUN_ID)
        self.columns: dict[str, list[Any]] = {n: [] for n in self.names}

    def add(self, **block: Sequence[Any] | np.ndarray) -> None:
        """Append one block of rows; every column of the table (but ``run_id``) given, of one length."""
        missing = set(self.names) - set(block)
        extra = set(block) - set(self.names)
        if missing or extra:
            raise ValueError(f"table {self.table}: missing columns {sorted(missing)}, "
                             f"unknown columns {sorted(extra)}")
        lengths = {len(v) for v in block.values()}
        if len(lengths) > 1:
            raise ValueError(f"table {self.table}: columns of one block differ in length {sorted(lengths)}")
        for name, values in block.items():
            self.columns[name] += values.tolist() if isinstance(values, np.ndarray) else list(values)

    def __len__(self) -> int:
        return len(self.columns[self.names[0]]) if self.names else 0
