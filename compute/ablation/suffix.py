"""Splitting a network at a probe point into a prefix (run once per batch) and a suffix (run per ablation).

Ablating a unit of a layer changes nothing before the layer, so only the part of the forward pass
that depends on the probe's output (the *suffix*) has to be recomputed. The split works on the
torch.fx graph of any symbolically traceable model: the suffix is every node downstream of the probe
module's call; its inputs are the probe's output plus every earlier tensor it reads (e.g. the
identity branch of a residual add). Models that cannot be traced, or whose suffix would read
something other than per-example tensors, fall back to ``WholeModel``: the full forward pass with
masking hooks (still many ablations per pass).

Ablations are stacked along the batch dimension: M ablations of a batch of B examples are one
batch of M*B rows, example-major within each ablation, and a mask (M, U) zeroes the ablated units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from compute.nets.activations import ProbePoint, fill_of, unit_dim
from compute.nets.pools import is_2x2_pool, max_pool_2x2
from compute.nets.shapes import tensor_shapes


def _unit_shape(ndim: int, m: int, n_units: int, dim: int) -> list[int]:
    """Broadcast shape of per-ablation unit values (M, U) against stacked activity viewed as (M, B, ...)
    of ``ndim`` + 1 dimensions, the units at ``dim`` of the unstacked (B, ...) tensor."""
    shape = [m] + [1] * ndim
    shape[dim % ndim + 1] = n_units
    return shape


def _masked(t: torch.Tensor, mask: torch.Tensor, dim: int, fill: torch.Tensor | None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` viewed as (M or 1, B, ...) with units kept where ``mask`` is 1 and set to ``fill`` (or 0) where 0."""
    shape = _unit_shape(t.dim() - 1, mask.shape[0], mask.shape[1], dim)
    keep = mask.view(shape)
    if fill is None:
        return torch.mul(t, keep, out=out) if out is not None else t * keep
    shape[0] = 1
    return torch.add(t * keep, (1 - keep) * fill.to(t.dtype).view(shape), out=out)


def stack(t: torch.Tensor, m: int, mask: torch.Tensor | None = None, dim: int = 1,
          fill: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` (B, ...) repeated for M ablations as (M*B, ...), units (at ``dim``) kept where ``mask``
    (M, U) is 1 and set to ``fill`` (default 0) where it is 0."""
    if mask is None:
        return t.unsqueeze(0).expand(m, *t.shape).reshape(m * t.shape[0], *t.shape[1:])
    # An explicit contiguous output: broadcasting may otherwise pick a layout that reshape must copy.
    out = torch.empty((m, *t.shape), dtype=t.dtype, device=t.device)
    return _masked(t.unsqueeze(0), mask, dim, fill, out).view(m * t.shape[0], *t.shape[1:])


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1,
               fill: torch.Tensor | None = None) -> torch.Tensor:
    """Stacked activity (M*B, ...) with per-ablation masks (M, U) applied (see ``stack``); no mask = unchanged."""
    if mask is None:
        return x
    m = mask.shape[0]
    return _masked(x.reshape(m, -1, *x.shape[1:]), mask, dim, fill).reshape(x.shape)


def apply_point_mask(x: torch.Tensor, mask: torch.Tensor | None, module: nn.Module) -> torch.Tensor:
    """``apply_mask`` with the unit dimension and ablation value of probe module ``module``, read when
    the suffix runs (a run sets mean-ablation values after its statistics)."""
    return apply_mask(x, mask, unit_dim(module), fill_of(module))


def _pruned(root: fx.GraphModule, graph: fx.Graph) -> fx.GraphModule:
    """A module running ``graph`` with ``root``'s parameters, unused nodes removed and 2x2 max-pool
    modules computed by ``compute.nets.pools.max_pool_2x2`` (the same values)."""
    gm = fx.GraphModule(root, graph)
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and len(n.args) == 1 and not n.kwargs and is_2x2_pool(gm.get_submodule(n.target)):
            with gm.graph.inserting_after(n):
                fast = gm.graph.call_function(max_pool_2x2, n.args)
            n.replace_all_uses_with(fast)
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def capture_module(traced: fx.GraphModule, names: tuple[str, ...], with_output: bool = True) -> fx.GraphModule:
    """One forward pass of ``traced`` returning (model output if ``with_output``, *the named nodes' values)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = None
    for n in traced.graph.nodes:
        if n.op == "output":
            out = env[n.args[0]] if with_output else None
        else:
            env[n] = g.node_copy(n, lambda a: env[a])
    by_name = {n.name: env[n] for n in env}
    g.output(tuple(([out] if with_output else []) + [by_name[name] for name in names]))
    return _pruned(traced, g)


# Per-channel ops that map 0 to 0, so they commute with zeroing whole channels: a mask applied after
# them is bit-identical to one applied before, and they run once per chunk instead of once per ablation.
_PASSIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                    nn.AvgPool3d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)
_PASSIVE_FUNCTIONS = (torch.relu, F.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def _past_passive(node: fx.Node) -> fx.Node:
    """The last node of the chain of passive per-channel ops that alone consume ``node``'s output."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.args[:1] != (node,) or any(a is not node for a in user.all_input_nodes):
            break
        if user.op == "call_module":
            passive = isinstance(user.graph.owning_module.get_submodule(user.target), _PASSIVE_MODULES)
        else:
            passive = user.op == "call_function" and user.target in _PASSIVE_FUNCTIONS
        if not passive:
            break
        node = user
    return node


def _fresh_relu(node: fx.Node, weighed: fx.Node | None = None) -> bool:
    """A ReLU module (or a probe point of one) whose input is the fresh output of a linear or conv layer
    (or the layer ``weighed`` from channel parts) used by nothing else: it can run in place, saving a
    pass over the largest stacked tensors."""
    if node.op != "call_module" or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return False
    src, owner = node.args[0], node.graph.owning_module
    module = owner.get_submodule(node.target)
    relu = type(module.act if isinstance(module, ProbePoint) else module) is nn.ReLU
    fresh = src is weighed or (src.op == "call_module"
                               and isinstance(owner.get_submodule(src.target), (nn.Linear, nn.Conv2d)))
    return relu and len(src.users) == 1 and fresh


def check_inputs(inputs: list[torch.Tensor], batch: int, layer: str) -> None:
    """Suffix inputs must be per-example tensors, else stacking ablations along the batch is wrong."""
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch for t in inputs):
        raise SplitError(f"the suffix after {layer} reads values that are not per-example tensors")


def _channel_layer(probe: fx.Node) -> tuple[fx.Node, nn.Linear | nn.Conv2d] | None:
    """(its node, the layer) when ``probe``'s output feeds one layer alone that is a sum over its channels
    with weights of its own: a ``flatten(1)`` then an ``nn.Linear`` (LeNet-5's conv2 -> pool -> flatten ->
    fc1), or an ``nn.Conv2d`` of more than a 1x1 kernel with zero padding and one group (conv1 -> pool ->
    conv2)."""
    if len(probe.users) != 1:
        return None
    user = next(iter(probe.users))
    owner = probe.graph.owning_module
    if user.op == "call_module" and user.args == (probe,) and not user.kwargs:
        conv = owner.get_submodule(user.target)
        if (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
                and conv.kernel_size[0] * conv.kernel_size[1] > 1):
            return user, conv
        return None
    is_flatten = ((user.op == "call_method" and user.target == "flatten") or
                  (user.op == "call_function" and user.target is torch.flatten))
    start = user.args[1] if len(user.args) > 1 else user.kwargs.get("start_dim", 0)
    if not is_flatten or user.args[:1] != (probe,) or start != 1 or len(user.args) > 2 or len(user.users) != 1:
        return None
    lin = next(iter(user.users))
    if lin.op != "call_module" or lin.args != (user,) or lin.kwargs:
        return None
    layer = owner.get_submodule(lin.target)
    return (lin, layer) if type(layer) is nn.Linear else None


def channel_parts(layer: nn.Linear | nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
    """``layer``'s per-channel parts of ``h`` (B, C, ...), one row per channel and a last row of the bias
    (zeros without one): (C + 1, B * F), F the layer's outputs per example. ``keep @ parts`` with a
    column of ones after the masks is then the layer's output for each mask, bias included, in one matrix
    product."""
    b, c = h.shape[:2]
    if isinstance(layer, nn.Linear):
        o = layer.out_features
        w = layer.weight.view(o, c, -1).permute(1, 2, 0)  # (C, S, O)
        parts = torch.bmm(h.reshape(b, c, -1).transpose(0, 1), w)  # (C, B, O)
    else:  # one grouped convolution: output channel c * O + o is input channel c through weight[o, c]
        o = layer.out_channels
        w = layer.weight.transpose(0, 1).reshape(c * o, 1, *layer.kernel_size)
        y = F.conv2d(h, w, None, layer.stride, layer.padding, layer.dilation, groups=c)
        parts = y.view(b, c, -1).transpose(0, 1)  # (C, B, O * H * W)
    out = torch.zeros((c + 1, *parts.shape[1:]), dtype=h.dtype, device=h.device)
    out[:c] = parts
    if layer.bias is not None:
        out[c].view(b, o, -1)[:] = layer.bias.view(o, 1)
    return out.view(c + 1, -1)


class SplitError(Exception):
    """The model cannot be split at this probe; the caller falls back to the whole model."""


class GraphSplit:
    """A traced model cut at one probe module: ``prefix(x)`` -> inputs, ``suffix(inputs, masks)`` -> logits.

    ``inputs[0]`` is the probe's output, or the output of the passive per-channel ops right after it
    (masked when it is stacked); the other inputs are earlier tensors the suffix reads. Probe modules
    inside the suffix get a mask argument each.

    **Channel parts.** When zero-ablated channels feed one layer alone that sums over them with its
    own weights (flattened into a linear layer: LeNet-5's conv2 -> pool -> flatten -> fc1, 16 channels
    of 25 features each; or a convolution: conv1 -> pool -> conv2, 6 channels through 5x5 kernels), the
    layer's output is layer(h * m) = sum_c m_c W_c h_c + bias. The parts W_c h_c are computed once per
    chunk of examples (one batched matrix product or grouped convolution, the cost of the layer itself),
    and each ablation only weighs and adds them: C multiply-adds per output instead of all the features
    (16 against 400 for fc1, 6 against 150 for conv2). Floats differ from the stacked layer by rounding
    only (the order of the sum). The parts hold C times the layer's output per example, so a split that
    would hold more than ``max_part_bytes`` per example stacks the layer as usual (``parts=False``).
    """

    def __init__(self, traced: fx.GraphModule, probe_paths: dict[str, str], layer: str, parts: bool = True) -> None:
        nodes = list(traced.graph.nodes)
        calls = [n for n in nodes if n.op == "call_module" and n.target == probe_paths[layer]]
        if len(calls) != 1:
            raise SplitError(f"probe module {probe_paths[layer]} is called {len(calls)} times in the graph")
        self.module = traced.get_submodule(probe_paths[layer])
        # Past passive ops only for zero ablation on dimension 1: a pool or ReLU maps a zeroed channel
        # to zero, but neither a mean value nor a channels-last unit.
        self.passive = unit_dim(self.module) == 1 and fill_of(self.module) is None
        probe = _past_passive(calls[0]) if self.passive else calls[0]
        found = _channel_layer(probe) if self.passive and parts else None
        self.weighed = found[1] if found is not None else None  # the layer computed from channel parts
        start = found[0] if found is not None else probe  # the suffix graph starts with its output
        skip = {probe, start, *start.all_input_nodes}  # with parts: the flatten and the weighed layer too
        live: set[fx.Node] = set()  # nodes that depend on the model's input
        after: set[fx.Node] = set()  # nodes that depend on the probe's output
        for n in nodes:
            if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
                live.add(n)
            if n is probe or any(a in after for a in n.all_input_nodes):
                after.add(n)
        out = nodes[-1]
        if out.op != "output" or out not in after:
            raise SplitError(f"the model's output does not depend on probe {layer}")
        # The suffix recomputes what the probe changes, plus input-independent nodes (parameters).
        body = [n for n in nodes if n.op not in ("placeholder", "output")
                and ((n in after and n not in skip) or n not in live)]
        in_body = set(body) | {out}
        extras = [n for n in nodes if n in live and n not in after and any(u in in_body for u in n.users)]
        masked = {n: name for name, path in probe_paths.items() for n in body
                  if n.op == "call_module" and n.target == path}

        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {start: g.placeholder("h")}
        for i, e in enumerate(extras):
            env[e] = g.placeholder(f"extra{i}")
        mask_ph = {n: g.placeholder(f"mask{i}", default_value=None) for i, n in enumerate(masked)}
        for n in body:
            if _fresh_relu(n, start if found is not None else None):
                env[n] = g.call_function(torch.relu_, (env[n.args[0]],))
            else:
                env[n] = g.node_copy(n, lambda a: env[a])
            if n in mask_ph:
                env[n] = g.call_function(apply_point_mask, (env[n], mask_ph[n], g.get_attr(n.target)))
        g.node_copy(out, lambda a: env[a])
        self.suffix_module = _pruned(traced, g)
        self.mask_args = {name: f"mask{i}" for i, name in enumerate(masked.values())}

        self.inputs = (probe.name, *(e.name for e in extras))  # nodes of ``traced`` the suffix reads
        self.prefix_module = capture_module(traced, self.inputs, with_output=False)
        self.layer = layer
        self._parts: tuple[torch.Tensor, torch.Tensor] | None = None  # (inputs[0], its channel parts)
        self._out_shape: tuple[int, ...] = ()  # the weighed layer's output per example, once parts were made

    def prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        inputs = list(self.prefix_module(x))
        check_inputs(inputs, x.shape[0], self.layer)
        return inputs

    def suffix(self, inputs: list[torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``len(masks[layer])`` ablations of the batch behind ``inputs`` (from ``prefix``)."""
        m = next(iter(masks.values())).shape[0]
        fill = fill_of(self.module)
        if fill is not None and self.passive:
            raise RuntimeError(f"{self.layer}: an ablation value was set after the split was made; split again")
        if self.weighed is not None:
            stacked = [self._weigh(inputs[0], masks.get(self.layer), m)]
        else:
            stacked = [stack(inputs[0], m, masks.get(self.layer), unit_dim(self.module), fill)]
        stacked += [stack(t, m) for t in inputs[1:]]
        kwargs = {self.mask_args[k]: v for k, v in masks.items() if k != self.layer}
        return self.suffix_module(*stacked, **kwargs)

    def parts(self, h: torch.Tensor) -> torch.Tensor:
        """``channel_parts`` of ``h`` through the weighed layer, kept for the batch whose ``h`` this is,
        since ``suffix`` runs many groups of ablations on it."""
        if self._parts is None or self._parts[0] is not h:
            assert self.weighed is not None
            parts = channel_parts(self.weighed, h)
            self._parts = (h, parts)
            self._out_shape = self._layer_out(h)
        return self._parts[1]

    def _layer_out(self, h: torch.Tensor) -> tuple[int, ...]:
        """The weighed layer's output shape per example for input ``h``."""
        layer = self.weighed
        if isinstance(layer, nn.Linear):
            return (layer.out_features,)
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(h.shape[2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
        return (layer.out_channels, *size)

    def _weigh(self, h: torch.Tensor, mask: torch.Tensor | None, m: int) -> torch.Tensor:
        """The weighed layer's output for ``m`` ablations (M*B, ...): each mask (M, C) weighs the channel
        parts, a last column of ones adds the bias row."""
        parts = self.parts(h)
        keep = torch.ones(m, h.shape[1] + 1, dtype=h.dtype, device=h.device)
        if mask is not None:
            keep[:, :-1] = mask
        return (keep @ parts).view(m * h.shape[0], *self._out_shape)

    def _graph_inputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the suffix graph reads for one intact pass of ``inputs``."""
        if self.weighed is None:
            return inputs
        out = self._weigh(inputs[0], None, 1)
        self._parts = None
        return [out, *inputs[1:]]

    def part_bytes(self, x: torch.Tensor) -> int:
        """Bytes of the channel parts of one example (0 without parts)."""
        if self.weighed is None:
            return 0
        h = self.prefix(x[:1])[0]
        return (h.shape[1] + 1) * math.prod(self._layer_out(h)) * h.element_size()

    def example_bytes(self, x: torch.Tensor) -> int:
        """Bytes of every tensor the suffix computes for one example (an upper bound of its working set),
        with the channel parts (C x the linear layer's output) when there are any."""
        inputs = self.prefix(x[:1])
        graph_inputs = self._graph_inputs(inputs)
        shapes = tensor_shapes(self.suffix_module, *graph_inputs)
        total = sum(t.numel() * t.element_size() for t in inputs)
        total += self.part_bytes(x)
        for n, (shape, dtype) in shapes.items():
            if n.op in ("call_module", "call_function", "call_method"):
                total += shape.numel() * dtype.itemsize
        return total

    def macs(self, x: torch.Tensor) -> int:
        """Multiply-accumulates of the suffix for one example (torch's flop counter / 2)."""
        inputs = self.prefix(x[:1])
        graph_inputs = self._graph_inputs(inputs)  # the parts: once per batch, not per ablation
        from torch.utils.flop_counter import FlopCounterMode  # here: it imports triton (0.3 s), runs never count

        with FlopCounterMode(display=False) as counter:
            self.suffix_module(*graph_inputs)
        weighing = (inputs[0].shape[1] + 1) * math.prod(self._layer_out(inputs[0])) if self.weighed is not None else 0
        return counter.get_total_flops() // 2 + weighing


class WholeModel:
    """Fallback split: no prefix; the full model runs on stacked inputs with masking hooks."""

    def __init__(self, model: nn.Module, probe_paths: dict[str, str], layer: str) -> None:
        self.model = model
        self.modules = {name: model.get_submodule(path) for name, path in probe_paths.items()}
        self.layer = layer

    def prefix(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def suffix(self, inputs: list[torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        m = next(iter(masks.values())).shape[0]
        handles = [self.modules[name].register_forward_hook(
            lambda mod, _inp, out, mask=mask: apply_point_mask(out, mask, mod)) for name, mask in masks.items()]
        try:
            return self.model(stack(inputs[0], m))
        finally:
            for h in handles:
                h.remove()

    def example_bytes(self, x: torch.Tensor) -> int:
        sizes: list[int] = []
        handles = [mod.register_forward_hook(
            lambda _m, _i, out: sizes.append(out.numel() * out.element_size()) if isinstance(out, torch.Tensor) else None)
            for mod in self.model.modules() if not list(mod.children())]
        try:
            self.model(x[:1])
        finally:
            for h in handles:
                h.remove()
        return x[:1].numel() * x.element_size() + sum(sizes)

    def macs(self, x: torch.Tensor) -> int:
        from torch.utils.flop_counter import FlopCounterMode  # see GraphSplit.macs

        with FlopCounterMode(display=False) as counter:
            self.model(x[:1])
        return counter.get_total_flops() // 2


def split_model(model: nn.Module, traced: fx.GraphModule | None, probe_paths: dict[str, str], layer: str,
                x: torch.Tensor, max_part_bytes: float = 2**19) -> GraphSplit | WholeModel:
    """The graph split at ``layer`` when ``traced`` allows it (checked on the sample ``x``), else ``WholeModel``;
    with channel parts only where they hold at most ``max_part_bytes`` per example."""
    if traced is not None:
        try:
            split = GraphSplit(traced, probe_paths, layer)
            split.prefix(x[:2])
            if split.part_bytes(x) > max_part_bytes:
                split = GraphSplit(traced, probe_paths, layer, parts=False)
            return split
        except SplitError:
            pass
    return WholeModel(model, probe_paths, layer)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """The model's torch.fx graph (probe modules kept as calls), or None when it is not symbolically traceable."""
    from compute.nets.discover import symbolic_trace

    try:
        return symbolic_trace(model)
    except Exception:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...) on dynamic code
        return None


class Capture:
    """One forward pass giving the model's output and the suffix inputs of every split, so all
    prefixes share a single pass (and the intact outcome comes with it)."""

    def __init__(self, model: nn.Module, traced: fx.GraphModule | None,
                 splits: dict[str, GraphSplit | WholeModel]) -> None:
        self.model = model
        self.whole = [name for name, s in splits.items() if isinstance(s, WholeModel)]
        self.layout: list[tuple[str, int, int]] = []
        names: list[str] = []
        for name, s in splits.items():
            if isinstance(s, GraphSplit):
                self.layout.append((name, len(names), len(names) + len(s.inputs)))
                names += s.inputs
        self.module = capture_module(traced, tuple(names)) if traced is not None and self.layout else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        inputs: dict[str, list[torch.Tensor]] = {name: [x] for name in self.whole}
        if self.module is None:
            return self.model(x), inputs
        out, *values = self.module(x)
        for name, a, b in self.layout:
            inputs[name] = list(values[a:b])
        return out, inputs
