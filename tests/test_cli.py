"""The `python -m compute` command line, run as a user would: real processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compute", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "NEURON_ATLAS_QUIET": "0", **(env or {})}, timeout=600)


def test_run_then_list(tmp_path: Path, shared_mnist: Path):
    wh = tmp_path / "wh"
    r = cli("run", "--model", "mlp", "--widths", "32,16", "--epochs", "1", "--train-size", "500", "--no-images",
            "--eval-dataset", f"idx:{shared_mnist}", "--eval-size", "400", "--warehouse", str(wh), "--run-id", "m1")
    assert r.returncode == 0, r.stderr
    assert "published run m1" in r.stdout and "48 units probed" in r.stdout
    assert "training" in r.stderr and "ablation" in r.stderr and "unit/s" in r.stderr  # progress bars
    listed = cli("list", "--warehouse", str(wh))
    assert listed.returncode == 0 and "m1" in listed.stdout and "mlp" in listed.stdout
    # The environment variable picks the warehouse when --warehouse is absent.
    assert "m1" in cli("list", env={"NEURON_ATLAS_WAREHOUSE": str(wh)}).stdout
    import warehouse

    con = warehouse.connect(wh)
    assert con.execute("SELECT n_eval, eval_dataset FROM runs").fetchall() == [(400, f"idx:{shared_mnist}")]
    again = cli("run", "--model", "mlp", "--epochs", "1", "--train-size", "100", "--warehouse", str(wh), "--run-id", "m1")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args,message", [
    (["--model", "vgg99"], "unknown model 'vgg99'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "idx:/no/such/dir"], "is not a directory"),
    (["--epochs", "0"], "needs --checkpoint"),
    (["--epochs", "-1"], "expected a non-negative integer"),
    (["--widths", "12,x"], "comma-separated integers"),
    (["--run-id", "bad/id"], "invalid run id"),
    (["--eval-dataset", "idx:/no/such/dir"], "/no/such/dir is not a directory"),
])
def test_bad_input_is_named_and_nothing_is_published(tmp_path: Path, args: list[str], message: str):
    wh = tmp_path / "wh"
    r = cli("run", "--warehouse", str(wh), "--train-size", "100", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    for sub in ("runs", ".staging"):
        assert not (wh / sub).exists() or not any((wh / sub).iterdir())


def test_unwritable_warehouse(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("run", "--warehouse", str(blocker), "--epochs", "1", "--train-size", "100")
    assert r.returncode == 2 and f"{blocker} is not a folder, so it cannot hold" in r.stderr


def test_list_on_empty_warehouse_says_what_to_do(tmp_path: Path):
    r = cli("list", "--warehouse", str(tmp_path))
    assert r.returncode == 0 and "python -m compute run" in r.stdout
    # A mistyped --warehouse is not an empty warehouse, and a file is not one either: exit 2, one paragraph.
    missing, file = tmp_path / "typo", tmp_path / "a-file"
    file.write_text("x")
    for path, message in ((missing, f"no warehouse at {missing}: the folder does not exist"),
                          (file, f"{file} is not a folder, so it cannot hold the runs folder")):
        r = cli("list", "--warehouse", str(path))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
        assert not missing.exists()


def test_default_demo_run_reaches_95_percent(tmp_path: Path):
    """The demo settings (LeNet-5, mnist-5k, default epochs) must clear 95% test accuracy."""
    from compute.run.config import RunConfig
    from compute.run.pipeline import compute_run

    summary = compute_run(RunConfig(run_id="demo", images=None), tmp_path)
    assert summary.figures["test_acc"] >= 0.95


def test_layers_lists_units_shapes_and_receptive_fields():
    """By hand for LeNet-5: conv1 5x5 (padding 2); max-pool 2 then conv2 5x5 -> 5 + 1 + 4 * 2 = 14."""
    r = cli("layers", "--model", "lenet5")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[1:-1]}
    assert rows["conv1"] == ["conv", "relu", "NCHW", "6", "6x28x28", "5x5"]
    assert rows["conv2"] == ["conv", "relu", "NCHW", "16", "16x10x10", "14x14"]
    assert rows["fc1"] == ["linear", "relu", "NC", "120", "120", "whole", "input"]
    gelu = cli("layers", "--model", "mlp", "--activation", "gelu", "--widths", "8")
    assert gelu.stdout.splitlines()[1].split()[:3] == ["fc1", "linear", "gelu"]
    assert "4 layers, 226 units" in r.stdout
    wide = cli("layers", "--model", "cifar-convnet", "--input-shape", "3,32,32")
    assert "32x32 (whole image)" in wide.stdout and "conv3" in wide.stdout
