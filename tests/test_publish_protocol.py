"""The publish protocol of docs/storage.md as properties over ``RunWriter``, on synthetic runs.

Every crash point of the writer is tried with a kill (the process ends: nothing else runs, the
kernel drops the lock) and with Ctrl-C (``KeyboardInterrupt``: handlers and clean-ups run), then
``--resume``; hypothesis also tries chains of interruptions (a resume interrupted again). After each
interruption the warehouse must hold the earlier run whole and the interrupted one either not at all
or valid (never broken), and the final resume must publish exactly the tables of an uninterrupted
run. ``tests/test_faults.py`` does the same with real computations and real signals.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import warehouse.publish
from warehouse.cleanup import staging_leftovers
from warehouse.errors import WarehouseError
from warehouse.layout import CHECKPOINT, stages_dir
from warehouse.publish import PUBLISHED, RunWriter, write_file
from warehouse.schema import TABLES
from warehouse.validate import CLASS_COLUMNS, list_runs


class Killed(BaseException):
    """The process is gone at this point: no handler, no ``finally`` of the writer runs."""


def _column(field: pa.Field, n: int, rng: np.random.Generator) -> pa.Array:
    t = field.type
    if pa.types.is_string(t):
        return pa.array([f"{field.name}-{i % 7}" for i in range(n)], t)
    if pa.types.is_binary(t):
        return pa.array([rng.bytes(8) for _ in range(n)], t)
    if pa.types.is_boolean(t):
        return pa.array(rng.random(n) < 0.5, t)
    if pa.types.is_timestamp(t):
        return pa.array(rng.integers(0, 2**31, n), pa.int64()).cast(t)
    if pa.types.is_list(t):
        inner = pa.field("x", t.value_type)
        return pa.array([_column(inner, 3, rng).to_pylist() for _ in range(n)], t)
    if pa.types.is_integer(t):
        return pa.array(rng.integers(0, 1000, n), t)
    return pa.array(rng.normal(size=n), t)


def synthetic(name: str, seed: int) -> dict[str, pa.Array]:
    """Deterministic rows of every column of table ``name`` (``run_id`` is filled by the writer)."""
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    # One runs row naming 3 classes (``_column`` of a list); five layers (layer-0 .. layer-4, layer_index 0 .. 4) of
    # one unit each, as units lists them; unit_classes a row per unit and class (warehouse.validate checks those counts).
    n = {"runs": 1, "unit_classes": 15}.get(name, 5)
    columns = {f.name: pa.array(rng.integers(0, 3, n), f.type) if f.name in CLASS_COLUMNS else _column(f, n, rng)
               for f in TABLES[name].arrow_schema if f.name != "run_id"}
    fixed = {"layers": "n_units", "units": "unit"}.get(name)
    if fixed is not None:
        columns[fixed] = pa.array([1 if fixed == "n_units" else 0] * n, columns[fixed].type)
        columns["layer_index"] = pa.array(range(n), columns["layer_index"].type)  # layer-i is the i-th layer
    return columns


def attempt(root: Path, run_id: str, resume: bool, stop: tuple[str, str] | None, monkeypatch) -> Path | None:
    """One computation of the synthetic run; ``stop`` = (crash point, "kill" | "interrupt")."""
    def crash(point: str) -> None:
        if stop and point == stop[0]:
            raise Killed if stop[1] == "kill" else KeyboardInterrupt

    monkeypatch.setattr(warehouse.publish, "crash_point", crash)
    try:
        writer = RunWriter(root, run_id, resume=resume)
    except WarehouseError as e:  # an interrupted command that finished its own clean-up left nothing to resume
        if not (resume and "published and complete" in str(e)):
            raise
        return root / "runs" / run_id

    def body() -> Path:
        if writer.already_published:
            return writer.final
        stages = stages_dir(root, run_id)
        stages.mkdir(exist_ok=True)
        write_file(stages / "data.pt", b"a finished stage", "a stage")  # what --resume needs
        for name in TABLES:
            writer.write_table(name, synthetic(name, 0))
        write_file(writer.file(CHECKPOINT), b"weights" * 100, "the checkpoint")
        crash("after-checkpoint")
        return writer.publish({"model": "synthetic"})

    try:
        if stop and stop[1] == "kill":
            try:
                path = body()
                writer.__exit__(None, None, None)  # the clean-up of a published run has a point too
            except Killed:
                writer._lock.close()  # what the kernel does for a killed process; nothing else runs
                return None
            return path
        with writer:
            return body()
    except KeyboardInterrupt:
        return None


def _points(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every crash point an uninterrupted synthetic publish passes, in order."""
    seen: list[str] = []
    mp = pytest.MonkeyPatch()
    try:
        root = tmp_path_factory.mktemp("points")
        mp.setattr(warehouse.publish, "crash_point", seen.append)
        writer = RunWriter(root, "p")
        with writer:
            stages_dir(root, "p").mkdir()
            for name in TABLES:
                writer.write_table(name, synthetic(name, 0))
            writer.file(CHECKPOINT).write_bytes(b"w")
            seen.append("after-checkpoint")
            writer.publish()
    finally:
        mp.undo()
    return list(dict.fromkeys(seen))


POINTS = [*(f"after-table-{t}" for t in TABLES), "after-checkpoint", "before-manifest", "after-manifest-tmp",
          "before-rename", "after-rename", "after-clean-stages"]
RENAMED = {"after-rename", "after-clean-stages"}  # the run is in runs/ from here on


def test_the_points_tried_are_every_point_the_writer_passes(tmp_path_factory):
    assert _points(tmp_path_factory) == POINTS


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    try:
        path = attempt(root, "ref", False, None, mp)
    finally:
        mp.undo()
    return tables(path)


def tables(run: Path) -> dict[str, dict]:
    return {n: {c: v for c, v in pq.read_table(run / f"{n}.parquet").to_pydict().items() if c != "run_id"}
            for n in TABLES}


def check_state(root: Path, run_id: str, point: str) -> None:
    """After an interruption: the earlier run whole, the interrupted one absent or valid, never broken."""
    runs = {r.run_id: r for r in list_runs(root)}
    assert runs["earlier"].ok
    if point in RENAMED:
        assert runs[run_id].ok, runs[run_id].error
    else:
        assert run_id not in runs, runs.get(run_id)


def _earlier(root: Path, monkeypatch) -> None:
    if not (root / "runs" / "earlier").exists():
        attempt(root, "earlier", False, None, monkeypatch)


@pytest.mark.parametrize("kind", ["kill", "interrupt"])
@pytest.mark.parametrize("point", POINTS)
def test_every_crash_point_resumes_to_the_uninterrupted_run(point, kind, reference, tmp_path, monkeypatch):
    _earlier(tmp_path, monkeypatch)
    before = len(PUBLISHED)
    assert attempt(tmp_path, "r", False, (point, kind), monkeypatch) is None
    check_state(tmp_path, "r", point)
    if kind == "interrupt":  # what the CLI reports as published is exactly what is in runs/
        assert [p.name for p in PUBLISHED[before:]] == (["r"] if point in RENAMED else [])
        assert not list((tmp_path / ".staging").glob("r")), "a Ctrl-C leaves no half-written staging folder"
    (left,) = [lo for lo in staging_leftovers(tmp_path) if lo.run_id == "r"] or [None]
    if point in RENAMED:
        assert left is None or left.published
    else:
        assert left is not None and not left.published and left.stages == 1
    assert attempt(tmp_path, "r", True, None, monkeypatch) is not None
    assert all(r.ok for r in list_runs(tmp_path))
    assert tables(tmp_path / "runs" / "r") == reference
    assert sorted(p.name for p in (tmp_path / ".staging").iterdir()) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stops=st.lists(st.tuples(st.sampled_from(POINTS), st.sampled_from(["kill", "interrupt"])), min_size=1, max_size=3))
def test_any_chain_of_interruptions_ends_in_the_uninterrupted_run(stops, reference, tmp_path, monkeypatch):
    """Interrupt the run, then interrupt its resumes too; a last resume always lands the same run."""
    root = tmp_path / uuid.uuid4().hex
    _earlier(root, monkeypatch)
    renamed = False
    for i, stop in enumerate(stops):
        attempt(root, "r", i > 0, stop, monkeypatch)
        renamed = renamed or stop[0] in RENAMED
        check_state(root, "r", "after-rename" if renamed else stop[0])
    attempt(root, "r", True, None, monkeypatch)
    assert all(r.ok for r in list_runs(root)) and tables(root / "runs" / "r") == reference
    assert list((root / ".staging").iterdir()) == []
