"""Whether a model fits this machine, estimated before a byte is allocated.

``--widths 9999999,9999999`` or ``--classes 2147483647`` would otherwise allocate hundreds of
terabytes: the process runs out of memory (or is killed by the system) instead of saying why. The
model is first built on PyTorch's ``meta`` device, which records shapes and allocates nothing; its
parameter count and one example's activations give the memory training needs, compared with what
the machine has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from compute.errors import ConfigError

#: Bytes per parameter while training: float32 weights, gradients and Adam's two moments.
TRAIN_BYTES_PER_PARAMETER = 4 * 4
#: Share of the machine's memory one model may take (data, the evaluation and the images stage need the rest).
MEMORY_SHARE = 0.5


def machine_memory() -> int:
    """Physical memory in bytes (a large figure where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 50


def check_model_size(build: Callable[[], torch.nn.Module], in_shape: tuple[int, ...], what: str,
                     memory: int | None = None) -> None:
    """Raise ``ConfigError`` with the figures when the model ``build`` makes cannot fit in memory.

    ``build`` is run under the meta device; a model that cannot be built there (an operation meta
    tensors do not support) is not judged here: the real build goes ahead.
    """
    budget = int((memory or machine_memory()) * MEMORY_SHARE)
    example = math.prod(in_shape) * 4
    if example > budget:
        raise ConfigError(f"{what}: one input of {'x'.join(map(str, in_shape))} is {example / 2**30:,.1f} GiB as "
                          f"float32, more than the {budget / 2**30:,.1f} GiB this machine can give a model (half its "
                          f"memory); use smaller images.")
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - judged by the real build instead
        return
    params = sum(p.numel() for p in model.parameters())
    need = params * TRAIN_BYTES_PER_PARAMETER
    if need > budget:
        raise ConfigError(f"{what} is too large: {params:,} parameters need {need / 2**30:,.1f} GiB to train "
                          f"(float32 weights, gradients and Adam's two moments), more than the {budget / 2**30:,.1f} "
                          f"GiB this machine can give a model (half its memory). Choose smaller widths (--widths, "
                          f"--width) or fewer classes.")
