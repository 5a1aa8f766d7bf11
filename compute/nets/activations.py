"""The one registry of activation kinds that Neuron Atlas probes, and the probe module that reads them.

A probe point is one call of an **elementwise** activation: ReLU, ReLU6, LeakyReLU, PReLU, ELU/CELU/SELU,
GELU (exact and tanh forms), SiLU/Swish, Hardswish, Mish, and Sigmoid, Hardsigmoid and Tanh where the
model uses them as its nonlinearity (not as a gate that multiplies another tensor). Each kind says
how its calls are recognised (module classes, functions, tensor methods), how a functional call is
rebuilt as a module, and the two facts every statistic needs (docs/metrics.md, "Non-rectified
activations and token units"):

- ``at_zero``: the output at pre-activation 0. A unit's **response** is ``max(f(z) - f(0), 0)``: for
  ReLU exactly its output; for the others their positive part above the resting value. A unit is
  **active** at a position when its response is positive, which for every kind here is ``z > 0``
  (ReLU's definition).
- ``rectified``: the output is exactly ``f(0)`` for every ``z <= 0`` (ReLU, ReLU6), so the gradient
  is blocked there; smooth kinds pass a gradient ``f'(z)`` for negative ``z`` too.

Where the units lie in the tensor (``unit_dim``) is part of the probe point: 1 for (N, C), (N, C, H, W)
and (N, C, L); -1 (the last dimension) for token units (N, T, C) and channels-last maps (N, H, W, C),
e.g. a transformer's MLP neurons and ConvNeXt's blocks. Statistics see every layout as
(N, units, positions).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Kind:
    """One activation kind: how its calls look in a traced graph and what its units' values mean."""

    name: str
    modules: tuple[type[nn.Module], ...]
    functions: tuple[Callable[..., Any], ...]
    methods: tuple[str, ...]
    build: Callable[[Any, tuple[Any, ...], dict[str, Any]], nn.Module]  # (target, args after the input, kwargs)
    at_zero: float
    rectified: bool
    minimum: float | None  # the smallest output (None: unbounded below); documented, not used by a formula
    gate: bool = False  # usually a gate (Sigmoid, Tanh): skipped where its output multiplies another tensor


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


def _relu6(target: Any, a: tuple[Any, ...], k: dict[str, Any]) -> nn.Module:
    if target is F.hardtanh and (_arg(a, k, 0, "min_val", -1.0), _arg(a, k, 1, "max_val", 1.0)) != (0.0, 6.0):
        raise ValueError("a hardtanh other than hardtanh(0, 6) = ReLU6")
    return nn.ReLU6()


def _elu(target: Any, a: tuple[Any, ...], k: dict[str, Any]) -> nn.Module:
    if target is F.selu:
        return nn.SELU()
    return (nn.CELU if target is F.celu else nn.ELU)(_arg(a, k, 0, "alpha", 1.0))


def _curve_min(f: Callable[[float], float], lo: float) -> float:
    """The minimum of ``f`` on [lo, 0] to 1e-3 in z (for the docs' table of activation ranges)."""
    return min(f(lo * i / 10000) for i in range(10001))


KINDS: tuple[Kind, ...] = (
    Kind("relu", (nn.ReLU,), (torch.relu, torch.relu_, F.relu, F.relu_), ("relu", "relu_"),
         lambda t, a, k: nn.ReLU(), 0.0, True, 0.0),
    Kind("relu6", (nn.ReLU6,), (F.relu6, F.hardtanh), (), _relu6, 0.0, True, 0.0),
    Kind("leaky_relu", (nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_), (),
         lambda t, a, k: nn.LeakyReLU(_arg(a, k, 0, "negative_slope", 0.01)), 0.0, False, None),
    Kind("prelu", (nn.PReLU,), (), (), lambda t, a, k: nn.PReLU(), 0.0, False, None),
    Kind("elu", (nn.ELU, nn.CELU, nn.SELU), (F.elu, F.celu, F.selu), (), _elu, 0.0, False, -1.0),
    Kind("gelu", (nn.GELU,), (F.gelu,), (), lambda t, a, k: nn.GELU(approximate=_arg(a, k, 0, "approximate", "none")),
         0.0, False, _curve_min(lambda x: x * 0.5 * (1 + math.erf(x / math.sqrt(2))), -4)),
    Kind("silu", (nn.SiLU,), (F.silu,), (), lambda t, a, k: nn.SiLU(), 0.0, False,
         _curve_min(lambda x: x / (1 + math.exp(-x)), -6)),
    Kind("hardswish", (nn.Hardswish,), (F.hardswish,), (), lambda t, a, k: nn.Hardswish(), 0.0, False, -0.375),
    Kind("mish", (nn.Mish,), (F.mish,), (), lambda t, a, k: nn.Mish(), 0.0, False,
         _curve_min(lambda x: x * math.tanh(math.log1p(math.exp(x))), -6)),
    Kind("sigmoid", (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid",), lambda t, a, k: nn.Sigmoid(),
         0.5, False, 0.0, gate=True),
    Kind("hardsigmoid", (nn.Hardsigmoid,), (F.hardsigmoid,), (), lambda t, a, k: nn.Hardsigmoid(),
         0.5, False, 0.0, gate=True),
    Kind("tanh", (nn.Tanh,), (torch.tanh, F.tanh), ("tanh",), lambda t, a, k: nn.Tanh(), 0.0, False, -1.0,
         gate=True),
)
BY_NAME = {k.name: k for k in KINDS}

# Nonlinearities that are not elementwise: a unit's output depends on other units, so "the unit's
# value" and its ablation are not defined by the unit alone. Named when skipped.
NOT_ELEMENTWISE_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU, nn.MultiheadAttention)
NOT_ELEMENTWISE_FUNCTIONS = (F.softmax, F.log_softmax, F.softmin, F.glu, torch.softmax, torch.log_softmax)
NOT_ELEMENTWISE_METHODS = ("softmax", "log_softmax")


def kind_of_module(module: nn.Module) -> Kind | None:
    """The kind of an activation module (exact class first: ReLU6 is a Hardtanh, not every Hardtanh is ReLU6)."""
    for kind in KINDS:
        if type(module) in kind.modules:
            return kind
    for kind in KINDS:
        if isinstance(module, kind.modules):
            return kind
    return None


def fresh_module(kind: Kind, module: nn.Module | None, target: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> nn.Module:
    """A non-in-place module computing the call: ``module`` itself, a shallow copy of it with
    ``inplace`` off (parameters shared), or for a functional call one built from its constant arguments."""
    if module is None:
        return kind.build(target, args, kwargs)
    if getattr(module, "inplace", False):
        module = copy.copy(module)
        module.inplace = False
    return module


class ProbePoint(nn.Module):
    """One probed call of an activation: input = pre-activation, output = the unit's activity.

    ``kind`` names the registry entry; ``unit_dim`` is the dimension that holds the units (1 or -1).
    ``fill`` is the value an ablated unit takes, one per unit (None: zero ablation); set by the run
    for ``--ablate mean``.
    """

    def __init__(self, act: nn.Module, kind: str, unit_dim: int = 1) -> None:
        super().__init__()
        self.act = act
        self.kind = kind
        self.unit_dim = unit_dim
        self.fill: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, unit_dim={self.unit_dim}"


def point_kind(module: nn.Module) -> Kind:
    """The activation kind of a probe module (a ``ProbePoint`` or a plain activation module)."""
    if isinstance(module, ProbePoint):
        return BY_NAME[module.kind]
    kind = kind_of_module(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a supported activation module")
    return kind


def unit_dim(module: nn.Module) -> int:
    """The dimension of a probe module's output that holds the units (plain modules: 1)."""
    return module.unit_dim if isinstance(module, ProbePoint) else 1


def fill_of(module: nn.Module) -> torch.Tensor | None:
    """The per-unit ablation value of a probe module (None: zero)."""
    return module.fill if isinstance(module, ProbePoint) else None


def units_first(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with its unit dimension moved to 1 (a view)."""
    return t if dim in (1, 1 - t.dim()) else t.movedim(dim, 1)


def by_position(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Any layout as (batch, units, positions): positions are pixels, tokens, or one for (N, C)."""
    t = units_first(t, dim)
    return t.reshape(t.shape[0], t.shape[1], -1)


def response(module: nn.Module, post: torch.Tensor) -> torch.Tensor:
    """The non-negative response ``max(f(z) - f(0), 0)`` from the output ``f(z)`` (ReLU: the output itself)."""
    kind = point_kind(module)
    if kind.rectified and kind.at_zero == 0.0:
        return post
    return (post - kind.at_zero).clamp(min=0)


def derivative(module: nn.Module, pre: torch.Tensor) -> torch.Tensor:
    """``f'(z)`` elementwise: what carries the output-side gradient back to the pre-activation.

    Autograd through the activation's own forward (hooks bypassed), so any kind and parameter
    (GELU's tanh form, PReLU's slope) is differentiated as training differentiates it.
    """
    with torch.enable_grad():
        z = pre.detach().requires_grad_()
        (d,) = torch.autograd.grad(module.forward(z).sum(), z)
    return d
