"""Probe points of arbitrary PyTorch models, found by tracing the forward pass with torch.fx.

A probe point is one *call* of a rectifier (an ``nn.ReLU`` module, ``F.relu``/``torch.relu`` or
``.relu()``), not a module: torchvision's ResNet blocks call one in-place ``nn.ReLU`` twice (after
the first conv and after the residual addition), and each call is a different layer of units.
Every call site is rewired to its own fresh, non-in-place ``nn.ReLU`` submodule, so the usual
hooks see the pre-activation (the input, intact) and the post-ReLU activity (the output) of each
call separately, and ablating a unit zeroes the post-activation of exactly that call (after
BatchNorm, after a residual addition), never weights.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compute.errors import ConfigError

_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_RELU_METHODS = {"relu", "relu_"}


class ProbedGraph(fx.GraphModule):
    """A traced model whose rectifier call sites are probe modules; ``probes`` maps layer -> module."""

    probes: dict[str, str]

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
    return probed


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def trace_probes(model: nn.Module) -> ProbedGraph:
    """``model`` traced, with one probe module per rectifier call, named after the call site.

    Layer names are the called module's path (``layer1.0.relu``), with ``_1``, ``_2``... for its
    second, third... call (``layer1.0.relu_1`` is the ReLU after the residual addition); functional
    calls are named by their graph node (``relu_2``). Parameters and state-dict keys are unchanged.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError... on dynamic control flow
        raise ConfigError(
            f"cannot trace {type(model).__name__} with torch.fx to find its ReLUs ({type(e).__name__}: {e}). "
            f"Models with data-dependent control flow need explicit probe points: subclass "
            f"compute.nets.models.ProbedModel and name its ReLU modules in `probes`."
        ) from e
    calls: Counter[str] = Counter()
    probes: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if not _is_relu(gm, node):
            continue
        base = str(node.target) if node.op == "call_module" else node.name
        layer = base if calls[base] == 0 else f"{base}_{calls[base]}"
        calls[base] += 1
        module_name = "probe_" + re.sub(r"\W", "_", layer)
        gm.add_submodule(module_name, nn.ReLU())
        with gm.graph.inserting_after(node):
            probe = gm.graph.call_module(module_name, args=(node.args[0],))
        node.replace_all_uses_with(probe)
        gm.graph.erase_node(node)
        probes[layer] = module_name
    if not probes:
        raise ConfigError(f"{type(model).__name__} has no ReLU to probe; Neuron Atlas probes rectified units.")
    gm.graph.lint()
    probed = ProbedGraph(gm, gm.graph, class_name=type(model).__name__)
    probed.probes = probes
    return probed


def select_layers(probes: dict[str, str], patterns: list[str] | None) -> dict[str, str]:
    """The probes whose layer names match any of ``patterns`` (names or globs), in forward order."""
    if not patterns:
        return probes
    for p in patterns:
        if not any(fnmatch.fnmatchcase(layer, p) for layer in probes):
            raise ConfigError(f"--layers: no layer matches {p!r}; the model's layers are: {', '.join(probes)}.")
    return {layer: m for layer, m in probes.items() if any(fnmatch.fnmatchcase(layer, p) for p in patterns)}
