"""Sequential single-unit ablation: per unit, stop adding examples once its answer is settled.

A full single-unit sweep ablates every unit on every evaluation example. Most units' answers are
settled long before: a dead unit changes nothing, a strong unit is significant after a few hundred
examples, a weak one's loss delta is pinned near zero. The rule (docs/metrics.md, "Sequential
ablation"):

- Examples are taken in a fixed random order (seeded by the run's seed), in looks at
  ``first, 2 first, 4 first, ...`` examples and finally all ``n``: K looks.
- At each look, per still-running unit, the paired t-test of the per-example loss differences
  (ablated - intact) over the examples so far. Interim looks use level ``a_i = 0.1 alpha / (K - 1)``
  each, the final look ``a_K = 0.9 alpha`` (Haybittle-Peto style: early stops need overwhelming
  evidence, so a unit that goes to the end keeps almost the full test's power).
- A unit stops when its p-value is at most ``a_k / m`` (``m``: the units of its layer; so its
  Benjamini-Hochberg q-value within the layer stays at most ``alpha`` whatever the other units
  give, and the published verdict "significant" cannot depend on where it stopped) or when its
  interval at its look's level (confidence ``1 - a_k``) is at most ``width`` wide (its delta is
  known to within ``width``: effects smaller than that may be missed; a unit whose removal changes
  no example's loss has width 0 and stops at the first look, even with ``width`` 0). Units still running at the last look use every example.
- Reported: the delta and interval on the examples the unit saw, and ``p = min(1, p_k alpha / a_k)``.
  Since the looks' levels add up to ``alpha`` (union bound), ``P(p <= t) <= t`` for every ``t``
  under "no effect", however the stops fell, and the reported interval covers the true delta with
  probability at least ``1 - alpha``: the stored p, q and interval keep their meaning. A unit is
  significant (``p <= alpha``) exactly when its reported interval excludes zero.

``tests/test_sequential.py`` checks the false-significant rate on simulated null units.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.05  # the stored interval is the 95% one (compute.ablation.outcome.CONFIDENCE)
FIRST_LOOK = 500  # examples at the first look
INTERIM_SHARE = 0.1  # of alpha, spent over all interim looks together
DEFAULT_WIDTH = 0.01  # stop once the unit's interval is narrower than this (loss units)


def looks(n: int, first: int = FIRST_LOOK) -> list[int]:
    """Examples seen at each look: first, 2 first, 4 first, ... and finally n."""
    out, k = [], first
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


def levels(k: int, alpha: float = ALPHA) -> np.ndarray:
    """Each look's test level; they add up to ``alpha``."""
    if k == 1:
        return np.array([alpha])
    return np.array([INTERIM_SHARE * alpha / (k - 1)] * (k - 1) + [(1 - INTERIM_SHARE) * alpha])


def paired_test(n: np.ndarray | float, dsum: np.ndarray, dsq: np.ndarray,
                level: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p) of the paired t-test of mean d = 0 from the sums of d and d^2 over n examples,
    the interval at confidence ``1 - level``; no change at all gives [0, 0] and p = 1."""
    from scipy import stats  # here, not at the top: ~1 s to import (compute.ablation.outcome)

    n = np.asarray(n, dtype=np.float64)
    mean = dsum / n
    var = np.maximum(dsq - n * mean * mean, 0.0) / np.maximum(n - 1, 1)
    se = np.sqrt(var / n)
    half = stats.t.ppf(1 - np.asarray(level) / 2, np.maximum(n - 1, 1)) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / se, np.maximum(n - 1, 1)), np.where(mean == 0, 1.0, 0.0))
    return mean - half, mean + half, p


def stops(n: int, dsum: np.ndarray, dsq: np.ndarray, level: float, width: float, family: int = 1) -> np.ndarray:
    """Which units stop at a look with ``n`` examples seen: p at most ``level / family`` (``family``:
    the units tested together, for the q-value) or the interval at ``level`` at most ``width`` wide."""
    lo, hi, p = paired_test(n, dsum, dsq, level)
    return (p <= level / family) | (hi - lo <= width)
