"""A published run's ablation tables and the live what-if on its checkpoint, against the naive method."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ablation_models import naive_outcome
from compute.errors import ConfigError
from compute.nets.models import load_checkpoint
from compute.run.config import RunConfig
from compute.run.data import load_data
from compute.run.pipeline import compute_run
from warehouse.layout import CHECKPOINT
from compute.run.whatif import ablate_units, load_run, run_config
from warehouse.connect import connect


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wh")
    cfg = RunConfig(epochs=2, train_size=600, eval_size=200, run_id="abl", train_curves=True, images=None)
    summary = compute_run(cfg, root)
    return root, summary.path, cfg


def test_curves_and_auc_are_in_the_warehouse(run):
    root, _, _ = run
    con = connect(root)
    per_split = con.execute(
        'SELECT split, count(*), count(DISTINCT layer), count(DISTINCT "order") FROM ablation_curves GROUP BY split ORDER BY split'
    ).fetchall()
    assert per_split == [("eval", 5 * 8 * 21, 5, 4), ("train", 5 * 8 * 21, 5, 4)]
    (eval_acc, n_train, train_acc), = con.execute("SELECT eval_acc, n_train, train_acc FROM runs").fetchall()
    intact = con.execute(
        "SELECT split, min(accuracy), max(accuracy) FROM ablation_curves WHERE fraction = 0 GROUP BY split ORDER BY split"
    ).fetchall()
    assert intact[0] == ("eval", pytest.approx(eval_acc, abs=1e-12), pytest.approx(eval_acc, abs=1e-12))
    assert intact[1][1] == intact[1][2] == pytest.approx(train_acc, abs=1e-12)
    assert n_train == 600
    aucs = con.execute("SELECT count(*), min(auc), max(auc) FROM ablation_auc").fetchall()[0]
    assert aucs[0] == 2 * 5 * 8 and 0 < aucs[1] <= aucs[2]


def test_units_table_deltas_equal_naive(run):
    root, path, cfg = run
    model, _ = load_checkpoint(path / CHECKPOINT)
    _, eval_set = load_data(cfg)
    con = connect(root)
    for layer, unit, acc, loss in con.execute(
            "SELECT layer, unit, abl_acc_delta, abl_loss_delta FROM units WHERE unit % 17 = 3").fetchall():
        base = naive_outcome(model, eval_set, {})
        want = naive_outcome(model, eval_set, {layer: [unit]})
        assert acc == pytest.approx(want.accuracy - base.accuracy, abs=1e-12)
        assert loss == pytest.approx(want.loss - base.loss, abs=1e-5)


@pytest.mark.parametrize("split", ["eval", "train"])
def test_whatif_equals_naive(run, split):
    _, path, cfg = run
    units = {"conv2": [0, 7], "fc1": [3, 4, 5, 119]}
    got = ablate_units(path, units, split=split)
    model, _ = load_checkpoint(path / CHECKPOINT)
    splits, eval_set = load_data(cfg)
    data = eval_set if split == "eval" else splits.train
    base, want = naive_outcome(model, data, {}), naive_outcome(model, data, units)
    assert got.n_examples == len(data) and got.units == units
    assert got.acc_delta == pytest.approx(want.accuracy - base.accuracy, abs=1e-12)
    np.testing.assert_allclose(got.class_acc_delta, want.class_accuracy - base.class_accuracy, rtol=0, atol=1e-12)
    assert got.loss_delta == pytest.approx(want.loss - base.loss, abs=1e-5)
    np.testing.assert_allclose(got.class_loss_delta, want.class_loss - base.class_loss, atol=1e-5)


def test_whatif_loads_a_run_once(run):
    _, path, _ = run
    assert load_run(path) is load_run(path)
    assert run_config(path).train_curves is True


def test_whatif_errors_name_the_problem(run, tmp_path):
    _, path, _ = run
    with pytest.raises(ConfigError, match="unknown layer 'fc9'.*conv1, conv2, fc1, fc2"):
        ablate_units(path, {"fc9": [0]})
    with pytest.raises(ConfigError, match="units 0..83; got 84"):
        ablate_units(path, {"fc2": [84]})
    with pytest.raises(ConfigError, match="no units selected"):
        ablate_units(path, {"fc2": []})
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        ablate_units(path, {"fc2": [1]}, split="test")
    with pytest.raises(ConfigError, match="not a published run"):
        ablate_units(tmp_path, {"fc2": [1]})
