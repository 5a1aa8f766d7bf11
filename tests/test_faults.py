"""Fault injection on real computations: each kind of interruption point of a run is hit with a real
SIGKILL (a child process that kills itself there) and with a real SIGINT (Ctrl-C in this process),
or a write fails as on a full disk; then ``--resume``.

Each time the warehouse must still open with every earlier run intact and the interrupted run either
absent or whole (never broken), Ctrl-C must say truthfully what was published, and ``--resume`` must
publish tables equal to an uninterrupted run's with the same seed. Every crash point of the writer,
alone and in chains, is tried on synthetic runs in ``tests/test_publish_protocol.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import warehouse
from compute.cli import main
from tests.run_copies import clone_run
from tests.test_publish_protocol import POINTS as WRITER_POINTS
from tests.test_publish_protocol import RENAMED
from warehouse.faults import ENV_VAR, LOG_VAR, SIGNAL_VAR
from warehouse.publish import RunWriter
from warehouse.validate import list_runs

RUN_ARGS = ["--model", "mlp", "--widths", "8", "--epochs", "2", "--train-size", "100", "--eval-size", "50",
            "--seed", "3", "--top-k", "1", "--actmax-steps", "2", "--actmax-restarts", "2"]  # a light images stage
# One point of each kind a run passes: loading, a training epoch, a work item, a finished stage, the
# last stage, a table, the checkpoint, then every step of the publish protocol.
CRASH_POINTS = ["after-load", "epoch-1", "statistics-item-1", "after-statistics", "after-images", "after-table-units",
                "after-checkpoint", "before-manifest", "after-manifest-tmp", "before-rename", "after-rename",
                "after-clean-stages"]
# Columns that legitimately differ between two computations of the same run.
VOLATILE = {"run_id", "created_at", "duration_s", "config"}


def _child(argv: list[str], env: dict[str, str], max_file_bytes: int | None, stderr: str | None = None) -> None:
    os.environ.update(env)
    if stderr:  # the server's stderr is not the test's: hand the messages back through a file
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    if max_file_bytes:  # every larger write then fails with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    sys.exit(main(["run", *argv]))


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    """Children forked from one server that has imported the compute step once (seconds saved per child)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["compute.cli", "compute.run.pipeline", "tests.test_faults"])
    return ctx


def start(p: multiprocessing.process.BaseProcess) -> None:
    """Start a forkserver child from a plain ``__main__``: the child re-runs this process's ``__main__``,
    which after a Streamlit app test in the same process (pytest-xdist runs many files in one) is
    dashboard/app.py."""
    main, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
    try:
        p.start()
    finally:
        sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def python_ctrl_c():
    """Python's own Ctrl-C handler while a test runs: a pytest-xdist worker ignores SIGINT (its
    controller handles Ctrl-C), and these tests interrupt runs with a real SIGINT to their own process."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def in_child(ctx, *argv: str, crash_at: str | None = None, max_file_bytes: int | None = None,
             stderr: Path | None = None) -> int:
    """``python -m compute run`` in a child process; its exit code (-9 when it killed itself)."""
    env = {"NEURON_ATLAS_QUIET": "1", **({ENV_VAR: crash_at} if crash_at else {})}
    p = ctx.Process(target=_child, args=(list(argv), env, max_file_bytes, str(stderr) if stderr else None))
    start(p)
    p.join(600)
    return p.exitcode


def tables(run_dir: Path) -> dict[str, dict[str, list]]:
    return {name: {c: v for c, v in pq.read_table(run_dir / f"{name}.parquet").to_pydict().items() if c not in VOLATILE}
            for name in warehouse.TABLES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An uninterrupted run, and every crash point it passed (in order)."""
    root = tmp_path_factory.mktemp("reference")
    log = root / "points.log"
    mp = pytest.MonkeyPatch()
    mp.setenv(LOG_VAR, str(log))
    try:
        assert main(["run", *RUN_ARGS, "--warehouse", str(root), "--run-id", "ref"]) == 0
    finally:
        mp.undo()
    return root / "runs" / "ref", list(dict.fromkeys(log.read_text().split()))


def test_the_points_tried_exist_and_cover_the_writer(reference):
    _, points = reference
    assert set(CRASH_POINTS) <= set(points)
    publish = points[points.index("after-table-unit_images"):]
    assert sorted(publish) == sorted(WRITER_POINTS), "test_publish_protocol must try every point of the writer"


def _check_interrupted(root: Path, run_id: str, point: str) -> None:
    """Earlier runs are whole; the interrupted one is absent, or whole once it was renamed into place."""
    runs = {r.run_id: r for r in list_runs(root)}
    interrupted = runs.pop(run_id, None)
    assert runs and all(r.ok for r in runs.values()), point
    assert (interrupted is not None and interrupted.ok) if point in RENAMED else interrupted is None, (point, interrupted)
    con = warehouse.connect(root)
    assert con.execute("SELECT count(*) FROM runs").fetchall() == [(len(runs) + (point in RENAMED),)], point


def _resume_equals(root: Path, run_id: str, expected: dict, point: str) -> None:
    assert main(["run", "--warehouse", str(root), "--run-id", run_id, "--resume"]) == 0, point
    assert main(["run", "--warehouse", str(root), "--run-id", run_id, "--resume"]) == 2, "resumed twice"
    assert all(r.ok for r in list_runs(root)), point
    assert tables(root / "runs" / run_id) == expected, point
    assert sorted(p.name for p in (root / ".staging").iterdir()) == [], point


@pytest.mark.parametrize("kind", [pytest.param("SIGKILL", marks=pytest.mark.slow), "SIGINT"])  # SIGKILL: 30 s
def test_one_run_interrupted_at_each_kind_of_point_in_turn_resumes_to_the_uninterrupted_run(
        kind, reference, forkserver, tmp_path, monkeypatch, capsys):
    """The run is interrupted at the first point, its resume at the second, and so on (a resume
    interrupted again is the harder case, and one full computation serves every point); after each,
    the warehouse is checked and Ctrl-C's message must be true. A last resume must then publish
    tables equal to the uninterrupted run's."""
    run, _ = reference
    root = tmp_path / "wh"
    clone_run(run, root, "earlier")
    resume: list[str] = []
    # After Ctrl-C at the rename the command cleans up itself, leaving nothing to resume; test_clean_ends
    # checks its message, and here the chain goes on to the point after it.
    for point in [p for p in CRASH_POINTS if (kind, p) != ("SIGINT", "after-rename")]:
        args = [*RUN_ARGS, "--warehouse", str(root), "--run-id", "r", *resume]
        if kind == "SIGKILL":
            assert in_child(forkserver, *args, crash_at=point) == -signal.SIGKILL, point
        else:
            monkeypatch.setenv(SIGNAL_VAR, "INT")
            monkeypatch.setenv(ENV_VAR, point)
            assert main(["run", *args]) == 130, point
            monkeypatch.delenv(ENV_VAR)
            err = capsys.readouterr().err
            if point in RENAMED:
                assert "Published and complete: r." in err and "nothing was published" not in err, err
            elif point not in RENAMED:
                assert "nothing was published" in err and ("--resume --run-id r" in err) == (point != "after-load"), err
        _check_interrupted(root, "r", point)
        # Ctrl-C before any stage finished leaves nothing to resume (the message said so): start again.
        resume = [] if (kind, point) == ("SIGINT", "after-load") else ["--resume"]
        if point == "epoch-1":  # without --resume, an interrupted run is not silently overwritten
            assert main(["run", *RUN_ARGS, "--warehouse", str(root), "--run-id", "r"]) == 2
            assert "--resume" in capsys.readouterr().err
    _resume_equals(root, "r", tables(run), kind)


@pytest.mark.parametrize("crash_at,limit,failed_write", [
    # the images stage's items: an averages item (its sums are image-sized) is the first over
    ("after-train", 150_000, "cannot write finished work item 'averages."),
    ("after-images", 60_000, "cannot write table unit_images"),  # unit_images.parquet (about 110 kB)
])
def test_a_full_disk_is_explained_and_the_run_resumes(reference, forkserver, tmp_path, crash_at, limit, failed_write):
    """A write that fails mid-run (here: a file-size limit, as a full disk would) ends the run with a
    message and exit code 2, publishes nothing, keeps the finished stages and leaves earlier runs whole."""
    run, _ = reference
    root = tmp_path / "wh"
    clone_run(run, root, "earlier")
    args = [*RUN_ARGS, "--warehouse", str(root), "--run-id", "full"]
    assert in_child(forkserver, *args, crash_at=crash_at) == -signal.SIGKILL
    log = tmp_path / "stderr"
    assert in_child(forkserver, "--warehouse", str(root), "--run-id", "full", "--resume", max_file_bytes=limit,
                    stderr=log) == 2
    err = log.read_text()
    assert failed_write in err and "File too large" in err and "Traceback" not in err, err
    assert [(r.run_id, r.ok) for r in list_runs(root)] == [("earlier", True)]
    assert (root / ".staging" / "full.stages" / "statistics.pt").is_file()
    assert not list((root / ".staging").rglob(".*.tmp"))  # no half-written stage file
    _resume_equals(root, "full", tables(run), crash_at)


def test_same_run_id_is_refused_while_running_and_other_ids_land(forkserver, tmp_path, capsys):
    tiny = ["--model", "mlp", "--widths", "8", "--epochs", "1", "--train-size", "100", "--eval-size", "50",
            "--no-images", "--warehouse", str(tmp_path)]
    with RunWriter(tmp_path, "busy"):
        assert main(["run", *tiny, "--run-id", "busy"]) == 2
        err = capsys.readouterr().err
        assert "is being computed right now" in err and f"pid {os.getpid()}" in err
        procs = [forkserver.Process(target=_child, args=([*tiny, "--run-id", rid], {"NEURON_ATLAS_QUIET": "1"}, None))
                 for rid in ("left", "right")]
        for p in procs:
            start(p)
        for p in procs:
            p.join(600)
        assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(r.run_id for r in list_runs(tmp_path) if r.ok) == ["left", "right"]


def test_resume_without_an_interrupted_run_is_explained(tmp_path, capsys):
    assert main(["run", "--warehouse", str(tmp_path), "--run-id", "ghost", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["run", "--warehouse", str(tmp_path), "--resume"]) == 2
    assert "--resume needs the --run-id" in capsys.readouterr().err
