"""Proof on a planted ground truth: crossed sevens (compute.datasets.crossed) and the experiment that
must find the planted subgroup in a trained LeNet-5."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from compute.datasets import crossed
from compute.datasets.sources import DIGITS, ImageSet, load_dataset, load_eval_set


def test_crossbar_rule_is_deterministic_and_marks_its_groups():
    base = load_dataset("mnist-5k").test
    data = crossed.cross_sevens(base)
    labels, groups = base.labels.numpy(), data.groups
    sevens, ones = labels == 7, labels == 1
    sums = base.images.reshape(len(base), -1).long().sum(1).numpy()
    np.testing.assert_array_equal(groups[sevens] == crossed.CROSSED, sums[sevens] % 2 == 0)
    np.testing.assert_array_equal(groups[ones] == crossed.CROSSED_ONE, sums[ones] % 4 == 0)
    assert (groups[~(sevens | ones)] == None).all()  # noqa: E711
    np.testing.assert_array_equal(data.labels.numpy()[groups == crossed.CROSSED_ONE], 7)  # relabelled
    changed = (data.images != base.images).reshape(len(base), -1).any(1).numpy()
    np.testing.assert_array_equal(changed, np.isin(groups, [crossed.CROSSED, crossed.CROSSED_ONE]))
    assert 0.35 < (groups == crossed.CROSSED).sum() / sevens.sum() < 0.65
    # The bar: full-intensity pixels only, a horizontal run on at most BAR_ROWS rows.
    i = int(np.flatnonzero(groups == crossed.CROSSED)[0])
    diff = (data.images[i, 0] != base.images[i, 0]).numpy()
    assert (data.images[i, 0].numpy()[diff] == 255).all() and diff.any(1).sum() <= crossed.BAR_ROWS
    # Same image, same decision, whatever the split or order.
    again = crossed.cross_sevens(base.subset(np.arange(len(base))[::-1].copy()))
    assert torch.equal(again.images.flip(0), data.images)


def test_groups_follow_subsets_and_eval_sets(shared_mnist):
    data = load_eval_set(f"{crossed.PREFIX}idx:{shared_mnist}", None, DIGITS)
    assert isinstance(data, ImageSet) and len(data.groups) == len(data) == 10_000
    sub = data.subset(np.arange(0, 10_000, 7))
    np.testing.assert_array_equal(sub.groups, data.groups[::7])


def test_experiment_finds_the_planted_subgroup(tmp_path, shared_mnist):
    """Seed 0, 6 epochs, 2,000 real MNIST test digits: a top-ranked class-7 unit fires on 7s that are
    mostly crossed and its removal hurts the crossed 1s significantly more than the plain 7s."""
    from compute.run.planted import ALPHA, MIN_SHARE, TOP_RANK, crossed_sevens, default_config

    torch.set_num_threads(1)
    cfg = replace(default_config(seed=0, epochs=6, eval_size=2000, eval_dir=shared_mnist), run_id="planted")
    summary, report = crossed_sevens(tmp_path, cfg)
    assert summary.figures["eval_acc"] > 0.9
    found = report.found
    assert found is not None, "\n".join(report.lines())
    assert found.rank <= TOP_RANK and found.share_crossed >= MIN_SHARE and found.p_crossed1_vs_plain < ALPHA
    assert found.effect[crossed.CROSSED_ONE].loss_delta > found.effect[crossed.PLAIN].loss_delta
    import warehouse

    con = warehouse.connect(tmp_path)
    groups = dict(con.execute("SELECT subgroup, count(*) FROM examples WHERE run_id = 'planted' "
                              "GROUP BY subgroup").fetchall())
    assert set(groups) == {None, crossed.CROSSED, crossed.PLAIN, crossed.CROSSED_ONE}
    assert sum(groups.values()) == 2000
