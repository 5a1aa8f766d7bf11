"""Forward hooks that capture each probed layer's pre-activation, activity and gradient.

A unit is a neuron of a linear layer, a channel of a conv layer or a token-wise neuron (a
transformer's MLP unit, a channels-last block's channel). Tensors are viewed as (batch, units,
positions) with the probe point's own unit dimension (``compute.nets.activations``), one position
for linear layers, so every statistic is written once for every layout.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from compute.nets.activations import by_position, fill_of, unit_dim, units_first

__all__ = ["Probe", "ZeroUnit", "by_position", "units_of"]


def units_of(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t`` (an input or output of probe module ``module``) as (batch, units, positions)."""
    return by_position(t, unit_dim(module))


class Probe:
    """Records the activity of probe modules for the forward passes run inside ``with``.

    ``pre[layer]`` is the activation's input, ``post[layer]`` its output, both in the model's own
    layout (``units_of`` views them as (batch, units, positions)). With ``keep_grad`` the outputs
    retain their gradient, so after ``loss.backward()`` ``grad(layer)`` is dLoss/d(output): the
    signal that the loss sends to the unit, even where the unit is silent.
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
    """Ablates one unit (or a set) of a probe module's output while active: sets it to its ablation
    value at every position (zero, or the module's ``fill`` under mean ablation)."""

    def __init__(self, module: nn.Module, units: list[int] | torch.Tensor) -> None:
        self.module = module
        self.units = torch.as_tensor(units, dtype=torch.long)
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> ZeroUnit:
        dim, fill = unit_dim(self.module), fill_of(self.module)

        def hook(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            view = units_first(out, dim)
            if fill is None:
                view[:, self.units] = 0
            else:
                value = fill.to(out.device, out.dtype)[self.units]
                view[:, self.units] = value.view(-1, *([1] * (view.dim() - 2)))
            return out

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.remove()
