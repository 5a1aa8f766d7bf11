"""Live what-if ablation for the dashboard: zero a chosen set of units of a published run, get the deltas.

The run's checkpoint, its data and a ready engine are loaded once per run folder and kept (a few
runs at most); each call is then one engine pass over the evaluation set, which yields the intact
and the ablated outcome together. This is the one place the dashboard needs torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from compute.ablation.outcome import CONFIDENCE, Outcome, PairedSums
from compute.datasets.sources import ImageSet
from compute.ablation.engine import AblationEngine
from compute.errors import ConfigError
from compute.nets.models import load_checkpoint
from compute.run.config import RunConfig
from compute.run.data import load_data
from warehouse.layout import CHECKPOINT, is_published, published_at
from warehouse.errors import WarehouseError
from warehouse.validate import stored_run_config, verified_bytes

SPLITS = ("eval", "train")


@dataclass(frozen=True)
class WhatIfResult:
    """Outcome of one what-if ablation; deltas are ablated minus intact. ``paired`` holds the sums over
    the examples of their own changes, so the intervals are paired: each example is its own control."""

    units: dict[str, list[int]]
    split: str
    n_examples: int
    class_names: tuple[str, ...]
    base: Outcome
    ablated: Outcome
    seconds: float
    paired: PairedSums

    @property
    def acc_delta(self) -> float:
        return self.ablated.accuracy - self.base.accuracy

    @property
    def loss_delta(self) -> float:
        return self.ablated.loss - self.base.loss

    @property
    def class_acc_delta(self) -> np.ndarray:
        return self.ablated.class_accuracy - self.base.class_accuracy

    @property
    def class_loss_delta(self) -> np.ndarray:
        return self.ablated.class_loss - self.base.class_loss

    def loss_interval(self, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
        """(low, high, p) of the mean loss change: paired t interval and t-test over the examples' own changes."""
        lo, hi, p = self.paired.loss_test(confidence)
        return float(lo[0]), float(hi[0]), float(p[0])

    def acc_interval(self, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
        """(low, high, p) of the accuracy change: the paired t interval of the mean of each example's change
        (+1 wrong -> right, -1 right -> wrong, else 0), and the exact McNemar p of the flips."""
        s = self.paired
        flips = PairedSums(s.n, s.helped - s.hurt, s.helped + s.hurt, s.hurt, s.helped)
        lo, hi, _ = flips.loss_test(confidence)
        return float(lo[0]), float(hi[0]), float(s.mcnemar_p()[0])


@dataclass
class LoadedRun:
    """A run's model wrapped in an engine, its unit counts and its evaluation and training data."""

    engine: AblationEngine
    n_units: dict[str, int]
    data: dict[str, ImageSet]


def run_config(run_dir: Path) -> RunConfig:
    """The run's settings as stored in ``runs.config``; stored values that are not a run's settings (its runs
    table rewritten, the manifest refreshed) are a ``WarehouseError`` naming the run, not a page's traceback."""
    stored = stored_run_config(run_dir)
    try:
        return RunConfig.from_dict(stored)
    except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as e:
        raise WarehouseError(f"the settings stored with run {run_dir.name} (runs.config) are not valid "
                             f"({str(e).rstrip('.')}); recompute the run.") from None


@lru_cache(maxsize=4)
def _load(run_dir: str, _stamp: float) -> LoadedRun:
    path = Path(run_dir)
    cfg = run_config(path)
    # The bytes loaded are the bytes hashed: a checkpoint changed after publishing is refused.
    model, _ = load_checkpoint(verified_bytes(path, CHECKPOINT))
    splits, eval_set = load_data(cfg)
    engine = AblationEngine(model)
    return LoadedRun(engine, engine.unit_counts(eval_set), {"eval": eval_set, "train": splits.train})


def load_run(run_dir: Path) -> LoadedRun:
    """The run at ``run_dir``, loaded once (reloaded if its manifest changes)."""
    if not is_published(Path(run_dir)):
        raise ConfigError(f"{run_dir} is not a published run: it has no manifest (it may be a run still being "
                          "computed, or a damaged folder).")
    return _load(str(Path(run_dir).resolve()), published_at(Path(run_dir)))


def ablate_units(run_dir: Path, units: dict[str, list[int]], split: str = "eval") -> WhatIfResult:
    """Accuracy, loss and per-class deltas with ``units`` (layer -> unit indices) clamped to zero together."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    run = load_run(run_dir)
    chosen = {layer: sorted({int(u) for u in us}) for layer, us in units.items() if len(us)}
    if not chosen:
        raise ConfigError("no units selected: choose at least one unit to ablate.")
    masks = {}
    for layer, us in chosen.items():
        if layer not in run.n_units:
            raise ConfigError(f"unknown layer {layer!r}; this run's layers: {', '.join(run.n_units)}.")
        n = run.n_units[layer]
        if us[0] < 0 or us[-1] >= n:
            raise ConfigError(f"layer {layer} has units 0..{n - 1}; got {us[0] if us[0] < 0 else us[-1]}.")
        mask = torch.ones(1, n)
        mask[0, us] = 0
        masks[layer] = mask
    data = run.data[split]
    started = time.perf_counter()
    intact, (sums,) = run.engine.evaluate_jobs(data, [masks])
    return WhatIfResult(chosen, split, len(data), data.class_names, intact.outcome(0), sums.outcome(0),
                        time.perf_counter() - started, sums.paired())
