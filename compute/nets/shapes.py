"""The shape and dtype of every tensor a traced graph computes, for one sample input.

torch's ``ShapeProp`` records the same (as ``node.meta["tensor_meta"]``), but its first call imports
sympy for symbolic shapes these graphs never have: 0.6 s of every fresh process here (each command-line
run and each Ray actor), against nothing for this interpreter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx


class _Recorder(fx.Interpreter):
    """Runs the graph like ``fx.Interpreter`` and keeps (shape, dtype) of each node that returns a tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.found: dict[fx.Node, tuple[torch.Size, torch.dtype]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.found[n] = (out.shape, out.dtype)
        return out


def tensor_shapes(gm: fx.GraphModule, *args: Any) -> dict[fx.Node, tuple[torch.Size, torch.dtype]]:
    """(shape, dtype) per node of ``gm`` whose value is one tensor, running it on ``args``."""
    recorder = _Recorder(gm)
    recorder.run(*args)
    return recorder.found
