"""Cumulative ablation curves: end points against independent computations, orders against the naive method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.ablation_models import digits, naive_outcome, trained_model
from compute.ablation.outcome import outcome
from compute.ablation.curves import FRACTIONS, UnitScores, ablation_curves, groups, normalized_auc, unit_orders
from compute.ablation.engine import AblationEngine
from compute.measure.stats import evaluation_stats, selectivity


@pytest.fixture(scope="module")
def lenet_curves():
    model = trained_model("lenet5")
    _, data = digits()
    engine = AblationEngine(model)
    base, single = engine.single_unit(data)
    stats = evaluation_stats(model, model.probe_modules(), data)
    scores = {n: UnitScores(selectivity(stats.layers[n].class_means["rect"])["selectivity"], single[n].loss_delta)
              for n in model.probes}
    curves, aucs = ablation_curves(engine, data, scores, split="eval")
    return model, data, base, scores, curves, aucs


def rows(curves: dict[str, list], **where) -> list[dict]:
    out = [dict(zip(curves, values)) for values in zip(*curves.values())]
    return [r for r in out if all(r[k] == v for k, v in where.items())]


def test_table_shape_and_grid(lenet_curves):
    _, _, _, _, curves, aucs = lenet_curves
    n_orders = 5 + 3
    layers = ["conv1", "conv2", "fc1", "fc2", "last2"]
    assert len(curves["split"]) == len(layers) * n_orders * len(FRACTIONS)
    assert len(aucs["split"]) == len(layers) * n_orders
    assert sorted(set(curves["layer"])) == sorted(layers)
    for r in rows(curves, layer="fc1"):
        assert r["n_units"] == 120 and r["n_ablated"] == round(r["fraction"] * 120)
    assert {r["seed"] for r in rows(curves, order="random")} == {0, 1, 2, 3, 4}
    assert {r["seed"] for r in rows(curves, order="importance")} == {None}
    assert rows(curves, layer="last2")[0]["n_units"] == 120 + 84


def test_fraction_zero_is_the_intact_model(lenet_curves):
    _, _, base, _, curves, _ = lenet_curves
    for r in rows(curves, fraction=0.0):  # float rounding apart: conv2's suffix sums fc1 by channel parts
        assert r["accuracy"] == pytest.approx(base.accuracy, abs=1e-12)
        assert r["loss"] == pytest.approx(base.loss, abs=1e-6)


def test_last_hidden_layer_fully_ablated_leaves_the_output_bias(lenet_curves):
    """All of fc2 zeroed: logits = fc3's bias for every example, an independent computation."""
    model, data, _, _, curves, _ = lenet_curves
    bias = model.fc3.bias.detach()
    pick = int(bias.argmax())
    share = float((data.labels == pick).double().mean())
    loss = float(F.cross_entropy(bias.expand(len(data), -1), data.labels))
    for layer in ("fc2", "last2"):
        for r in rows(curves, layer=layer, fraction=1.0):
            assert r["accuracy"] == pytest.approx(share, abs=1e-12)
            assert r["loss"] == pytest.approx(loss, abs=1e-5)


def test_every_layer_fully_ablated_is_chance_on_a_balanced_set(lenet_curves):
    """Any layer all zero makes the logits constant: one class predicted, 30 of 300 examples right."""
    _, data, _, _, curves, _ = lenet_curves
    assert torch.bincount(data.labels).tolist() == [30] * 10
    for r in rows(curves, fraction=1.0):
        assert r["accuracy"] == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("layer,order,seed,fraction", [
    ("conv2", "random", 3, 0.5), ("fc1", "selectivity_high_first", None, 0.3),
    ("fc1", "importance", None, 0.1), ("last2", "selectivity_low_first", None, 0.65)])
def test_curve_points_equal_naive_zeroing_of_the_same_units(lenet_curves, layer, order, seed, fraction):
    model, data, _, scores, curves, _ = lenet_curves
    members = groups(list(scores))[layer]
    pooled = UnitScores(np.concatenate([scores[m].selectivity for m in members]),
                        np.concatenate([scores[m].importance for m in members]))
    perm = next(p for o, s, p in unit_orders(pooled) if o == order and s == seed)
    chosen = perm[:round(fraction * len(perm))]
    sizes = np.cumsum([0] + [len(scores[m].selectivity) for m in members])
    units = {m: [int(u - a) for u in chosen if a <= u < b] for m, a, b in zip(members, sizes[:-1], sizes[1:])}
    want = naive_outcome(model, data, units)
    (r,) = rows(curves, layer=layer, order=order, seed=seed, fraction=fraction)
    assert r["accuracy"] == pytest.approx(want.accuracy, abs=1e-12)
    assert r["loss"] == pytest.approx(want.loss, abs=1e-5)


def test_orders_follow_their_scores():
    s = UnitScores(np.array([0.5, 0.9, 0.1, 0.9]), np.array([0.2, -0.1, 0.7, 0.0]))
    live = UnitScores(s.selectivity, s.importance, np.array([True, False, True, True]))
    for order, _, perm in unit_orders(live, seeds=(0,)):  # dead units are never ordered or removed
        assert sorted(perm.tolist()) == [0, 2, 3], order
    assert [p.tolist() for o, _, p in unit_orders(live) if o == "selectivity_low_first"] == [[2, 0, 3]]
    orders = {(o, seed): p.tolist() for o, seed, p in unit_orders(s, seeds=(0,))}
    assert orders[("selectivity_high_first", None)] == [1, 3, 0, 2]  # ties keep unit order
    assert orders[("selectivity_low_first", None)] == [2, 0, 1, 3]
    assert orders[("importance", None)] == [2, 0, 3, 1]
    assert sorted(orders[("random", 0)]) == [0, 1, 2, 3]


def test_random_order_curve_falls_on_average(lenet_curves):
    _, _, base, _, curves, _ = lenet_curves
    for layer in ("conv2", "fc1", "fc2", "last2"):
        mean = np.array([np.mean([r["accuracy"] for r in rows(curves, layer=layer, order="random", fraction=f)])
                         for f in FRACTIONS])
        assert mean[0] == pytest.approx(base.accuracy, abs=1e-12) and mean[-1] == pytest.approx(0.1)
        # Monotone-ish: never more than 5 points above any earlier value, and falling overall.
        assert np.all(mean <= np.maximum.accumulate(mean) + 0.05)
        assert mean[len(mean) // 2] <= mean[0] + 0.02


def test_normalized_auc_is_the_trapezoid_over_intact_accuracy(lenet_curves):
    _, _, base, _, curves, aucs = lenet_curves
    acc = [r["accuracy"] for r in rows(curves, layer="fc1", order="importance")]
    by_hand = sum((a + b) / 2 * 0.05 for a, b in zip(acc, acc[1:])) / base.accuracy
    (row,) = [dict(zip(aucs, v)) for v in zip(*aucs.values()) if dict(zip(aucs, v))["layer"] == "fc1" and dict(zip(aucs, v))["order"] == "importance"]
    assert row["auc"] == pytest.approx(by_hand, abs=1e-12)
    assert normalized_auc(np.array([0.0, 1.0]), np.array([0.8, 0.8])) == pytest.approx(1.0)
    assert np.isnan(normalized_auc(np.array([0.0, 1.0]), np.array([0.0, 0.0])))


def test_train_split_uses_the_training_labels():
    model = trained_model("mlp")
    train_set, _ = digits()
    engine = AblationEngine(model)
    scores = {n: UnitScores(np.zeros(128), np.zeros(128)) for n in model.probes}
    curves, _ = ablation_curves(engine, train_set, scores, split="train", seeds=(0,),
                                fractions=np.array([0.0, 1.0]))
    assert set(curves["split"]) == {"train"}
    intact = outcome(model, train_set)
    assert all(a == pytest.approx(intact.accuracy, abs=1e-12) for a, f in zip(curves["accuracy"], curves["fraction"]) if f == 0.0)
