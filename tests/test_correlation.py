"""Spearman correlation and its confidence interval against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard.correlation import BOOTSTRAP_MAX_N, per_layer, spearman_ci


def test_rho_matches_pandas_and_ci_matches_an_independent_bootstrap():
    rng = np.random.default_rng(7)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    y[:20] = y[20:40]  # ties
    c = spearman_ci(x, y)
    assert c.rho == pytest.approx(pd.Series(x).corr(pd.Series(y), method="spearman"))
    assert c.lo < c.rho < c.hi and c.method == "bootstrap BCa"
    # A plain percentile bootstrap written out by hand lands close to scipy's BCa interval.
    boot = []
    for _ in range(2000):
        i = rng.integers(0, len(x), len(x))
        boot.append(pd.Series(x[i]).corr(pd.Series(y[i]), method="spearman"))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert c.lo == pytest.approx(lo, abs=0.04) and c.hi == pytest.approx(hi, abs=0.04)


def test_large_samples_use_the_fieller_interval():
    rng = np.random.default_rng(1)
    n = BOOTSTRAP_MAX_N + 500
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    y[:300] = np.round(y[:300])  # ties
    c = spearman_ci(x, y)
    from scipy import stats

    assert c.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)  # computed without scipy
    z, se = math.atanh(c.rho), math.sqrt(1.06 / (n - 3))
    assert c.method == "Fieller z"
    assert (c.lo, c.hi) == pytest.approx((math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)), abs=1e-6)


def test_undefined_cases_and_nan_values():
    assert math.isnan(spearman_ci(np.array([1.0, 2.0]), np.array([1.0, 2.0])).rho)
    assert math.isnan(spearman_ci(np.zeros(50), np.arange(50.0)).rho)
    c = spearman_ci(np.array([1, 2, np.nan, 4, 5, 6.0]), np.array([2, 1, 3, np.inf, 5, 7.0]))
    assert c.n == 4 and c.rho == pytest.approx(pd.Series([1, 2, 5, 6.0]).corr(pd.Series([2, 1, 5, 7.0]), method="spearman"))


def test_per_layer_keeps_layer_order():
    df = pd.DataFrame({"layer": ["b"] * 30 + ["a"] * 30, "x": np.arange(60.0), "y": np.arange(60.0) ** 2})
    out = per_layer(df, "x", "y")
    assert out.layer.tolist() == ["b", "a"] and out.spearman_rho.tolist() == pytest.approx([1.0, 1.0])
