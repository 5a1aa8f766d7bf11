"""The built-in models by name with their options: what the command line and a run's configuration
know of a model before it is built. No torch here, so a command that builds nothing (``python -m
compute list``, ``gc``, a usage error) answers in a fraction of a second instead of after torch's
~2.5 s import; ``compute.nets.models`` builds each one (``REGISTRY``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compute.errors import ConfigError

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelOption:
    """An option of a built-in model: ``--<name>`` on the command line, ``RunConfig.<name>``,
    ``ModelSpec.options[name]``."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str


def _activation(text: str) -> str:
    from compute.nets.activations import BY_NAME  # torch: only commands that build a model parse it

    if text not in BY_NAME:
        raise ConfigError(f"--activation must be one of {', '.join(BY_NAME)}, got {text!r}.")
    return text


def _widths(text: str) -> tuple[int, ...]:
    """Comma-separated positive widths in ASCII digits (int() would also take '٣' or '1_000')."""
    parts = [w.strip() for w in text.split(",")]
    if not all(re.fullmatch(r"[0-9]{1,7}", w) and int(w) >= 1 for w in parts):
        raise ConfigError(f"--widths must be comma-separated integers (positive, below 10,000,000) such as "
                          f"128,128, got {text!r}.")
    return tuple(int(w) for w in parts)


def _width(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--width must be a width multiplier such as 0.25, got {text!r}.") from None
    if not math.isfinite(value) or not 0 < value <= 64:
        raise ConfigError(f"--width must be a width multiplier in (0, 64], got {text!r}.")
    return value


_ACTIVATION = ModelOption("activation", _activation, "relu",
                          "the built-in model's activation: relu (default), gelu, silu, hardswish, ... "
                          "(compute/nets/activations.py)")
#: The one list of built-in models, each with its options; `torchvision:<name>` is resolved apart.
OPTIONS: dict[str, tuple[ModelOption, ...]] = {
    "lenet5": (_ACTIVATION,),
    "mlp": (ModelOption("widths", _widths, (128, 128), "mlp hidden widths, e.g. 128,128"), _ACTIVATION),
    "cifar-convnet": (ModelOption("width", _width, 0.25, "cifar-convnet channel width multiplier"), _ACTIVATION),
}
MODEL_NAMES = (*OPTIONS, f"{TORCHVISION_PREFIX}<name>")
MODEL_OPTIONS = tuple({o.name: o for options in OPTIONS.values() for o in options}.values())
#: Each option's default (``RunConfig``'s and the command line's).
OPTION_DEFAULTS: dict[str, Any] = {o.name: o.default for o in MODEL_OPTIONS}


def known_model(name: str) -> bool:
    return name in OPTIONS or (name.startswith(TORCHVISION_PREFIX) and len(name) > len(TORCHVISION_PREFIX))


def model_options(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The options of model ``name`` picked from ``values`` (e.g. a RunConfig's fields)."""
    return {o.name: values[o.name] for o in OPTIONS.get(name, ())}
