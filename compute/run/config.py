"""A run's settings and the configuration saved for --resume; no torch here, so a command line's mistakes
are named before torch loads (``compute.run.data`` loads what a run reads)."""

from __future__ import annotations

import json
import math
import platform
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from compute.ablation.sequential import DEFAULT_WIDTH
from compute.errors import ConfigError
from compute.images.config import ActMaxConfig, ImageConfig
from compute.nets.catalog import OPTION_DEFAULTS, model_options
from compute.threads import DEFAULT_THREADS
from warehouse.parse import SEED_MAX, shown
from warehouse.publish import write_file


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run; stored as JSON in ``runs.config``."""

    model: str = "lenet5"
    dataset: str = "mnist-5k"
    epochs: int = 12
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    data_dir: str | None = None
    eval_dataset: str | None = None
    train_size: int | None = None
    eval_size: int | None = None
    widths: tuple[int, ...] = OPTION_DEFAULTS["widths"]  # the built-in models' options: compute/nets/catalog.py
    width: float = OPTION_DEFAULTS["width"]
    device: str = "cpu"
    run_id: str | None = None
    label_noise: float = 0.0  # fraction of training labels replaced by random ones
    until_train_acc: float | None = None  # train until this training accuracy, with `epochs` as the cap
    experiment: str | None = None  # groups the runs of a sweep
    layers: tuple[str, ...] | None = None  # names or glob patterns; None = every probe point
    checkpoint: str | None = None  # trained weights to load instead of (or before) training
    images: ImageConfig | None = field(default_factory=ImageConfig)  # None: no unit_images rows
    train_curves: bool = False  # also draw the ablation curves on the training set (training labels)
    threads: int = DEFAULT_THREADS  # torch intra-op threads for every stage (compute/threads.py); 0: every CPU
    activation: str = OPTION_DEFAULTS["activation"]
    ablate: str = "zero"  # what an ablated unit is set to: zero, or mean (its mean output on the evaluation set)
    ablation_budget: str = "full"  # "sequential": each unit stops once its answer is settled (compute.ablation.sequential)
    ablation_width: float = DEFAULT_WIDTH  # with "sequential": stop once a unit's interval is narrower than this

    def __post_init__(self) -> None:
        # The command line checks its own values; these rules also hold for runs started from Python and for a
        # saved config.json read back by --resume (a damaged one would otherwise fail deep inside a stage).
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be a whole number from 0 to {SEED_MAX:,}, got {shown(self.seed)}.")
        for name, (kind, lo, hi, optional) in _RULES.items():
            _check_field(name, getattr(self, name), kind, lo, hi, optional)
        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.widths):
            raise ConfigError(f"widths must be positive whole numbers, got {shown(self.widths)}.")
        if self.layers is not None and not all(isinstance(x, str) for x in self.layers):
            raise ConfigError(f"layers must be names or patterns, got {shown(self.layers)}.")
        if self.images is not None and not isinstance(self.images, ImageConfig):
            raise ConfigError(f"images must be an ImageConfig or None, got {shown(self.images)}.")

    @staticmethod
    def from_dict(stored: dict[str, Any]) -> RunConfig:
        """The config saved as JSON (``runs.config``, a run's stage folder); unknown keys are ignored."""
        values = {k: v for k, v in stored.items() if k in {f.name for f in fields(RunConfig)}}
        values["widths"] = tuple(values.get("widths", ()))
        values["layers"] = tuple(values["layers"]) if values.get("layers") else None
        img = values.get("images")
        values["images"] = ImageConfig(img["top_k"], ActMaxConfig(**img["actmax"])) if img else None
        return RunConfig(**values)

    def require_weights(self) -> None:
        """A run that does not train (``epochs`` 0) starts from a checkpoint. Not a rule of the config itself:
        ``compute.api.analyze`` probes a model given with its weights."""
        if self.epochs == 0 and not self.checkpoint:
            raise ConfigError("--epochs 0 (no training) needs --checkpoint with trained weights.")

    def model_options(self) -> dict[str, Any]:
        """This run's model options (``compute.nets.catalog.OPTIONS`` says which fields they are)."""
        return model_options(self.model, {f.name: getattr(self, f.name) for f in fields(self)})


#: field -> (type, lowest, highest, may be None): the numbers and names of ``RunConfig`` (seed, widths, layers
#: and images are checked beside them). ``ABOVE`` fields exclude their lowest value (a learning rate of 0).
_RULES: dict[str, tuple[type, float | None, float | None, bool]] = {
    "model": (str, None, None, False), "dataset": (str, None, None, False), "epochs": (int, 0, None, False),
    "batch_size": (int, 1, None, False), "lr": (float, 0, None, False), "data_dir": (str, None, None, True),
    "eval_dataset": (str, None, None, True), "train_size": (int, 1, None, True), "eval_size": (int, 1, None, True),
    "width": (float, 0, None, False), "device": (str, None, None, False), "run_id": (str, None, None, True),
    "label_noise": (float, 0, 1, False), "until_train_acc": (float, 0, 1, True), "experiment": (str, None, None, True),
    "checkpoint": (str, None, None, True), "train_curves": (bool, None, None, False), "threads": (int, 0, None, False),
    "activation": (str, None, None, False), "ablate": (str, None, None, False),
    "ablation_budget": (str, None, None, False), "ablation_width": (float, 0, None, False),
}
ABOVE = {"lr", "width", "until_train_acc", "ablation_width"}


def _check_field(name: str, value: Any, kind: type, lo: float | None, hi: float | None, optional: bool) -> None:
    """``value`` is of ``kind`` (an int is a float too; a bool is neither), finite, and within its bounds."""
    if value is None and optional:
        return
    ok = isinstance(value, bool) if kind is bool else (
        not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind))
    above = name in ABOVE
    if ok and kind in (int, float):
        ok = math.isfinite(value) and (lo is None or value > lo or (value == lo and not above)) and \
            (hi is None or value <= hi)
    if not ok:
        what = {str: "a name", bool: "true or false", int: "a whole number", float: "a finite number"}[kind]
        span = "" if lo is None else f" {'above' if above else 'from'} {lo:g}" + ("" if hi is None else f" up to {hi:g}")
        raise ConfigError(f"{name} must be {what}{span}{' or None' if optional else ''}, got {shown(value)}.")


@dataclass
class RunSummary:
    run_id: str
    path: Path
    figures: dict[str, float] = field(default_factory=dict)


def _id_part(text: str) -> str:
    """``text`` as a run id part: runs of other characters as one '-', at most 48 characters."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-._")[:48].strip("-._") or "x"


def default_run_id(cfg: RunConfig) -> str:
    """``<model>-<dataset>-s<seed>-<UTC stamp>``, always a valid run id (``torchvision:resnet18`` ->
    ``torchvision-resnet18``; a dataset folder by its last name)."""
    kind, _, where = cfg.dataset.rpartition(":")
    data = (Path(where).name or where) if kind in ("idx", "folder") else f"{kind}-{Path(where).name or where}"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{_id_part(cfg.model)}-{_id_part(data.lstrip('-'))}-s{cfg.seed}-{stamp}"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "pyarrow", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def settle_config(cfg: RunConfig, run_id: str, stages_dir: Path, resume: bool) -> RunConfig:
    """The run's configuration: saved at the start, and read back (not re-taken) on resume."""
    path = stages_dir / "config.json"
    if resume and path.exists():
        try:
            if not path.is_file():
                raise ValueError("not a regular file")
            return RunConfig.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, ConfigError) as e:
            raise ConfigError(f"the saved configuration {path} of the interrupted run is damaged "
                              f"({str(e).rstrip('.')}); start the run again without --resume, after deleting "
                              f"{stages_dir} if it is still there.") from None
    cfg = replace(cfg, run_id=run_id)
    stages_dir.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(asdict(cfg)).encode(), "the run's configuration")
    return cfg
