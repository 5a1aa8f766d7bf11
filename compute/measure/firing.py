"""When a unit *fires* on an example: one definition for every kind of layer, in one place.

Each position of a unit (a pixel of a conv channel, a token, the one position of a linear unit) is
**standardized by its own mean and standard deviation** over the evaluation set (a position whose
standard deviation is at most ``MIN_STD`` gives 0). The unit's **example value** is the largest
standardized value over its positions, and the unit **fires** on an example when that value is more
than ``K_STD`` standard deviations above its mean over the evaluation set (``FiringRule.threshold``).

Why per position: a conv channel's raw largest value over 28 x 28 positions is high on almost every
example (some stroke always passes under some pixel), so "any positive value", or a threshold on the
raw largest value, says it fires on nearly everything, or only on examples with much ink. Standardized
per position, a value counts as high when it is unusual *for that position*: a channel that reacts to
a mark in an empty corner fires on the marked examples only, one that reacts to a crossbar fires where
the bar is, however much ink the rest of the digit has. A linear unit has one position, so its value
is its activation in standard units and it fires when above mean + 1 std. A dead unit (no position
varies) has value 0 everywhere and never fires.

``fit`` needs two passes over the data (position means and deviations, then the example value's);
both are sums over examples, so shards of the data merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compute.datasets.sources import ImageSet
from compute.nets.probe import Probe, units_of

K_STD = 1.0
MIN_STD = 1e-6
VALUE_BYTES = 2**22  # float64 bytes of the standardized activity computed at once


@dataclass
class FiringRule:
    """One layer's firing rule, for its units (U) and positions (P): float64 arrays."""

    pos_mean: np.ndarray  # (U, P)
    pos_std: np.ndarray  # (U, P), 0 where at most MIN_STD (those positions give 0)
    threshold: np.ndarray  # (U,) on the example value's scale

    def select(self, units: list[int]) -> FiringRule:
        """The rule of some of the layer's units, in that order."""
        return FiringRule(self.pos_mean[units], self.pos_std[units], self.threshold[units])

    def value(self, module: nn.Module, post: torch.Tensor, units: list[int] | None = None) -> torch.Tensor:
        """(B, U) example values: each unit's largest standardized value over positions. ``module`` is the
        probe module (its layout says where the units are); ``units`` picks some (the rule is then theirs:
        ``select``)."""
        a = units_of(module, post.detach())
        if units is not None:
            a = a[:, units]
        # In slices of examples (each example's value is its own), so the float64 temporaries stay small.
        rows = max(1, VALUE_BYTES // max(1, 8 * a[0].numel())) if len(a) else 1
        if len(a) <= rows:
            return _standardized(a, self.pos_mean, self.pos_std).amax(2)
        return torch.cat([_standardized(part, self.pos_mean, self.pos_std).amax(2) for part in a.split(rows)])

    def fires(self, values: torch.Tensor) -> torch.Tensor:
        """(B, U) bool: the unit fires on the example."""
        return values > torch.as_tensor(self.threshold, device=values.device)


def _standardized(a: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(a - mean) / std`` in float64, 0 where ``std`` is 0, computed in place on one float64 copy of
    ``a``: the same floats as the separate tensors of ``torch.where(s > 0, (a.double() - m) / s, 0)``, in
    a third of the time on a conv layer."""
    m = torch.as_tensor(mean, device=a.device)
    s = torch.as_tensor(std, device=a.device)
    z = a.to(torch.float64, copy=True).sub_(m)
    z.div_(torch.where(s > 0, s, 1.0))
    return z.masked_fill_(s == 0, 0.0)


def _moments(s: np.ndarray, sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = s / n
    return mean, np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))


def fit(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet, batch_size: int = 1000,
        device: str = "cpu") -> dict[str, FiringRule]:
    """Each probed layer's firing rule on ``data`` (the run's evaluation set): two passes of sums.
    A run computes the same sums per data shard as work items (``compute.distributed.work.firing``)."""
    rules = rules_from_moments(moment_sums(model, probes, data, batch_size, device), len(data))
    return with_thresholds(rules, value_sums(model, probes, data, rules, batch_size, device), len(data))


Sums = dict[str, tuple[np.ndarray, np.ndarray]]  # layer -> (sum, sum of squares), float64


@torch.inference_mode()
def moment_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet, batch_size: int = 1000,
                device: str = "cpu") -> Sums:
    """The first pass: per layer, each position's (U, P) sum and sum of squares over ``data``."""
    model.eval()
    sums: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for posts in _passes(model, probes, data, batch_size, device):
        for name, post in posts.items():
            a = units_of(probes[name], post).to(torch.float64, copy=True)
            s = sums.setdefault(name, (np.zeros(a.shape[1:]), np.zeros(a.shape[1:])))
            s[0][...] += a.sum(0).cpu().numpy()
            s[1][...] += a.mul_(a).sum(0).cpu().numpy()  # squares in place: a conv layer's batch is tens of MB
    return sums


def rules_from_moments(sums: Sums, n: int) -> dict[str, FiringRule]:
    """Rules standardizing each position (their thresholds still 0: ``with_thresholds``)."""
    rules = {}
    for name, (s, sq) in sums.items():
        mean, std = _moments(s, sq, n)
        rules[name] = FiringRule(mean, np.where(std > MIN_STD, std, 0.0), np.zeros(len(mean)))
    return rules


@torch.inference_mode()
def value_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet, rules: dict[str, FiringRule],
               batch_size: int = 1000, device: str = "cpu") -> Sums:
    """The second pass: per layer, each unit's (U,) sum and sum of squares of its example value."""
    model.eval()
    vsums = {name: (np.zeros(len(r.threshold)), np.zeros(len(r.threshold))) for name, r in rules.items()}
    for posts in _passes(model, probes, data, batch_size, device):
        for name, post in posts.items():
            v = rules[name].value(probes[name], post).cpu().numpy()
            vsums[name][0][...] += v.sum(0)
            vsums[name][1][...] += (v ** 2).sum(0)
    return vsums


def with_thresholds(rules: dict[str, FiringRule], vsums: Sums, n: int) -> dict[str, FiringRule]:
    """The rules with their thresholds: mean + ``K_STD`` standard deviations of the example value."""
    for name, (s, sq) in vsums.items():
        mean, std = _moments(s, sq, n)
        rules[name].threshold = mean + K_STD * std
    return rules


def _passes(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet, batch_size: int, device: str):
    """Per batch of ``data``, every probed layer's post-activation."""
    with Probe(probes) as probe:
        for start in range(0, len(data), batch_size):
            model(data.floats(start, start + batch_size, device))
            yield {name: probe.post[name] for name in probes}
