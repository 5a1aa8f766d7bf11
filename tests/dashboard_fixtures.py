"""Shared fixtures of the dashboard tests: one small real run computed once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

RUN_ID = "small"


@pytest.fixture(scope="session")
def warehouse_root(small_run) -> Path:
    """The warehouse of conftest's ``small_run``: LeNet-5, 2 epochs on 1,000 bundled MNIST digits, 300 evaluated."""
    root, summary = small_run
    assert summary.run_id == RUN_ID
    return Path(root)


@pytest.fixture(scope="session")
def broken_root(warehouse_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small run plus a copy of it (as run ``broken-run``) whose units table is corrupt."""
    from tests.run_copies import clone_run

    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(warehouse_root / "runs", root / "runs")
    bad = clone_run(root / "runs" / RUN_ID, root, "broken-run")
    (bad / "units.parquet").write_bytes(b"not parquet")
    return root


@pytest.fixture(params=[None, 0], ids=["units-in-memory", "units-on-disk"])
def con(warehouse_root: Path, request: pytest.FixtureRequest):
    """Both forms ``warehouse.connect`` takes: ``units`` copied into memory, or read from Parquet
    (what a warehouse above ``MEMORY_UNITS`` gets)."""
    import warehouse
    from warehouse.connect import MEMORY_UNITS

    c = warehouse.connect(warehouse_root, memory_units=MEMORY_UNITS if request.param is None else request.param)
    yield c
    c.close()


@pytest.fixture(scope="session")
def tables(warehouse_root: Path) -> dict:
    """The run's tables read straight from Parquet with pyarrow: the independent side of comparisons."""
    import pyarrow.parquet as pq

    run = warehouse_root / "runs" / RUN_ID
    return {name: pq.read_table(run / f"{name}.parquet").to_pandas()
            for name in ("units", "unit_classes", "train_trace", "layers", "runs")}
