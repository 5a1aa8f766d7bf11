"""Sequential ablation: the stopping rule's error rate by simulation, its test against scipy, and the
run on LeNet-5 against the full sweep (same conclusions for clear units, deltas on the examples seen
equal to an independent hook loop's)."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from compute.ablation import sequential
from compute.ablation.engine import AblationEngine
from compute.ablation.outcome import PairedSums, fdr, outcome
from compute.datasets.sources import load_dataset
from compute.distributed import work
from compute.distributed.executor import InProcessExecutor, Worker
from compute.nets.probe import ZeroUnit
from compute.run.stage_store import StageStore
from tests.ablation_models import trained_model

FIRST = 250  # looks at 250, 500 and all 1,000 test digits of mnist-5k
WIDTH = 0.002


def test_looks_double_and_levels_spend_alpha_once():
    assert sequential.looks(10_000) == [500, 1000, 2000, 4000, 8000, 10_000]
    assert sequential.looks(300) == [300] and sequential.looks(1000, 250) == [250, 500, 1000]
    for k in (1, 2, 6):
        lv = sequential.levels(k)
        assert len(lv) == k and lv.sum() == pytest.approx(sequential.ALPHA, abs=1e-15)
        assert lv[-1] >= (1 - sequential.INTERIM_SHARE) * sequential.ALPHA - 1e-15


def test_paired_test_agrees_with_scipy():
    rng = np.random.default_rng(1)
    d = rng.exponential(size=(5, 80)) - 0.8
    lo, hi, p = sequential.paired_test(80, d.sum(1), (d * d).sum(1), 0.01)
    for i in range(5):
        res = stats.ttest_1samp(d[i], 0.0)
        ci = res.confidence_interval(0.99)
        assert p[i] == pytest.approx(res.pvalue, rel=1e-9)
        assert (lo[i], hi[i]) == pytest.approx((ci.low, ci.high), rel=1e-9)


def _simulate(d: np.ndarray, width: float, naive: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sequential rule on per-example differences d (units, n): (reported low, high, p, examples used).

    ``naive``: the same looks, each tested at the plain 5% level with no correction."""
    units, n = d.shape
    bounds = sequential.looks(n, 100)
    level = np.full(len(bounds), sequential.ALPHA) if naive else sequential.levels(len(bounds))
    cum, cum2 = d.cumsum(1), (d * d).cumsum(1)
    stop = np.full(units, len(bounds) - 1)
    running = np.ones(units, dtype=bool)
    for r, b in enumerate(bounds[:-1]):
        idx = np.flatnonzero(running)
        done = sequential.stops(b, cum[idx, b - 1], cum2[idx, b - 1], level[r], width)
        stop[idx[done]] = r
        running[idx[done]] = False
    used = np.array(bounds)[stop]
    rows = np.arange(units)
    paired = PairedSums(used.astype(float), cum[rows, used - 1], cum2[rows, used - 1], np.zeros(units),
                        np.zeros(units), level[stop])
    lo, hi, p = paired.loss_test()
    return lo, hi, p, used


@pytest.mark.parametrize("width", [0.0, 0.3])
def test_null_units_are_rarely_called_significant(width: float):
    """3,000 units with no effect (skewed, partly zero differences, as ablation's are): the reported
    p <= 0.05 (interval excluding zero) for at most 5% of them, up to sampling error; peeking at the
    same looks without the correction exceeds it clearly, so the check can fail."""
    rng = np.random.default_rng(7)
    d = (rng.exponential(size=(3000, 1000)) - 1.0) * (rng.random((3000, 1000)) < 0.6)
    lo, hi, p, used = _simulate(d, width)
    sig = p <= sequential.ALPHA
    assert np.array_equal(sig, (lo > 0) | (hi < 0))  # significant exactly when the interval excludes zero
    se = np.sqrt(0.05 * 0.95 / len(p))
    assert sig.mean() <= sequential.ALPHA + 3 * se
    naive_p = _simulate(d, width, naive=True)[2]
    assert (naive_p <= sequential.ALPHA).mean() > sequential.ALPHA + 6 * se
    if width:
        assert used.mean() < 0.6 * d.shape[1]  # the width rule settles null units early


def test_reported_interval_covers_a_real_effect_and_strong_effects_stop_early():
    rng = np.random.default_rng(3)
    effect = np.repeat([0.02, 0.3], 1500)[:, None]
    d = effect + rng.normal(size=(3000, 1000))
    lo, hi, p, used = _simulate(d, 0.0)
    covered = (lo <= effect[:, 0]) & (effect[:, 0] <= hi)
    assert covered.mean() >= 0.95 - 3 * np.sqrt(0.05 * 0.95 / len(p))
    strong = effect[:, 0] == 0.3
    assert (p[strong] <= 0.05).mean() > 0.99 and np.median(used[strong]) <= 200  # settled at the first looks


@lru_cache(maxsize=1)
def _lenet_sweeps():
    model = trained_model("lenet5")
    data = load_dataset("mnist-5k").test
    counts = AblationEngine(model).unit_counts(data)
    order = np.random.default_rng([0, 104729]).permutation(len(data))
    worker = Worker(model, {"eval": data, "eval-seq": data.subset(order)})
    with tempfile.TemporaryDirectory() as tmp:
        full = work.single_unit(InProcessExecutor(), worker, StageStore(Path(tmp) / "f"), counts)
        seq = work.sequential_unit(InProcessExecutor(), worker, StageStore(Path(tmp) / "s"), counts, order, WIDTH,
                                   data="eval-seq", first=FIRST)
    return model, data, order, full, seq


def _significant(ab) -> np.ndarray:
    lo, _, p = ab.paired.loss_test()
    return (fdr(p) <= 0.05) & (lo >= 0)


def test_sequential_sweep_saves_passes_and_keeps_the_clear_conclusions():
    _, data, _, (base_full, full), (base_seq, seq) = _lenet_sweeps()
    assert base_seq.accuracy == pytest.approx(base_full.accuracy, abs=1e-12)  # the intact pass covers every example
    used = np.concatenate([np.broadcast_to(seq[n].paired.n, seq[n].loss_delta.shape) for n in seq])
    assert set(used) <= {250.0, 500.0, 1000.0} and used.sum() < 0.8 * len(used) * len(data)
    for name in full:
        f, s = full[name], seq[name]
        p_full = f.paired.loss_test()[2]
        sig_f, sig_s = _significant(f), _significant(s)
        # Overwhelming in the full sweep and larger than the width: the sequential rule finds them too.
        clear = (p_full < 1e-6) & (f.loss_delta > WIDTH)
        assert sig_s[clear & sig_f].all(), name
        assert not (sig_s & ~sig_f & (p_full > 0.05)).any(), name  # nothing the full sweep sees as noise
        # Units that ran to the end: the full sweep's deltas, to float32 rounding (the examples come in
        # another order, so in other batches of the stacked passes).
        to_end = s.paired.n == len(data)
        np.testing.assert_allclose(s.loss_delta[to_end], f.loss_delta[to_end], rtol=0, atol=1e-7)
        np.testing.assert_allclose(s.class_acc_delta[to_end], f.class_acc_delta[to_end], rtol=0, atol=1e-9)


def test_an_early_stopped_unit_is_measured_on_the_examples_it_saw():
    """Against a hook loop on the same examples: the first n of the fixed random order."""
    model, data, order, _, (_, seq) = _lenet_sweeps()
    name = "fc1"
    stopped = np.flatnonzero(seq[name].paired.n < len(data))
    assert len(stopped)
    probes = model.probe_modules()
    for u in stopped[:3]:
        seen = data.subset(order[:int(seq[name].paired.n[u])])
        base = outcome(model, seen)
        with ZeroUnit(probes[name], [int(u)]):
            ablated = outcome(model, seen)
        assert seq[name].loss_delta[u] == pytest.approx(ablated.loss - base.loss, abs=1e-6)
        assert seq[name].acc_delta[u] == pytest.approx(ablated.accuracy - base.accuracy, abs=1e-12)
    ex = seq[name].examples
    assert ex is not None and set(np.unique(ex.unit)) <= set(range(120))
    for u in stopped[:3]:  # a stopped unit's affected examples come from the examples it saw
        assert set(ex.example[ex.unit == u]) <= set(order[:int(seq[name].paired.n[u])])


def test_a_sequential_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import json

    import warehouse
    from compute.cli import main

    with pytest.raises(SystemExit) as bad_width:
        main(["run", "--ablation-width", "-1", "--warehouse", str(tmp_path)])
    assert bad_width.value.code == 2
    assert "--ablation-width" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main(["run", "--epochs", "1", "--train-size", "200", "--eval-size", "700", "--no-images", "--run-id", "seq",
                 "--ablation-budget", "sequential", "--ablation-width", "0.05", "--warehouse", str(tmp_path)]) == 0
    con = warehouse.connect(tmp_path)
    used = dict(con.execute("SELECT abl_n, count(*) FROM units GROUP BY abl_n").fetchall())
    assert set(used) <= {500, 700} and used.get(500, 0) > 0  # the wide width settles most units at the first look
    cfg = json.loads(con.execute("SELECT config FROM runs").fetchall()[0][0])
    assert cfg["ablation_budget"] == "sequential" and cfg["ablation_width"] == 0.05
    bad = con.execute("SELECT count(*) FROM units WHERE (abl_loss_p <= 0.05) != (abl_loss_lo > 0 OR abl_loss_hi < 0)")
    assert bad.fetchall()[0][0] == 0  # significant exactly when the stored interval excludes zero
