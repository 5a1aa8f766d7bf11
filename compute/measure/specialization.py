"""Subset specialization: which units carry knowledge of a *part* of a class (the crossed-7 unit).

Per (unit, class) on the evaluation set, with "fires" as ``compute.measure.firing`` defines it, and
``e_n = sum_p (-dL_n/da_p) * a_p`` the first-order loss change of removing the unit on example n (a
signed Taylor term, in loss units):

- ``frac_fire``: the fraction of the class's examples on which the unit fires;
- ``fire_effect``: the mean ``e_n`` over the class's **correctly classified** examples on which it fires;
- ``specialization = share * (1 - frac_fire)^2 * weight``, where ``share`` is the part of the class's
  removal cost ``sum max(e_n, 0)`` over its correctly classified examples that falls on the examples
  where the unit fires, and ``weight = (cost / largest cost)^COST_POWER`` is the unit's class removal
  cost relative to the costliest live unit of the run for that class. In [0, 1]: 1 would be the
  class's costliest unit with its whole cost on a vanishing part of the class. Null when the unit
  fires on fewer than ``MIN_FIRING`` correctly classified examples of the class, costs the class
  nothing, or is dead.

Why this form (chosen on stored planted runs; the variants and their figures are in docs/metrics.md,
Subset specialization): misclassified examples carry most of a class's summed gradient, so a mean over
all examples follows a few errors; correct examples only, and the removal cost rather than the
gradient, ask "do the examples it fires on rely on it?". A share is scale-free, so units of different
layers and of weak and strong classes compare; the factor ``(1 - frac_fire)^2`` prefers units that
fire on a part of the class over units that fire on much of it (squared: with the power 1 and the weight,
units firing on much of the class crowd the top 5; the planted benchmark found 11 of 15 runs, not 13). The weight, a fourth root, lets a unit that
the class relies on outrank one with the same share whose removal costs almost nothing (corner-mark
detectors, chosen on seeds 0-1 and checked on seeds 2-4 of the planted benchmark), without letting the
class's most important units lead on importance alone (a power of 1 loses the crossed-7 detectors);
relative to the class's costliest unit it stays scale-free. Everything is a sum over examples, so
shards of the data merge by addition; the weight needs every layer's sums, so it is applied last.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.measure.firing import FiringRule
from compute.nets.probe import Probe, units_of
from compute.progress import bar

MIN_FIRING = 5
#: powers of the relative class removal cost and of the share of the class the unit does not fire on
#: (docs/metrics.md, Subset specialization: chosen on seeds 0-1 of the planted benchmark, checked on 2-4)
COST_POWER = 0.25
SUBSET_POWER = 2
#: (K, U) each; and n_ok: (K,) correct examples per class
SUMS = ("n_fire", "n_fire_ok", "effect_ok", "cost_ok", "cost_fire_ok")


def specialization_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                        rules: dict[str, FiringRule], batch_size: int = 500,
                        device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Per layer, float64 (K, U) sums over ``data``: ``n_fire`` (class examples the unit fires on),
    ``n_fire_ok`` (of those, correctly classified), ``effect_ok`` (their summed removal effect ``e_n``),
    ``cost_ok`` (the removal cost ``max(e_n, 0)`` summed over the class's correctly classified examples)
    and ``cost_fire_ok`` (the same over those it fires on); and ``n_ok`` (K,): correctly classified
    examples per class. ``rules``: each layer's firing rule (``compute.measure.firing.fit``)."""
    model.eval()
    k = data.n_classes
    out: dict[str, dict[str, torch.Tensor]] = {}
    n_ok = torch.zeros(k, dtype=torch.float64)
    with Probe(probes) as probe:
        for start in bar(range(0, len(data), batch_size), "specialization", unit="batch"):
            x = data.floats(start, start + batch_size, device)
            y = data.labels[start:start + batch_size].to(device)
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            ok = (logits.argmax(1) == y).double()[:, None]
            n_ok.index_add_(0, y.cpu(), ok[:, 0].cpu())
            posts = [probe.post[name] for name in probes]
            grads = torch.autograd.grad(losses.sum(), posts)
            for name, post, g in zip(probes, posts, grads):
                a = units_of(probes[name], post.detach())
                effect = (-units_of(probes[name], g) * a).sum(2).double()  # first-order loss change of zeroing the unit
                cost = effect.clamp(min=0) * ok
                rule = rules[name]
                fire = rule.fires(rule.value(probes[name], post)).double()
                s = out.setdefault(name, {f: torch.zeros(k, a.shape[1], dtype=torch.float64, device=a.device)
                                          for f in SUMS})
                s["n_fire"].index_add_(0, y, fire)
                s["n_fire_ok"].index_add_(0, y, fire * ok)
                s["effect_ok"].index_add_(0, y, fire * ok * effect)
                s["cost_ok"].index_add_(0, y, cost)
                s["cost_fire_ok"].index_add_(0, y, fire * cost)
    return {name: {**{f: v.cpu().numpy() for f, v in s.items()}, "n_ok": n_ok.numpy()} for name, s in out.items()}


def class_cost_max(sums: dict[str, dict[str, np.ndarray]], live: dict[str, np.ndarray]) -> np.ndarray:
    """(K,) the largest class removal cost ``cost_ok`` of any live unit of any layer: the reference of the
    score's weight."""
    return np.max([np.where(np.asarray(live[n], dtype=bool)[None, :], s["cost_ok"], 0.0).max(1)
                   for n, s in sums.items()], axis=0)


def specialization(sums: dict[str, np.ndarray], counts: np.ndarray, live: np.ndarray,
                   cost_max: np.ndarray) -> dict[str, np.ndarray]:
    """(K, U) ``frac_fire``, ``fire_effect`` and ``specialization`` of one layer from its sums, with
    ``cost_max`` from ``class_cost_max``; NaN where undefined (a class without examples, fewer than
    ``MIN_FIRING`` correct firing examples, no removal cost on the class, a dead unit)."""
    n = counts[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n > 0, sums["n_fire"] / n, np.nan)
        effect = np.where(sums["n_fire_ok"] > 0, sums["effect_ok"] / sums["n_fire_ok"], np.nan)
        share = np.where(sums["cost_ok"] > 0, sums["cost_fire_ok"] / sums["cost_ok"], np.nan)
        weight = (sums["cost_ok"] / cost_max[:, None]) ** COST_POWER
    live = np.asarray(live, dtype=bool)[None, :]
    enough = (sums["n_fire_ok"] >= MIN_FIRING) & live
    return {"frac_fire": frac, "fire_effect": np.where(live, effect, np.nan),
            "specialization": np.where(enough, share * (1.0 - frac) ** SUBSET_POWER * weight, np.nan)}
