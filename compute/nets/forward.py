"""Running a model only as far as one module: activation maximization and receptive fields need
a layer's input and output, not the layers after it."""

from __future__ import annotations

import torch
from torch import nn

from compute.errors import ConfigError


class _Reached(Exception):
    """Raised by the hook to stop the forward pass once the module has run."""

    def __init__(self, inputs: torch.Tensor, output: torch.Tensor) -> None:
        super().__init__()
        self.inputs = inputs
        self.output = output


def run_to(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``module`` in ``model(x)``, without running anything after it."""

    def stop(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        raise _Reached(inputs[0], out)

    handle = module.register_forward_hook(stop)
    try:
        model(x)
    except _Reached as reached:
        return reached.inputs, reached.output
    finally:
        handle.remove()
    raise ConfigError("the probe module was not called by the model's forward pass.")
