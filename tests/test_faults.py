"""Fault injection: SIGKILL the compute process at many points of a real run, or make its writes
fail as on a full disk, then resume.

Each time the warehouse must still open with every earlier run intact and the failed run absent;
``--resume`` must then publish a run equal to an uninterrupted one with the same seed.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import warehouse
from warehouse.faults import ENV_VAR
from tests.run_copies import clone_run
from warehouse.publish import RunWriter
from warehouse.validate import list_runs

REPO = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--model", "lenet5", "--epochs", "2", "--train-size", "500", "--eval-size", "200", "--seed", "3",
            "--top-k", "1", "--actmax-steps", "2", "--actmax-restarts", "2"]  # a light images stage
CRASH_POINTS = ["after-load", "epoch-1", "after-train", "after-statistics", "after-table-units", "before-rename"]
# Columns that legitimately differ between two computations of the same run.
VOLATILE = {"run_id", "created_at", "duration_s", "config"}


def compute(*args: str, crash_at: str | None = None, max_file_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m compute run``; ``max_file_bytes`` makes every larger write fail as on a full disk."""
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1"}
    env.pop(ENV_VAR, None)
    if crash_at:
        env[ENV_VAR] = crash_at

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "compute", "run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit_files if max_file_bytes else None)


def tables(run_dir: Path) -> dict[str, dict[str, list]]:
    return {name: {c: v for c, v in pq.read_table(run_dir / f"{name}.parquet").to_pydict().items() if c not in VOLATILE}
            for name in warehouse.TABLES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    r = compute(*RUN_ARGS, "--warehouse", str(root), "--run-id", "ref")
    assert r.returncode == 0, r.stderr
    return root / "runs" / "ref"


def test_sigkill_at_every_stage_then_resume_equals_uninterrupted(reference: Path, tmp_path: Path):
    root = tmp_path / "wh"
    clone_run(reference, root, "earlier")
    expected = tables(reference)
    for point in CRASH_POINTS:
        run_id = f"crash-{point}"
        killed = compute(*RUN_ARGS, "--warehouse", str(root), "--run-id", run_id, crash_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        # The warehouse opens, the earlier run is whole, the killed run is invisible.
        runs = list_runs(root)
        assert [(r.run_id, r.ok) for r in runs] == [("earlier", True)], point
        con = warehouse.connect(root)
        assert con.execute("SELECT count(*) FROM units").fetchall() == [(226,)], point
        if point == "epoch-1":  # without --resume, an interrupted run is not silently overwritten
            again = compute("--warehouse", str(root), "--run-id", run_id)
            assert again.returncode == 2 and "--resume" in again.stderr
        resumed = compute("--warehouse", str(root), "--run-id", run_id, "--resume")
        assert resumed.returncode == 0, (point, resumed.stderr)
        assert tables(root / "runs" / run_id) == expected, point
        shutil.rmtree(root / "runs" / run_id)
    assert sorted(p.name for p in (root / ".staging").iterdir()) == []


@pytest.mark.parametrize("crash_at,failed_write", [
    ("after-train", "cannot write finished stage 'images'"),  # images.pt (about 9 MB) is the first file over 1 MB
    ("after-images", "cannot write table unit_images"),  # unit_images.parquet (about 5 MB)
])
def test_a_full_disk_is_explained_and_the_run_resumes(reference: Path, tmp_path: Path, crash_at: str, failed_write: str):
    """A write that fails mid-run (here: a 1 MB file-size limit, as a full disk would) ends the run with a
    message and exit code 2, publishes nothing, keeps the finished stages and leaves earlier runs whole."""
    root = tmp_path / "wh"
    clone_run(reference, root, "earlier")
    args = [*RUN_ARGS, "--warehouse", str(root), "--run-id", "full"]
    assert compute(*args, crash_at=crash_at).returncode == -signal.SIGKILL
    full = compute("--warehouse", str(root), "--run-id", "full", "--resume", max_file_bytes=1 << 20)
    assert full.returncode == 2, full.stderr
    assert failed_write in full.stderr and "File too large" in full.stderr and "Traceback" not in full.stderr
    assert [(r.run_id, r.ok) for r in list_runs(root)] == [("earlier", True)]
    assert (root / ".staging" / "full.stages" / "statistics.pt").is_file()
    assert not list((root / ".staging").rglob(".*.tmp"))  # no half-written stage file
    resumed = compute("--warehouse", str(root), "--run-id", "full", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert tables(root / "runs" / "full") == tables(reference)


def test_same_run_id_is_refused_while_running_and_other_ids_land(tmp_path: Path):
    with RunWriter(tmp_path, "busy"):
        r = compute("--epochs", "1", "--train-size", "100", "--warehouse", str(tmp_path), "--run-id", "busy")
        assert r.returncode == 2 and "is being computed right now" in r.stderr and f"pid {os.getpid()}" in r.stderr
        procs = [subprocess.Popen([sys.executable, "-m", "compute", "run", "--model", "mlp", "--widths", "8",
                                   "--epochs", "1", "--train-size", "100", "--eval-size", "50", "--no-images",
                                   "--warehouse", str(tmp_path), "--run-id", rid], cwd=REPO,
                                  env={**os.environ, "NEURON_ATLAS_QUIET": "1"}, stderr=subprocess.PIPE)
                 for rid in ("left", "right")]
        assert [p.wait(timeout=600) for p in procs] == [0, 0]
    assert sorted(r.run_id for r in list_runs(tmp_path) if r.ok) == ["left", "right"]


def test_resume_without_an_interrupted_run_is_explained(tmp_path: Path):
    r = compute("--warehouse", str(tmp_path), "--run-id", "ghost", "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    r = compute("--warehouse", str(tmp_path), "--resume")
    assert r.returncode == 2 and "--resume needs the --run-id" in r.stderr
