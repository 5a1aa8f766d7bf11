"""Settings of the images stage, importable without torch (the CLI builds them before loading it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compute.errors import ConfigError


@dataclass(frozen=True)
class ActMaxConfig:
    """Settings of activation maximization (what each regularizer does: compute/images/actmax.py)."""

    steps: int = 64  # the cap; an image stops earlier once it has converged (below)
    restarts: int = 3
    lr: float = 0.1
    l2: float = 5e-4
    tv: float = 5e-4
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    init_std: float = 0.1
    seed: int = 0
    tol: float = 0.01  # converged: the objective's mean rose by less than this (relative) over `window` steps
    window: int = 8
    batch: int = 1024  # images per stack (2 directions x restarts x units of a chunk)

    def check(self) -> None:
        for name in ("steps", "restarts", "blur_every", "window", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"actmax {name} must be at least 1, got {getattr(self, name)}.")
        for name in ("lr", "blur_sigma", "init_std"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"actmax {name} must be positive and finite, got {getattr(self, name)}.")
        for name in ("l2", "tv", "jitter", "tol"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"actmax {name} must be finite and not negative, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ImageConfig:
    """Settings of the images stage."""

    top_k: int = 9
    actmax: ActMaxConfig = field(default_factory=ActMaxConfig)

    def check(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}.")
        self.actmax.check()
