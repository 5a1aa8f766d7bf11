"""Exact receptive fields of conv units, from the support of the input gradient; image patches of tokens.

The input pixels a unit's value at one position can depend on are the pixels with a non-zero
path to it. With the trained weights, gradients can miss some of them (a silent ReLU, a max-pool
that routes to one element, a zero weight), so the support is read on a *connectivity copy* of the
model: activations and batch norms become the identity, max-pools become average pools with the
same window, and every weight is 1 with bias 0. That copy is linear with positive weights, so the
gradient of one output position is positive exactly on the connected input pixels, for any
arrangement of convs, pools, strides and paddings. Padding falls outside the image, so boxes are
clipped to it. Channels-last maps (N, H, W, C) are read like (N, C, H, W).

Token units (N, T, C) are placed on the patch their token embeds (``token_boxes``): after one
attention layer a token depends on every pixel, so its connectivity is the whole image; the patch
is where the token sits, and what a top example's crop shows.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from compute.errors import ConfigError
from compute.nets.activations import ProbePoint, kind_of_module, unit_dim, units_first
from compute.nets.models import ProbedModel
from compute.nets.forward import run_to

# Per-position modules (activations, dropout, normalisations): the identity keeps every path.
_ELEMENTWISE = (ProbePoint, nn.Dropout, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


_NORM_FUNCTIONS = (F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm)


def _replacement(module: nn.Module) -> nn.Module | None:
    if isinstance(module, ProbePoint):  # an identity that keeps the probe point's unit dimension
        return ProbePoint(nn.Identity(), module.kind, module.unit_dim)
    if isinstance(module, _ELEMENTWISE) or kind_of_module(module) is not None:
        return nn.Identity()
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)):
            raise ConfigError("receptive fields of dilated max-pools are not supported.")
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    return None


def connectivity_model(model: ProbedModel) -> ProbedModel:
    """A float64 copy of ``model`` whose input gradient is positive exactly where a path exists."""
    twin = copy.deepcopy(model).cpu().double().eval()
    for name, module in list(twin.named_modules()):
        new = _replacement(module)
        if new is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, new)
    if isinstance(twin, fx.GraphModule):  # normalisations called as functions (e.g. ConvNeXt's LayerNorm2d):
        # their output sums to zero over channels, so a sum's gradient would vanish; identity instead
        for node in list(twin.graph.nodes):
            if node.op == "call_function" and node.target in _NORM_FUNCTIONS:
                node.replace_all_uses_with(node.args[0])
                twin.graph.erase_node(node)
        twin.recompile()
    with torch.no_grad():  # every weight 1 (also scales such as ConvNeXt's layer_scale), every bias 0
        for name, param in twin.named_parameters():
            param.fill_(0.0 if name.rpartition(".")[2].startswith("bias") else 1.0)
    return twin


def _units_first(probe: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) from either layout of a conv map."""
    return units_first(t, unit_dim(probe))


def _span(mask: torch.Tensor) -> torch.Tensor:
    """(P, 2) first index and one past the last index of the True entries of each row of (P, L)."""
    length = mask.shape[1]
    first = mask.int().argmax(1)
    last = length - mask.flip(1).int().argmax(1)
    return torch.stack([first, last], 1)


def _out_shape(twin: ProbedModel, probe: torch.nn.Module, layer: str, in_shape: tuple[int, int, int]) -> tuple[int, int]:
    with torch.no_grad():
        shape = _units_first(probe, run_to(twin, probe, torch.zeros(1, *in_shape, dtype=torch.float64))[1]).shape
    if len(shape) != 4:
        raise ConfigError(f"layer {layer} is not a conv layer: activity shape {tuple(shape[1:])}.")
    return shape[2], shape[3]


def _boxes_at(twin: ProbedModel, probe: torch.nn.Module, in_shape: tuple[int, int, int],
              y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(P, 4) boxes of the positions (y, x), one backward pass for all of them."""
    inp = torch.ones(len(y), *in_shape, dtype=torch.float64, requires_grad=True)
    _, out = run_to(twin, probe, inp)
    out = _units_first(probe, out)
    (grad,) = torch.autograd.grad(out[torch.arange(len(y)), :, y, x].sum(), inp)
    support = grad.abs().sum(1) > 0  # (P, H, W)
    return torch.cat([_span(support.any(2)), _span(support.any(1))], 1)[:, [0, 2, 1, 3]]


def receptive_boxes(model: ProbedModel, layer: str, in_shape: tuple[int, int, int],
                    chunk: int = 256) -> torch.Tensor:
    """(H', W', 4) int tensor: for each position of conv layer ``layer``, the half-open input box
    (y0, x0, y1, x1) of pixels it is connected to, clipped to the image."""
    twin = connectivity_model(model)
    probe = twin.get_submodule(model.probes[layer])
    h, w = _out_shape(twin, probe, layer, in_shape)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    boxes = torch.empty(h * w, 4, dtype=torch.long)
    for start in range(0, h * w, chunk):
        boxes[start:start + chunk] = _boxes_at(twin, probe, in_shape, ys[start:start + chunk], xs[start:start + chunk])
    return boxes.reshape(h, w, 4)


def centre_field(model: ProbedModel, layer: str, in_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(height, width) of the receptive field of conv layer ``layer``'s centre position: the layer's
    full receptive field unless it is larger than the image (then clipped to it). One backward
    pass, so cheap enough to list for every layer of a model."""
    twin = connectivity_model(model)
    probe = twin.get_submodule(model.probes[layer])
    h, w = _out_shape(twin, probe, layer, in_shape)
    y0, x0, y1, x1 = _boxes_at(twin, probe, in_shape, torch.tensor([h // 2]), torch.tensor([w // 2]))[0].tolist()
    return y1 - y0, x1 - x0


def token_boxes(model: ProbedModel, layer: str, in_shape: tuple[int, int, int]) -> torch.Tensor | None:
    """(T, 1, 4) boxes of token layer ``layer``'s tokens, or None when tokens cannot be placed.

    The patch embedding is the model's first Conv2d (a ViT's ``conv_proj``): its output grid
    (gh, gw) has one token per position; the T - gh*gw extra tokens (a class token, registers) come
    first, as in torchvision's and timm's ViTs, and get the whole image. Token t >= extra sits on
    grid cell t - extra (row-major), i.e. the conv's window there, clipped to the image.
    """
    module = model.probe_modules()[layer]
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or unit_dim(module) == 1:
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        out = run_to(model, module, torch.zeros(1, *in_shape, device=device))[1]
        grid = run_to(model, conv, torch.zeros(1, *in_shape, device=device))[1].shape[2:]
    if out.dim() != 3:
        return None
    n_tokens, (gh, gw) = out.shape[1], grid
    extra = n_tokens - gh * gw
    if extra < 0:
        return None
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    h, w = in_shape[1:]
    boxes = torch.tensor([[0, 0, h, w]] * n_tokens, dtype=torch.long)
    for t in range(extra, n_tokens):
        r, c = divmod(t - extra, gw)
        y0, x0 = r * sh - ph, c * sw - pw
        boxes[t] = torch.tensor([max(y0, 0), max(x0, 0), min(y0 + kh, h), min(x0 + kw, w)])
    return boxes.reshape(n_tokens, 1, 4)
