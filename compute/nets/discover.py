"""Probe points of arbitrary PyTorch models, found by tracing the forward pass with torch.fx.

A probe point is one *call* of an elementwise activation (``compute.nets.activations.KINDS``: a module
such as ``nn.GELU``, a function such as ``F.silu``, or a method such as ``.relu()``), not a module:
torchvision's ResNet blocks call one in-place ``nn.ReLU`` twice (after the first conv and after the
residual addition), and each call is a different layer of units. Every call site is rewired to its
own ``ProbePoint`` (a non-in-place copy of the activation), so the usual hooks see the pre-activation
(the input, intact) and the activity (the output) of each call separately, and ablating a unit sets
the output of exactly that call (after BatchNorm, after a residual addition), never weights.

Where the units lie is read from the graph: the layer that produced the pre-activation (a Linear or
LayerNorm works on the last dimension: token units (N, T, C), channels-last maps (N, H, W, C); a
convolution or BatchNorm on dimension 1: (N, C, H, W)). Calls that cannot be probed are skipped with
the reason (``ProbedGraph.skipped``): a Sigmoid/Tanh used as a gate, a non-elementwise nonlinearity
(softmax, GLU, attention), a layout whose unit dimension cannot be told, arguments computed at run time.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import sys
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compute.errors import ConfigError
from compute.nets.activations import (KINDS, NOT_ELEMENTWISE_FUNCTIONS, NOT_ELEMENTWISE_METHODS,
                                      NOT_ELEMENTWISE_MODULES, Kind, ProbePoint, fresh_module, kind_of_module)
from compute.nets.shapes import tensor_shapes


def _leaf_types() -> tuple[type[nn.Module], ...]:
    """Modules traced as one call: torchvision's StochasticDepth reads ``self.training`` in Python, so
    tracing through it would freeze the mode the model had when it was traced. Looked up, not imported:
    a model that holds one has imported its module, and importing torchvision (torch._dynamo with it)
    would cost a fresh process, such as each Ray worker at its first item, 3.7 s."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    return (module.StochasticDepth,) if module is not None else ()


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_leaf_types(), ProbePoint)) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with the leaf modules above (any error of fx propagates)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class ProbedGraph(fx.GraphModule):
    """A traced model whose activation call sites are probe modules; ``probes`` maps layer -> module
    path, ``skipped`` maps each activation call left out to the reason."""

    probes: dict[str, str]
    skipped: dict[str, str]

    def probe_modules(self) -> dict[str, nn.Module]:
        return {layer: self.get_submodule(path) for layer, path in self.probes.items()}

    def __reduce__(self) -> tuple:
        # fx pickles the generated code and rebuilds a plain GraphModule; keep the class (Ray workers
        # and whole-model checkpoints unpickle a ProbedGraph).
        return _unpickle_probed, (super().__reduce__(),)


def _unpickle_probed(reduced: tuple) -> ProbedGraph:
    rebuild, args = reduced
    gm = rebuild(*args)
    probed = ProbedGraph(gm, gm.graph, class_name=type(gm).__name__)
    probed.probes = gm.probes
    probed.skipped = getattr(gm, "skipped", {})
    return probed


def _call(gm: fx.GraphModule, node: fx.Node) -> tuple[Kind | None, nn.Module | None, str | None]:
    """(kind, the called module or None, why it is not a probe point or None) of a graph node;
    (None, None, None) for nodes that are no nonlinearity at all."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, NOT_ELEMENTWISE_MODULES):
            return None, None, f"{type(module).__name__} is not elementwise (a unit's output depends on other units)"
        return kind_of_module(module), module, None
    if node.op == "call_function":
        if node.target in NOT_ELEMENTWISE_FUNCTIONS:
            return None, None, f"{node.target.__name__} is not elementwise (a unit's output depends on other units)"
        return next((k for k in KINDS if node.target in k.functions), None), None, None
    if node.op == "call_method":
        if node.target in NOT_ELEMENTWISE_METHODS:
            return None, None, f".{node.target}() is not elementwise (a unit's output depends on other units)"
        return next((k for k in KINDS if node.target in k.methods), None), None, None
    return None, None, None


_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_LAST = "last"
_FIRST = "first"
# What the layer producing a pre-activation says about where its units are.
_LAST_MODULES = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.MultiheadAttention)
_FIRST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
                  nn.InstanceNorm3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                  nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_LAST_FUNCTIONS = {F.linear, torch.matmul, operator.matmul, torch.bmm, torch.addmm, F.layer_norm}
_FIRST_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.batch_norm, F.group_norm, F.max_pool2d, F.avg_pool2d,
                    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten}
_PASS_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.truediv,
                   torch.add, torch.mul, operator.getitem, F.dropout}
_PASS_METHODS = {"contiguous", "add", "add_", "mul", "mul_", "clone"}


def _unit_side(gm: fx.GraphModule, node: Any, depth: int = 0) -> str | None:
    """Where the units of ``node``'s tensor lie (``first`` = dimension 1, ``last``), judged from the
    layer that produced it, through elementwise operations; None if it cannot be told."""
    if not isinstance(node, fx.Node) or depth > 64:
        return None
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, _LAST_MODULES):
            return _LAST
        if isinstance(module, _FIRST_MODULES):
            return _FIRST
        passes = isinstance(module, (*_PASS_MODULES, *_leaf_types(), ProbePoint)) or kind_of_module(module)
        return _unit_side(gm, node.args[0] if node.args else None, depth + 1) if passes else None
    if node.op == "call_function":
        if node.target in _LAST_FUNCTIONS:
            return _LAST
        if node.target in _FIRST_FUNCTIONS or getattr(node.target, "__name__", "") == "stochastic_depth":
            return _FIRST if node.target in _FIRST_FUNCTIONS else _unit_side(gm, node.args[0], depth + 1)
        if node.target not in _PASS_FUNCTIONS and not any(node.target in k.functions for k in KINDS):
            return None
    elif node.op == "call_method":
        if node.target == "flatten":
            return _FIRST
        if node.target not in _PASS_METHODS and not any(node.target in k.methods for k in KINDS):
            return None
    else:
        return None
    for arg in node.args:  # through an elementwise op: the first operand whose layout is known
        side = _unit_side(gm, arg, depth + 1)
        if side is not None:
            return side
    return None


def _ndims(gm: fx.GraphModule, in_shape: tuple[int, ...] | None) -> dict[fx.Node, int]:
    """Dimensions of every traced tensor for a sample input of ``in_shape`` (empty without it)."""
    if in_shape is None:
        return {}
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            shapes = tensor_shapes(gm, torch.zeros(2, *in_shape))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {n: len(shape) for n, (shape, _) in shapes.items()}


def trace_probes(model: nn.Module, in_shape: tuple[int, ...] | None = None) -> ProbedGraph:
    """``model`` traced, with one probe module per activation call, named after the call site.

    Layer names are the called module's path (``layer1.0.relu``), with ``_1``, ``_2``... for its
    second, third... call (``layer1.0.relu_1`` is the ReLU after the residual addition); functional
    calls are named by their graph node (``gelu_2``). Parameters and state-dict keys are unchanged
    (except a PReLU's slope, which moves into its probe module). ``in_shape`` (one example) lets a
    pre-activation of unknown origin be probed when it is (N, C); without it such calls are taken
    as channels-first.
    """
    try:
        gm = symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError... on dynamic control flow
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx to find its activations ({type(e).__name__}: {e}). "
            f"Models with data-dependent control flow need explicit probe points: subclass "
            f"compute.nets.models.ProbedModel and name its activation modules in `probes`."
        ) from e
    try:
        ndims = _ndims(gm, in_shape)
    except Exception:  # a wrong sample shape is reported by the run's own shape check, with its fix
        ndims = {}
    calls: Counter[str] = Counter()
    probes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        kind, module, not_elementwise = _call(gm, node)
        if kind is None and not_elementwise is None:
            continue
        base = str(node.target) if node.op == "call_module" else node.name
        layer = base if calls[base] == 0 else f"{base}_{calls[base]}"
        calls[base] += 1
        why = not_elementwise
        if kind is not None and why is None:
            why = _why_not(gm, node, kind, ndims.get(node.args[0]) if node.args else None)
        if why is None:
            side = _unit_side(gm, node.args[0])
            dim = -1 if side == _LAST and ndims.get(node.args[0]) != 2 else 1  # (N, C): dimension 1 either way
            try:
                act = fresh_module(kind, module, node.target, tuple(node.args[1:]), dict(node.kwargs))
            except (ValueError, TypeError) as e:
                why = f"its arguments do not describe a supported {kind.name}: {e}"
        if why is not None:
            skipped[layer] = why
            continue
        module_name = "probe_" + re.sub(r"\W", "_", layer)
        gm.add_submodule(module_name, ProbePoint(act, kind.name, dim))
        with gm.graph.inserting_after(node):
            probe = gm.graph.call_module(module_name, args=(node.args[0],))
        node.replace_all_uses_with(probe)
        gm.graph.erase_node(node)
        probes[layer] = module_name
    if not probes:
        raise ConfigError(_nothing_to_probe(type(model).__name__, skipped))
    gm.graph.lint()
    probed = ProbedGraph(gm, gm.graph, class_name=type(model).__name__)
    probed.probes = probes
    probed.skipped = skipped
    return probed


def _why_not(gm: fx.GraphModule, node: fx.Node, kind: Kind, ndim: int | None) -> str | None:
    """Why an activation call cannot be a probe point, or None if it can."""
    if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        return f"a {kind.name} whose arguments are computed in the forward pass"
    if kind.gate and any((u.op in ("call_function", "call_method") and u.target in _MUL) for u in node.users):
        return (f"a {kind.name} gate: its output multiplies another tensor (squeeze-excitation, LSTM/GLU-style "
                f"gating), so it scales other units instead of being a layer of units")
    if ndim is not None and ndim < 2:
        return f"a {kind.name} on a tensor of {ndim} dimension(s): it has no (batch, units) layout to reduce"
    if ndim is not None and ndim > 2 and _unit_side(gm, node.args[0]) is None:
        return (f"a {kind.name} on a {ndim}-dimensional tensor whose unit dimension cannot be told: it does not "
                f"come from a convolution, normalisation or linear layer through elementwise operations")
    return None


def _nothing_to_probe(model: str, skipped: dict[str, str]) -> str:
    supported = ", ".join(k.name for k in KINDS)
    if not skipped:
        return (f"{model} has no activation to probe: Neuron Atlas probes the units of elementwise activations "
                f"({supported}), as modules or functional calls, and found none in its traced forward pass. "
                f"Add a nonlinearity, or, if the model computes one in a way torch.fx cannot see, subclass "
                f"compute.nets.models.ProbedModel and name its activation modules in `probes`.")
    listed = "; ".join(f"{layer}: {why}" for layer, why in list(skipped.items())[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return (f"{model} has no activation that can be probed: every nonlinearity was skipped ({listed}{more}). "
            f"Neuron Atlas probes elementwise activations ({supported}) whose units it can locate; "
            f"make the nonlinearity elementwise or name its probe modules in a compute.nets.models.ProbedModel.")


def select_layers(probes: dict[str, str], patterns: list[str] | None,
                  skipped: dict[str, str] | None = None) -> dict[str, str]:
    """The probes whose layer names match any of ``patterns`` (names or globs), in forward order;
    a pattern starting with ``!`` excludes the layers it matches (only exclusions: from every layer).
    A pattern that matches only skipped calls says why they were skipped."""
    if not patterns:
        return probes
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    for p in include + exclude:
        if not any(fnmatch.fnmatchcase(layer, p) for layer in probes):
            why = [f"{layer} ({reason})" for layer, reason in (skipped or {}).items() if fnmatch.fnmatchcase(layer, p)]
            if why:
                raise ConfigError(f"--layers: {p!r} matches only activation calls that cannot be probed: "
                                  f"{'; '.join(why[:3])}. Probe-able layers: {', '.join(probes)}.")
            raise ConfigError(f"--layers: no layer matches {p!r}; the model's layers are: {', '.join(probes)}.")
    chosen = {layer: m for layer, m in probes.items()
              if (not include or any(fnmatch.fnmatchcase(layer, p) for p in include))
              and not any(fnmatch.fnmatchcase(layer, p) for p in exclude)}
    if not chosen:
        raise ConfigError(f"--layers {','.join(patterns)} leaves no layer to probe; the model's layers are: "
                          f"{', '.join(probes)}.")
    return chosen
