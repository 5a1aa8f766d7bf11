"""Every stored statistic of a real run, recomputed independently of the code that wrote it.

The recomputation uses a hand-written LeNet-5 forward pass (no hooks), one backward pass per
example, numpy group-bys and weight surgery for ablation, and compares with the warehouse.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compute.datasets.sources import stratified_subset, load_dataset
from compute.nets.models import LeNet5
from compute.measure.stats import anomaly, selectivity, strongest_anomaly
from compute.measure.train import TrainConfig, train

LAYERS = ("conv1", "conv2", "fc1", "fc2")


def manual_forward(model: LeNet5, x: torch.Tensor) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """LeNet-5 written out by hand: {layer: (pre-activation, post-ReLU)} and the logits."""
    c1 = model.conv1(x)
    a1 = c1.relu()
    c2 = model.conv2(F.max_pool2d(a1, 2))
    a2 = c2.relu()
    f1 = model.fc1(F.max_pool2d(a2, 2).flatten(1))
    a3 = f1.relu()
    f2 = model.fc2(a3)
    a4 = f2.relu()
    return {"conv1": (c1, a1), "conv2": (c2, a2), "fc1": (f1, a3), "fc2": (f2, a4)}, model.fc3(a4)


@pytest.fixture(scope="module")
def per_example(small_run_artifacts):
    """Per-example unit scalars from one backward pass per example, as {layer: {field: (N, U)}}."""
    model, eval_set, _ = small_run_artifacts
    model = model.eval()
    out = {name: {f: [] for f in ("act", "rect", "grad", "tgrad", "taylor", "peak", "post", "effect",
                                                   "ok")} for name in LAYERS}
    for i in range(len(eval_set)):
        x = eval_set.floats(i, i + 1)
        acts, logits = manual_forward(model, x)
        loss = F.cross_entropy(logits, eval_set.labels[i:i + 1])
        grads = torch.autograd.grad(loss, [acts[n][1] for n in LAYERS] + [acts[n][0] for n in LAYERS])
        for name, g, gz in zip(LAYERS, grads[:len(LAYERS)], grads[len(LAYERS):]):
            pre, post = acts[name]
            dims = tuple(range(2, pre.dim()))
            mean = (lambda t: t.mean(dims)) if dims else (lambda t: t)
            out[name]["act"].append(mean(pre).detach()[0].numpy())
            out[name]["rect"].append(mean(post).detach()[0].numpy())
            out[name]["grad"].append(-(g.sum(dims) if dims else g)[0].numpy())
            # The training signal: autograd's own gradient at the pre-activation tensor.
            out[name]["tgrad"].append(-(gz.sum(dims) if dims else gz)[0].numpy())
            out[name]["taylor"].append(np.abs(mean(g * post).detach()[0].numpy()))
            out[name]["peak"].append((post.amax(dims) if dims else post).detach()[0].numpy())
            out[name]["post"].append(post.detach()[0].reshape(post.shape[1], -1).numpy())  # (U, positions)
            # First-order loss change of zeroing the unit: sum_p (-dL/da_p) * a_p.
            out[name]["effect"].append(-((g * post).sum(dims) if dims else g * post).detach()[0].numpy())
            out[name]["ok"].append(bool(logits.argmax(1)[0] == eval_set.labels[i]))
    return {n: {f: np.stack(v) for f, v in d.items()} for n, d in out.items()}, eval_set.labels.numpy()


def stored(con, table: str, layer: str, columns: str, order: str) -> np.ndarray:
    return np.array(con.execute(
        f"SELECT {columns} FROM {table} WHERE run_id = 'small' AND layer = ? ORDER BY {order}", [layer]
    ).fetchall(), dtype=float)


@pytest.mark.parametrize("layer", LAYERS)
def test_class_means_gradients_and_taylor_match_manual_recomputation(small_run_artifacts, per_example, layer):
    _, _, con = small_run_artifacts
    values, labels = per_example
    v = values[layer]
    rows = stored(con, "unit_classes", layer, "mean_act, mean_rect, grad_mean, grad_abs_mean, taylor, frac_active, "
                  "train_grad_mean", "unit, class")
    n_units = v["act"].shape[1]
    rows = rows.reshape(n_units, 10, 7)
    for c in range(10):
        m = labels == c
        np.testing.assert_allclose(rows[:, c, 0], v["act"][m].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows[:, c, 1], v["rect"][m].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows[:, c, 2], v["grad"][m].mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows[:, c, 3], np.abs(v["grad"][m]).mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows[:, c, 4], v["taylor"][m].mean(0), rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(rows[:, c, 5], (v["rect"][m] > 0).mean(0))
        np.testing.assert_allclose(rows[:, c, 6], v["tgrad"][m].mean(0), rtol=1e-4, atol=1e-7)
    units = stored(con, "units", layer, "mean_act, mean_rect, max_act, frac_active, grad_mean, taylor, taylor_norm, "
                   "train_grad_mean, n_active", "unit")
    np.testing.assert_allclose(units[:, 0], v["act"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(units[:, 1], v["rect"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(units[:, 2], v["peak"].max(0), rtol=1e-5, atol=1e-6)  # float32, batched vs one by one
    np.testing.assert_allclose(units[:, 3], (v["rect"] > 0).mean(0))
    np.testing.assert_allclose(units[:, 4], v["grad"].mean(0), rtol=1e-4, atol=1e-7)
    taylor = v["taylor"].mean(0)
    np.testing.assert_allclose(units[:, 5], taylor, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(units[:, 6], taylor / np.linalg.norm(taylor), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(units[:, 7], v["tgrad"].mean(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(units[:, 8], (v["rect"] > 0).sum(0))
    # Where a unit never fires nothing reaches it; where it always fires both signals agree.
    silent = (v["rect"] > 0).sum(0) == 0
    np.testing.assert_array_equal(units[silent, 7], 0.0)


@pytest.mark.parametrize("layer", LAYERS)
def test_firing_and_specialization_match_a_naive_loop(small_run_artifacts, per_example, layer):
    """fire_threshold, frac_fire, fire_effect and specialization, recomputed with plain loops over
    examples from the hand-written forward pass (docs/metrics.md, When a unit fires; Subset specialization)."""
    _, _, con = small_run_artifacts
    values, labels = per_example
    v = values[layer]
    post, effect, ok = v["post"].astype(np.float64), v["effect"].astype(np.float64), np.array(v["ok"])
    n, n_units, _ = post.shape
    thr = stored(con, "units", layer, "fire_threshold, n_active", "unit")
    labels_arr = np.asarray(labels)
    ok_all = np.array(v["ok"], dtype=bool)
    # The weight's reference: per class, the largest removal cost of any unit of any layer.
    cost_max = [max(np.clip(np.asarray(values[name]["effect"], dtype=np.float64)[(labels_arr == c) & ok_all], 0, None)
                    .sum(0).max() for name in LAYERS) for c in range(10)]
    rows = stored(con, "unit_classes", layer, "frac_fire, fire_effect, specialization", "unit, class").reshape(
        n_units, 10, 3)
    for u in range(n_units):
        # Each position standardized over the examples (a constant position gives 0), the largest over positions.
        z = np.zeros((n, post.shape[2]))
        for p in range(post.shape[2]):
            col = post[:, u, p]
            sd = col.std()
            if sd > 1e-6:
                z[:, p] = (col - col.mean()) / sd
        value = z.max(1)
        want_thr = value.mean() + value.std()
        assert thr[u, 0] == pytest.approx(want_thr, rel=1e-4, abs=1e-5)
        for c in range(10):
            idx = [i for i in range(n) if labels[i] == c]
            fire = [i for i in idx if value[i] > want_thr + 1e-9]
            fire_ok = [i for i in fire if ok[i]]
            ok_idx = [i for i in idx if ok[i]]
            frac = len(fire) / len(idx)
            assert rows[u, c, 0] == pytest.approx(frac, abs=1e-9)
            if thr[u, 1] == 0:  # dead: no effect, no score
                assert np.isnan(rows[u, c, 1]) and np.isnan(rows[u, c, 2])
                continue
            if fire_ok:
                assert rows[u, c, 1] == pytest.approx(sum(effect[i, u] for i in fire_ok) / len(fire_ok), rel=1e-3, abs=1e-7)
            cost = sum(max(effect[i, u], 0.0) for i in ok_idx)
            if len(fire_ok) >= 5 and cost > 0:
                share = sum(max(effect[i, u], 0.0) for i in fire_ok) / cost
                weight = (cost / cost_max[c]) ** 0.25
                assert rows[u, c, 2] == pytest.approx(share * (1 - frac) ** 2 * weight, rel=1e-3, abs=1e-6)
            else:
                assert np.isnan(rows[u, c, 2])
    best = stored(con, "units", layer, "specialization_max, specialization_class", "unit")
    spec = rows[:, :, 2]
    for u in range(n_units):
        if np.isnan(spec[u]).all():
            assert np.isnan(best[u, 0]) and np.isnan(best[u, 1])
        else:
            assert best[u, 0] == pytest.approx(np.nanmax(spec[u])) and best[u, 1] == np.nanargmax(spec[u])


@pytest.mark.parametrize("layer", LAYERS)
def test_selectivity_and_anomaly_follow_from_stored_class_means(small_run_artifacts, layer):
    _, _, con = small_run_artifacts
    cls = stored(con, "unit_classes", layer, "mean_rect, mean_act, train_grad_mean, anomaly, grad_mean",
                 "unit, class")
    n_units = len(cls) // 10
    rect, act, tgrad, anom, grad = (cls[:, i].reshape(n_units, 10) for i in range(5))
    mu_max = rect.max(1)
    mu_rest = (rect.sum(1) - mu_max) / 9
    expected_si = (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7)
    units = stored(con, "units", layer, "selectivity, pref_class, mu_max, mu_rest, anomaly_max, anomaly_class, dead, "
                   "grad_z_max", "unit")
    dead = mu_max == 0
    np.testing.assert_array_equal(units[:, 6].astype(bool), dead)
    np.testing.assert_allclose(units[:, 0], expected_si, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(units[~dead, 1], rect.argmax(1)[~dead])
    assert np.isnan(units[dead, 1]).all()  # no preferred class for a dead unit (null)
    np.testing.assert_allclose(units[:, 3], mu_rest, rtol=1e-9, atol=1e-12)
    # Anomaly on live units: the smaller of the scaled training signal and the standardised lowness of
    # activation, statistics over the live units' entries; null for dead units.
    t, a = tgrad[~dead], act[~dead]
    expected = np.full_like(anom, np.nan)
    expected[~dead] = np.minimum(t / t.std(), -(a - a.mean()) / a.std())
    np.testing.assert_allclose(anom, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(units[:, 4], np.where(dead, np.nan, np.nan_to_num(expected, nan=-np.inf).max(1)),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(units[~dead, 5], expected[~dead].argmax(1))
    assert np.isnan(units[dead, 5]).all()
    np.testing.assert_allclose(units[:, 7], (grad / grad.std()).max(1), rtol=1e-9, atol=1e-12)


def test_strongest_anomaly_skips_classes_without_examples():
    anom = np.array([[0.5, np.nan, np.nan], [np.nan, -1.0, np.nan], [2.0, -3.0, np.nan]])  # (K=3, U=3)
    top, best = strongest_anomaly(anom)
    np.testing.assert_array_equal(top[:2], [2.0, -1.0])
    np.testing.assert_array_equal(best[:2], [2, 1])
    assert np.isnan(top[2])


def test_selectivity_index_on_known_cases():
    means = np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.5, 0.0]])  # (K=3, U=4)
    si = selectivity(means)
    np.testing.assert_allclose(si["selectivity"], [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert si["pref_class"][0] == 0
    two = selectivity(np.array([[3.0], [1.0], [1.0]]))
    np.testing.assert_allclose(two["selectivity"], [(3 - 1) / (3 + 1 + 1e-7)])


def test_anomaly_ranks_high_gradient_low_activation_first():
    rng = np.random.default_rng(0)
    act, grad = rng.normal(size=(10, 50)), rng.normal(scale=0.1, size=(10, 50))
    act[3, 7], grad[3, 7] = -4.0, 0.5  # strongly pushed up, strongly off
    act[2, 9], grad[2, 9] = -6.0, -0.1  # off, but pushed down: not anomalous
    act[5, 1], grad[5, 1] = 2.0, 0.6  # pushed up, but already on: not anomalous
    score = anomaly(grad, act)
    assert np.unravel_index(np.argmax(score), score.shape) == (3, 7)
    assert score[2, 9] < 0 and score[5, 1] < 0
    live = np.ones(50, dtype=bool)
    live[7] = False  # a dead unit gets no score, and leaves the others' statistics
    dead_out = anomaly(grad, act, live)
    assert np.isnan(dead_out[:, 7]).all() and np.isfinite(np.delete(dead_out, 7, axis=1)).all()


def _weight_surgery_ablation(model: LeNet5, layer: str, unit: int) -> LeNet5:
    """Remove a unit by zeroing every weight that reads it (independent of the zeroing hook).

    Max pooling of an all-zero channel is zero, so for conv1 zeroing conv2's input channel is the
    same as clamping conv1's post-ReLU channel to zero.
    """
    m = copy.deepcopy(model)
    reader = {"conv1": m.conv2, "conv2": None, "fc1": m.fc2, "fc2": m.fc3}[layer]
    with torch.no_grad():
        if layer == "conv2":  # fc1 reads conv2's pooled 5x5 channel as 25 consecutive inputs
            m.fc1.weight[:, unit * 25:(unit + 1) * 25] = 0
        else:
            reader.weight[:, unit] = 0
    return m


@pytest.mark.parametrize("layer,unit", [("conv1", 2), ("conv2", 5), ("conv2", 11), ("fc1", 7), ("fc2", 40)])
def test_ablation_deltas_match_weight_surgery(small_run_artifacts, layer, unit):
    model, eval_set, con = small_run_artifacts
    x, y = eval_set.floats(0, len(eval_set)), eval_set.labels
    with torch.no_grad():
        base = model(x)
        cut = _weight_surgery_ablation(model, layer, unit)(x)
    acc = lambda logits: (logits.argmax(1) == y).double()
    loss = lambda logits: F.cross_entropy(logits, y, reduction="none").double()
    acc_delta, loss_delta = stored(con, "units", layer, "abl_acc_delta, abl_loss_delta", "unit")[unit]
    assert acc_delta == pytest.approx(float(acc(cut).mean() - acc(base).mean()), abs=1e-12)
    assert loss_delta == pytest.approx(float(loss(cut).mean() - loss(base).mean()), abs=1e-5)
    per_class = stored(con, "unit_classes", layer, "class, abl_acc_delta, abl_loss_delta", "unit, class")
    per_class = per_class[unit * 10:(unit + 1) * 10]
    for c in range(10):
        m = y == c
        assert per_class[c, 1] == pytest.approx(float(acc(cut)[m].mean() - acc(base)[m].mean()), abs=1e-12)
        assert per_class[c, 2] == pytest.approx(float(loss(cut)[m].mean() - loss(base)[m].mean()), abs=1e-5)


def test_training_trace_gradient_equals_autograd_per_example():
    """With lr=0 the weights stay put, so the epoch's trace is the initial network's per-example gradients."""
    data = stratified_subset(load_dataset("mnist-5k").train, 60)
    torch.manual_seed(3)
    model = LeNet5((1, 28, 28), 10)
    result = train(model, model.probe_modules(), data, data, TrainConfig(epochs=1, seed=0, batch_size=25, lr=0.0))
    model.train()
    grads = {n: [] for n in LAYERS}
    tgrads = {n: [] for n in LAYERS}
    acts = {n: [] for n in LAYERS}
    for i in range(len(data)):
        a, logits = manual_forward(model, data.floats(i, i + 1))
        g = torch.autograd.grad(F.cross_entropy(logits, data.labels[i:i + 1]),
                                [a[n][1] for n in LAYERS] + [a[n][0] for n in LAYERS])
        for n, gi, gz in zip(LAYERS, g[:len(LAYERS)], g[len(LAYERS):]):
            dims = tuple(range(2, gi.dim()))
            grads[n].append(-(gi.sum(dims) if dims else gi)[0].numpy())
            tgrads[n].append(-(gz.sum(dims) if dims else gz)[0].numpy())
            pre = a[n][0].detach()
            acts[n].append((pre.mean(dims) if dims else pre)[0].numpy())
    labels = data.labels.numpy()
    np.testing.assert_array_equal(result.counts[0], np.bincount(labels, minlength=10))
    for n in LAYERS:
        g, a, tg = np.stack(grads[n]), np.stack(acts[n]), np.stack(tgrads[n])
        for c in range(10):
            np.testing.assert_allclose(result.trace[n]["grad"][0, c], g[labels == c].mean(0), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(result.trace[n]["tgrad"][0, c], tg[labels == c].mean(0), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(result.trace[n]["act"][0, c], a[labels == c].mean(0), rtol=1e-5, atol=1e-6)


def test_examples_table_is_what_the_model_does_with_each_example(small_run_artifacts):
    model, eval_set, con = small_run_artifacts
    rows = con.execute("SELECT example, label, pred, loss, subgroup FROM examples WHERE run_id = 'small' "
                       "ORDER BY example").df()
    with torch.no_grad():
        logits = model(eval_set.floats(0, len(eval_set)))
    np.testing.assert_array_equal(rows.example, np.arange(len(eval_set)))
    np.testing.assert_array_equal(rows.label, eval_set.labels.numpy())
    np.testing.assert_array_equal(rows.pred, logits.argmax(1).numpy())
    np.testing.assert_allclose(rows.loss, F.cross_entropy(logits, eval_set.labels, reduction="none").numpy(),
                               rtol=1e-5, atol=1e-6)
    assert rows.subgroup.isna().all()  # mnist-5k defines no subgroups
    # unit_examples agree with the units' flip counts (at most 100 listed per direction).
    flips = con.execute(
        "SELECT u.layer, u.unit, u.abl_n_hurt, count(e.example) FILTER (WHERE e.kind = 'hurt') AS listed "
        "FROM units u LEFT JOIN unit_examples e USING (run_id, layer, unit) WHERE u.run_id = 'small' "
        "GROUP BY ALL").df()
    np.testing.assert_array_equal(flips.listed, np.minimum(flips.abl_n_hurt, 100))


def test_unit_examples_name_the_prediction_without_the_unit(small_run_artifacts):
    """``unit_examples.pred_ablated`` against the checkpoint with the unit zeroed by a hook."""
    from compute.nets.probe import ZeroUnit

    model, eval_set, con = small_run_artifacts
    rows = con.execute(
        "SELECT ue.layer, ue.unit, ue.kind, ue.example, ue.pred_ablated, e.label, e.pred FROM unit_examples ue "
        "JOIN examples e USING (run_id, example) WHERE ue.run_id = 'small' AND ue.layer IN ('conv2', 'fc1') "
        "AND ue.unit IN (SELECT unit FROM unit_examples WHERE run_id = 'small' AND kind = 'hurt' AND layer = ue.layer "
        "ORDER BY unit LIMIT 3)").df()
    assert (rows.kind == "hurt").any() and (rows.kind == "loss_rise").any()
    hurt, helped = rows[rows.kind == "hurt"], rows[rows.kind == "helped"]
    assert (hurt.pred == hurt.label).all() and (hurt.pred_ablated != hurt.label).all()
    assert (helped.pred_ablated == helped.label).all()
    x = eval_set.floats(0, len(eval_set))
    for (layer, unit), g in rows.groupby(["layer", "unit"]):
        with torch.no_grad(), ZeroUnit(model.probe_modules()[layer], [unit]):
            pred = model(x).argmax(1).numpy()
        np.testing.assert_array_equal(g.pred_ablated.to_numpy(), pred[g.example.to_numpy()])


def test_standardized_values_equal_the_plain_formula_bit_for_bit() -> None:
    """The firing rule's in-place standardization gives the floats of ``where(s > 0, (a - m) / s, 0)``
    on float64 copies, with zero-deviation positions, float32 and float64 inputs."""
    from compute.measure.firing import _standardized

    gen = torch.Generator().manual_seed(0)
    a32 = torch.randn(50, 4, 9, generator=gen) * 3
    mean = torch.randn(4, 9, generator=gen, dtype=torch.float64).numpy()
    std = torch.rand(4, 9, generator=gen, dtype=torch.float64).numpy()
    std[0, :3], std[2, 5], std[3] = 0.0, 0.0, 0.0
    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    for a in (a32, a32.double() * 1.7):
        before = a.clone()
        want = torch.where(s > 0, (a.double() - m) / torch.where(s > 0, s, 1.0), torch.zeros((), dtype=torch.float64))
        got = _standardized(a, mean, std)
        assert got.dtype == torch.float64 and torch.equal(got, want)
        assert torch.equal(a, before)  # the input is left as it was
    assert (got[:, 3] == 0).all() and (got[:, 0, :3] == 0).all() and (got[:, 1] != 0).all()
