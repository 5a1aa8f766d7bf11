"""Convolutions of a one-channel input (LeNet-5's conv1 on grey images) in chunks of at most
``CHUNK`` examples: on one CPU thread oneDNN's kernel slows down about 4 times per example beyond
about 600 such inputs (6 channels, 5 x 5, 28 x 28: 500 examples 6 ms, 720 examples 30 ms, 1,000
examples 39 ms; in chunks of 256, 1,000 take 15 ms). Each example's output does not depend on the
others in its batch, so the chunks give the same floats (tests/test_engine.py checks it), and so
does the input gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

CHUNK = 256


def is_one_channel_conv(module: nn.Module) -> bool:
    """A 2-d convolution of a single input channel."""
    return type(module) is nn.Conv2d and module.in_channels == 1


def _chunked(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or len(x) <= CHUNK:
        return module._conv_forward(x, module.weight, module.bias)
    return torch.cat([module._conv_forward(c, module.weight, module.bias) for c in x.split(CHUNK)])


@contextmanager
def fast_convs(model: nn.Module) -> Iterator[None]:
    """``model``'s one-channel convolutions run in chunks of ``CHUNK`` examples while the block runs."""
    convs = [m for m in model.modules() if is_one_channel_conv(m) and "forward" not in m.__dict__]
    for m in convs:
        m.forward = lambda x, m=m: _chunked(m, x)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in convs:
            del m.forward
