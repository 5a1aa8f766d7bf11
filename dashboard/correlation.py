"""Spearman rank correlation of two metrics with a confidence interval.

Up to ``BOOTSTRAP_MAX_N`` points the interval is a seeded BCa bootstrap (``scipy.stats.bootstrap``);
above it the bootstrap would take seconds, and the Fieller-Hartley-Pearson normal approximation
on Fisher's z (standard error sqrt(1.06 / (n - 3))) is accurate at such sizes and instant.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

N_RESAMPLES = 1000
BOOTSTRAP_MAX_N = 1000
SEED = 0
#: Below this many points a rank correlation's interval is too coarse to read (conv1 of LeNet-5 has 6 units).
SMALL_N = 10


@dataclass(frozen=True)
class Correlation:
    n: int
    rho: float  # NaN when undefined (fewer than 3 points, or a constant axis)
    lo: float
    hi: float
    method: str


def _rank_corr(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis``: Pearson correlation of average ranks (vectorised for the bootstrap)."""
    from scipy import stats

    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks (pandas' ranks: no scipy import needed)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_ci(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> Correlation:
    """Spearman's rho of paired finite values and a seeded ``scipy.stats.bootstrap`` interval (or, above
    ``BOOTSTRAP_MAX_N`` points, Fieller's z interval, which needs no scipy: importing ``scipy.stats``
    takes one to three seconds, most of a cold explorer's start at a million units)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(n, math.nan, math.nan, math.nan, "undefined")
    rho = _spearman(x, y)
    if n > BOOTSTRAP_MAX_N:
        z = math.atanh(min(max(rho, -0.999999), 0.999999))
        half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(1.06 / (n - 3))
        return Correlation(n, rho, math.tanh(z - half), math.tanh(z + half), "Fieller z")
    from scipy import stats  # here, not at import (see above)

    for method in ("BCa", "percentile"):  # BCa is undefined for near-degenerate data (many ties)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap((x, y), _rank_corr, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                                  confidence_level=confidence, method=method, rng=np.random.default_rng(SEED))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return Correlation(n, rho, lo, hi, f"bootstrap {method}")


def per_layer(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """One row per layer of ``df`` (in its order): n, rho, CI low/high, CI method, and a warning when fewer
    than ``SMALL_N`` points stand behind it."""
    rows = []
    for layer, g in df.groupby("layer", sort=False):
        c = spearman_ci(g[x].to_numpy(), g[y].to_numpy())
        rows.append({"layer": layer, "n": c.n, "spearman_rho": c.rho, "ci95_low": c.lo, "ci95_high": c.hi,
                     "ci_method": c.method,
                     "warning": f"only {c.n} units: too few to read" if 0 < c.n < SMALL_N else ""})
    return pd.DataFrame(rows, columns=["layer", "n", "spearman_rho", "ci95_low", "ci95_high", "ci_method", "warning"])
