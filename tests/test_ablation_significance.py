"""Is an ablation effect real, and which examples need the unit: the engine's paired statistics and
example effects against an independent per-example hook loop and scipy's own tests."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from compute.ablation.effects import HELPED, HURT, KINDS, LOSS_RISE
from compute.ablation.engine import AblationEngine, DIFF_FLOOR
from compute.ablation.outcome import PairedSums, fdr
from compute.nets.probe import ZeroUnit
from tests.ablation_models import digits, trained_model

TOP_K, MAX_FLIPS = 5, 3


@lru_cache(maxsize=1)
def sweep():
    model = trained_model("lenet5")
    data = digits()[1]
    return model, data, AblationEngine(model).single_unit(data, top_k=TOP_K, max_flips=MAX_FLIPS)


@lru_cache(maxsize=None)
def naive(layer: str, unit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: loss difference (ablated - intact), intact hit, ablated hit; one hooked pass each."""
    model, data, _ = sweep()
    x, y = data.floats(0, len(data)), data.labels
    with torch.inference_mode():
        base = model(x)
        with ZeroUnit(model.probe_modules()[layer], [unit]):
            cut = model(x)
    d = (F.cross_entropy(cut, y, reduction="none") - F.cross_entropy(base, y, reduction="none")).double().numpy()
    return d, (base.argmax(1) == y).numpy(), (cut.argmax(1) == y).numpy()


UNITS = [("conv1", u) for u in range(6)] + [("conv2", u) for u in range(16)] + \
        [("fc1", u) for u in range(0, 120, 7)] + [("fc2", u) for u in range(0, 84, 5)]


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1", "fc2"])
def test_paired_interval_p_value_and_mcnemar_match_scipy(layer):
    _, data, (_, ablations) = sweep()
    ab = ablations[layer]
    lo, hi, p = ab.paired.loss_test()
    acc_p = ab.paired.mcnemar_p()
    for _, u in [x for x in UNITS if x[0] == layer]:
        d, before, after = naive(layer, u)
        d = np.where(np.abs(d) < DIFF_FLOOR, 0.0, d)
        hurt, helped = int((before & ~after).sum()), int((~before & after).sum())
        assert ab.paired.hurt[u] == hurt and ab.paired.helped[u] == helped
        assert ab.acc_delta[u] == pytest.approx((helped - hurt) / len(data), abs=1e-12)
        want_p = stats.binomtest(hurt, hurt + helped, 0.5).pvalue if hurt + helped else 1.0
        assert acc_p[u] == pytest.approx(want_p, rel=1e-9, abs=1e-12)
        if np.all(d == d[0]):
            continue  # scipy's t-test is undefined for constant differences (a unit that changes nothing)
        t = stats.ttest_1samp(d, 0.0)
        ci = t.confidence_interval(0.95)
        # The engine's differences come from a stacked suffix, the reference's from a hooked full pass.
        assert lo[u] == pytest.approx(ci.low, rel=1e-3, abs=2e-6)
        assert hi[u] == pytest.approx(ci.high, rel=1e-3, abs=2e-6)
        assert p[u] == pytest.approx(t.pvalue, rel=2e-2, abs=1e-6)


def test_unit_that_changes_nothing_is_not_significant():
    paired = PairedSums(100.0, np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))
    lo, hi, p = paired.loss_test()
    np.testing.assert_array_equal(lo, 0.0)
    np.testing.assert_array_equal(hi, 0.0)
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(paired.mcnemar_p(), 1.0)


def test_fdr_equals_scipy_benjamini_hochberg():
    p = np.array([0.001, 0.2, 0.03, 0.04, 0.9])
    np.testing.assert_allclose(fdr(p), stats.false_discovery_control(p, method="bh"))
    q_manual = np.minimum.accumulate((p[np.argsort(p)] * 5 / np.arange(1, 6))[::-1])[::-1]
    np.testing.assert_allclose(np.sort(fdr(p)), np.sort(q_manual))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1", "fc2"])
def test_flips_and_loss_rises_equal_the_naive_hook_loop(layer):
    _, _, (_, ablations) = sweep()
    e = ablations[layer].examples
    for _, u in [x for x in UNITS if x[0] == layer]:
        d, before, after = naive(layer, u)
        mine = e.unit == u
        for kind, want in ((HURT, np.flatnonzero(before & ~after)), (HELPED, np.flatnonzero(~before & after))):
            got = e.example[mine & (e.kind == KINDS.index(kind))]
            np.testing.assert_array_equal(got, want[:MAX_FLIPS])  # the first flips in example order
        rises = mine & (e.kind == KINDS.index(LOSS_RISE))
        want_top = np.sort(d)[::-1][:TOP_K]
        want_top = want_top[want_top > 0]
        got = e.loss_delta[rises][np.argsort(e.rank[rises])]
        np.testing.assert_allclose(got, want_top, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(d[e.example[rises]], e.loss_delta[rises], rtol=1e-3, atol=1e-5)
