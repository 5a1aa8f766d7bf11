"""Receptive fields from the gradient support, checked against layer arithmetic and perturbations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compute.errors import ConfigError
from compute.nets.models import CifarConvNet, LeNet5
from compute.nets.receptive_field import receptive_boxes


def arithmetic_boxes(model: nn.Module, layer_module: nn.Module, size: int) -> dict[tuple[int, int], tuple]:
    """Receptive fields by the textbook recurrence (jump, size, start) over the convs and pools
    met in module order before the probe module; assumes square kernels and a sequential net."""
    jump, rf, start, out = 1, 1, 0.5, size
    for m in model.modules():
        if m is layer_module:
            break
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            p = m.padding if isinstance(m.padding, int) else m.padding[0]
            start += ((k - 1) / 2 - p) * jump
            rf += (k - 1) * jump
            jump *= s
            out = (out + 2 * p - k) // s + 1
    boxes = {}
    for i in range(out):
        for j in range(out):
            cy, cx = start + i * jump, start + j * jump  # centre in pixel units, pixel p spans [p, p+1)
            lo_y, lo_x = int(cy - rf / 2), int(cx - rf / 2)
            boxes[(i, j)] = (max(0, lo_y), max(0, lo_x), min(size, lo_y + rf), min(size, lo_x + rf))
    return boxes


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_lenet_boxes_match_layer_arithmetic(layer: str) -> None:
    model = LeNet5((1, 28, 28), 10)
    boxes = receptive_boxes(model, layer, (1, 28, 28))
    expected = arithmetic_boxes(model, model.probe_modules()[layer], 28)
    assert boxes.shape[:2] == ((28, 28) if layer == "conv1" else (10, 10))
    for (i, j), box in expected.items():
        assert tuple(boxes[i, j].tolist()) == box, (i, j)
    if layer == "conv2":  # by hand: conv1 pad 2 (5x5), pool 2, conv2 5x5 -> 14x14 window at 2i - 2
        assert boxes[5, 5].tolist() == [8, 8, 22, 22]
        assert boxes[0, 0].tolist() == [0, 0, 12, 12]


def test_cifar_boxes_match_layer_arithmetic() -> None:
    model = CifarConvNet((3, 32, 32), 10, width=0.0625)
    for layer in ("conv1", "conv3", "conv5", "conv8"):
        boxes = receptive_boxes(model, layer, (3, 32, 32))
        expected = arithmetic_boxes(model, model.probe_modules()[layer], 32)
        got = {(i, j): tuple(boxes[i, j].tolist()) for i in range(boxes.shape[0]) for j in range(boxes.shape[1])}
        assert got == expected, layer


def test_pixels_outside_the_box_do_not_matter_and_inside_they_do() -> None:
    torch.manual_seed(0)
    model = LeNet5((1, 28, 28), 10).eval()
    boxes = receptive_boxes(model, "conv2", (1, 28, 28))
    x = torch.rand(1, 1, 28, 28)

    def pre(inp: torch.Tensor) -> torch.Tensor:
        return model.conv2(model.pool1(model.relu1(model.conv1(inp))))

    base = pre(x)
    y0, x0, y1, x1 = boxes[4, 6].tolist()
    outside = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    outside[..., y0:y1, x0:x1] = False
    changed = torch.where(outside, torch.rand_like(x), x)
    assert torch.equal(pre(changed)[0, :, 4, 6], base[0, :, 4, 6])
    # The box is tight: each corner pixel reaches the unit for some input (a max-pool or a silent
    # ReLU can hide it for one input, which is why the boxes come from a connectivity copy).
    xs = torch.rand(64, 1, 28, 28)
    for py, px in ((y0, x0), (y1 - 1, x1 - 1), (y0, x1 - 1), (y1 - 1, x0)):
        bumped = xs.clone()
        bumped[..., py, px] += 5.0
        assert not torch.allclose(pre(bumped)[:, :, 4, 6], pre(xs)[:, :, 4, 6]), (py, px)


def test_linear_layer_has_no_receptive_boxes() -> None:
    with pytest.raises(ConfigError, match="not a conv layer"):
        receptive_boxes(LeNet5((1, 28, 28), 10), "fc1", (1, 28, 28))
