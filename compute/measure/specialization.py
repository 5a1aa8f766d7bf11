"""Subset specialization: which units carry knowledge of a *part* of a class (the crossed-7 unit).

Per (unit, class) on the evaluation set, with "fires" as ``compute.measure.firing`` defines it:

- ``frac_fire``: the fraction of the class's examples on which the unit fires;
- ``fire_effect``: over the class's **correctly classified** examples on which it fires, the mean
  first-order loss change of removing the unit, ``e_n = sum_p (-dL_n/da_p) * a_p`` (a signed Taylor
  term, in loss units, so layers compare);
- ``specialization = (sum of e_n over those examples / correctly classified examples of the class)
  * (1 - frac_fire)``: what removing the unit costs the class per correct example, all of it on the
  examples it fires on, discounted by how much of the class it fires on. Null when the unit fires on
  fewer than ``MIN_FIRING`` correctly classified examples of the class, or is dead.

Why this form (the planted benchmark behind it is in docs/metrics.md): misclassified examples carry
most of a class's summed gradient, so a mean over all examples follows a few errors; correct
examples only, and the first-order loss change rather than the gradient, ask "do the examples it
fires on rely on it?". Dividing by the class's size (not by the firing examples) keeps a unit that
fires on a handful of examples from topping the ranking on their noise; the factor ``1 - frac_fire``
prefers units that fire on a part of the class over units that fire on all of it. Everything is a sum over examples, so shards of the data would merge by addition.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.measure.firing import example_value, fires
from compute.nets.probe import Probe, units_of
from compute.progress import bar

MIN_FIRING = 5
SUMS = ("n_fire", "n_fire_ok", "effect_ok")  # (K, U) each; and n_ok: (K,) correct examples per class


def specialization_sums(model: nn.Module, probes: dict[str, nn.Module], data: ImageSet,
                        thresholds: dict[str, np.ndarray], batch_size: int = 500,
                        device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Per layer, float64 (K, U) sums over ``data``: ``n_fire`` (class examples the unit fires on),
    ``n_fire_ok`` (of those, correctly classified) and ``effect_ok`` (their summed removal effect); and
    ``n_ok`` (K,): correctly classified examples per class."""
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
                fire = fires(example_value(probes[name], post), torch.as_tensor(thresholds[name], device=a.device)).double()
                s = out.setdefault(name, {f: torch.zeros(k, a.shape[1], dtype=torch.float64, device=a.device)
                                          for f in SUMS})
                s["n_fire"].index_add_(0, y, fire)
                s["n_fire_ok"].index_add_(0, y, fire * ok)
                s["effect_ok"].index_add_(0, y, fire * ok * effect)
    return {name: {**{f: v.cpu().numpy() for f, v in s.items()}, "n_ok": n_ok.numpy()} for name, s in out.items()}


def specialization(sums: dict[str, np.ndarray], counts: np.ndarray, live: np.ndarray) -> dict[str, np.ndarray]:
    """(K, U) ``frac_fire``, ``fire_effect`` and ``specialization`` of one layer from its sums; NaN where
    undefined (a class without examples, fewer than ``MIN_FIRING`` correct firing examples, a dead unit)."""
    n = counts[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n > 0, sums["n_fire"] / n, np.nan)
        effect = np.where(sums["n_fire_ok"] > 0, sums["effect_ok"] / sums["n_fire_ok"], np.nan)
    enough = (sums["n_fire_ok"] >= MIN_FIRING) & np.asarray(live, dtype=bool)[None, :]
    per_ok = sums["effect_ok"] / np.maximum(sums["n_ok"], 1)[:, None]
    score = np.where(enough, per_ok * (1.0 - frac), np.nan)
    return {"frac_fire": frac, "fire_effect": np.where(np.asarray(live, bool)[None, :], effect, np.nan),
            "specialization": score}
