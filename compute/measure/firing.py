"""When a unit *fires* on an example: one definition for every kind of layer, in one place.

A unit is reduced to one value per example first (``example_value``: the largest post-activation over
its positions; one position for a linear unit). It **fires** on an example when that value is more
than ``K_STD`` standard deviations above the value's mean over the evaluation set (``threshold``),
and above 0. Why relative to the unit's own distribution: a conv channel's largest value over 28 x 28
positions is positive on almost every example, so "any positive value" says it fires on everything
and "fires on a subset" means nothing; a linear ReLU unit that is silent on most examples has a
mean and spread near 0, so its threshold stays near 0 and "fires" keeps meaning "is on". The mean and
standard deviation are sums over examples, so shards of the data merge by addition.
"""

from __future__ import annotations

import numpy as np
import torch

from torch import nn

from compute.nets.probe import units_of

K_STD = 1.0


def example_value(module: nn.Module, post: torch.Tensor) -> torch.Tensor:
    """(B, U): each unit's largest post-activation over its positions (pixels or tokens), per example;
    ``module`` is the probe module, whose layout says where the units are."""
    return units_of(module, post.detach()).amax(2)


def threshold(mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    """(U,) firing threshold from each unit's mean and mean square of ``example_value`` over examples:
    mean + ``K_STD`` standard deviations, at least 0."""
    std = np.sqrt(np.maximum(mean_sq - mean ** 2, 0.0))
    return np.maximum(mean + K_STD * std, 0.0)


def fires(values: torch.Tensor | np.ndarray, thresholds: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(B, U) bool: the unit fires on the example (value above the unit's threshold)."""
    return values > thresholds
