"""Label noise, training until the labels are fitted, and experiment sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import warehouse
from compute.datasets.sources import load_dataset, with_label_noise
from compute.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_label_noise_replaces_the_asked_fraction_with_uniform_labels():
    train = load_dataset("mnist-5k").train
    noisy = with_label_noise(train, 0.5, seed=1)
    replaced = 2000  # half of 4,000, drawn without replacement; ~1/10 of them keep their label by chance
    changed = int((noisy.labels != train.labels).sum())
    assert 0.85 * replaced < changed < 0.95 * replaced
    assert np.array_equal(with_label_noise(train, 0.5, seed=1).labels, noisy.labels)  # fixed by the seed
    assert not np.array_equal(with_label_noise(train, 0.5, seed=2).labels, noisy.labels)
    full = with_label_noise(train, 1.0, seed=0).labels.numpy()
    agreement = (full == train.labels.numpy()).mean()
    assert 0.07 < agreement < 0.13  # random labels agree with the truth about 1 time in 10
    assert np.bincount(full, minlength=10).min() > 300  # uniform over classes
    assert with_label_noise(train, 0.0, seed=0) is train
    with pytest.raises(DataError, match="--label-noise must be a fraction"):
        with_label_noise(train, 1.5, seed=0)


def test_sweep_groups_runs_trains_until_fitted_and_completes_missing_runs(tmp_path: Path):
    args = [sys.executable, "-m", "compute", "sweep", "--model", "mlp", "--widths", "128", "--train-size", "200",
            "--eval-size", "100", "--label-noise", "0,1", "--seeds", "0", "--epochs", "200",
            "--until-train-acc", "0.95", "--lr", "0.003", "--layers", "fc1", "--experiment", "mem", "--no-images",
            "--warehouse", str(tmp_path)]
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1"}
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rows = warehouse.connect(tmp_path).execute(
        "SELECT run_id, experiment, label_noise, epochs, train_acc, test_acc FROM runs ORDER BY label_noise").fetchall()
    assert [(x[0], x[1], x[2]) for x in rows] == [("mem-noise0-s0", "mem", 0.0), ("mem-noise1-s0", "mem", 1.0)]
    clean, memorized = rows
    assert clean[4] >= 0.95 and memorized[4] >= 0.95  # both fit their training labels...
    assert clean[3] < 200 and memorized[3] < 200  # ...and stopped before the cap
    assert memorized[3] > clean[3]  # random labels take longer to fit
    assert clean[5] > 0.6 and memorized[5] < 0.25  # only the clean network generalizes
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("already published; skipping") == 2
