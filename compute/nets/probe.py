"""Forward hooks that capture each probed layer's pre-activation, post-ReLU output and gradient.

A unit is a neuron of a linear layer or a channel of a conv layer. Tensors are viewed as
(batch, units, positions) with one position for linear layers, so every statistic is written once
for both kinds of layer.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


def by_position(t: torch.Tensor) -> torch.Tensor:
    """View (B, U) or (B, U, H, W) activity as (B, U, P)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


class Probe:
    """Records the activity of probe modules for the forward passes run inside ``with``.

    ``pre[layer]`` is the ReLU's input, ``post[layer]`` its output. With ``keep_grad`` the outputs
    retain their gradient, so after ``loss.backward()`` ``grad(layer)`` is dLoss/d(post-ReLU
    activity): the signal that training sends to the unit, even where the unit is silent.
    """

    def __init__(self, modules: dict[str, nn.Module], keep_grad: bool = False) -> None:
        self.modules = modules
        self.keep_grad = keep_grad
        self.pre: dict[str, torch.Tensor] = {}
        self.post: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, layer: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.pre[layer] = inputs[0].detach()
            self.post[layer] = output
            if self.keep_grad and output.requires_grad:
                output.retain_grad()

        return hook

    def __enter__(self) -> Probe:
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def grad(self, layer: str) -> torch.Tensor:
        g = self.post[layer].grad
        if g is None:
            raise RuntimeError(f"no gradient recorded for {layer}: run backward inside the probe with keep_grad")
        return g


class ZeroUnit:
    """Clamps one unit (or a set) of a probe module's output to zero while active."""

    def __init__(self, module: nn.Module, units: list[int] | torch.Tensor) -> None:
        self.module = module
        self.units = torch.as_tensor(units, dtype=torch.long)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> ZeroUnit:
        def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, self.units] = 0
            return out

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.remove()
