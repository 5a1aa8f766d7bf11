"""Clean ends: an interrupt at any point prints what is true, a published run leaves no staging behind
(or `python -m compute gc` reports and removes it), and the dashboard's checkpoint is loaded only when
it is exactly the one published.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import warehouse.publish
from compute.cli import main
from tests.dashboard_fixtures import RUN_ID
from tests.run_copies import clone_run, refresh_manifest
from tests.test_cli_inputs import Planted
from warehouse.faults import ENV_VAR
from warehouse.cleanup import staging_leftovers
from warehouse.publish import RunWriter
from warehouse.validate import list_runs

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--widths", "8", "--epochs", "1", "--train-size", "100", "--eval-size", "50", "--no-images"]


def _interrupt_at(monkeypatch, point: str) -> None:
    """Ctrl-C (a KeyboardInterrupt) when the run reaches ``point``."""
    def crash(p: str) -> None:
        if p == point:
            raise KeyboardInterrupt
    import compute.run.pipeline
    import compute.run.stage_store

    for module in (warehouse.publish, compute.run.stage_store, compute.run.pipeline):
        monkeypatch.setattr(module, "crash_point", crash)


def test_ctrl_c_after_the_rename_says_the_run_was_published_and_leaves_nothing(monkeypatch, tmp_path, capsys):
    _interrupt_at(monkeypatch, "after-rename")
    assert main(["run", *TINY, "--warehouse", str(tmp_path), "--run-id", "r"]) == 130
    err = capsys.readouterr().err
    assert "Published and complete: r." in err and "nothing was published" not in err
    assert [(r.run_id, r.ok) for r in list_runs(tmp_path)] == [("r", True)]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_ctrl_c_during_a_stage_says_nothing_was_published_and_how_to_resume(monkeypatch, tmp_path, capsys):
    _interrupt_at(monkeypatch, "after-train")
    assert main(["run", *TINY, "--warehouse", str(tmp_path), "--run-id", "r"]) == 130
    err = capsys.readouterr().err
    assert "nothing was published" in err and "--resume --run-id r" in err
    assert list_runs(tmp_path) == []
    (left,) = staging_leftovers(tmp_path)
    assert left.run_id == "r" and not left.published and left.stages >= 1


def test_a_kill_right_after_the_rename_leaves_leftovers_that_gc_reports_and_removes(tmp_path, capsys):
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1", ENV_VAR: "after-rename"}
    killed = subprocess.run([sys.executable, "-m", "compute", "run", *TINY, "--warehouse", str(tmp_path),
                             "--run-id", "k"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [(r.run_id, r.ok) for r in list_runs(tmp_path)] == [("k", True)]  # published whole
    assert (tmp_path / ".staging" / "k.lock").exists() and (tmp_path / ".staging" / "k.stages").is_dir()
    assert main(["list", "--warehouse", str(tmp_path)]) == 0
    assert "left staging files behind" in capsys.readouterr().out
    assert main(["gc", "--warehouse", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "k: leftovers of the published run" in out and "--remove" in out
    assert (tmp_path / ".staging" / "k.stages").is_dir()  # listing removes nothing
    assert main(["gc", "--remove", "--warehouse", str(tmp_path)]) == 0
    assert list((tmp_path / ".staging").iterdir()) == [] and list_runs(tmp_path)[0].ok


def test_gc_leaves_running_computations_alone_and_removes_abandoned_ones(tmp_path, capsys):
    abandoned = tmp_path / ".staging" / "old.stages"
    abandoned.mkdir(parents=True)
    torch.save({"epoch": 1}, abandoned / "train-epoch.pt")
    (tmp_path / ".staging" / "old").mkdir()
    with RunWriter(tmp_path, "busy"):
        assert main(["gc", "--warehouse", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "old: interrupted run with 1 finished stage(s)" in out and "busy" not in out
        assert main(["gc", "--remove", "--warehouse", str(tmp_path)]) == 0
        assert sorted(p.name for p in (tmp_path / ".staging").iterdir()) == ["busy", "busy.lock"]


@pytest.fixture()
def run_copy(warehouse_root: Path, tmp_path: Path) -> Path:
    return clone_run(warehouse_root / "runs" / RUN_ID, tmp_path, "copy")


def test_what_if_refuses_a_checkpoint_that_is_not_the_published_one(run_copy, tmp_path):
    from compute.errors import AtlasError
    from compute.run.whatif import ablate_units

    ckpt = run_copy / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    with pytest.raises(AtlasError, match="does not match the SHA-256 in its manifest"):
        ablate_units(run_copy, {"fc1": [3]})


def test_what_if_never_unpickles_code_even_with_a_matching_hash(run_copy, tmp_path):
    """A planted checkpoint whose hash was also planted in the manifest: weights_only loading refuses it."""
    from compute.errors import AtlasError
    from compute.run.whatif import ablate_units

    marker = tmp_path / "code-ran"
    torch.save({"spec": None, "state_dict": {}, "x": Planted(marker)}, run_copy / "checkpoint.pt")
    refresh_manifest(run_copy)
    with pytest.raises(AtlasError, match="never unpickled"):
        ablate_units(run_copy, {"fc1": [3]})
    assert not marker.exists()
