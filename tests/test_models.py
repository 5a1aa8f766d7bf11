"""The built-in models: probe points, unit counts, checkpoints, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute.errors import ConfigError
from compute.nets.models import ModelSpec, build_model, load_checkpoint, save_checkpoint
from compute.nets.probe import Probe, ZeroUnit


@pytest.mark.parametrize("spec,units", [
    (ModelSpec("lenet5", (1, 28, 28), 10), {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}),
    (ModelSpec("lenet5", (3, 32, 32), 10), {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}),
    (ModelSpec("mlp", (1, 28, 28), 10, {"widths": [64, 32, 16]}), {"fc1": 64, "fc2": 32, "fc3": 16}),
    (ModelSpec("cifar-convnet", (3, 32, 32), 10, {"width": 0.125}),
     {"conv1": 8, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 32, "conv6": 32, "conv7": 64, "conv8": 64,
      "fc1": 64, "fc2": 64}),
])
def test_probe_points_capture_post_relu_units(spec: ModelSpec, units: dict[str, int]):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.rand(3, *spec.in_shape)
    with torch.no_grad(), Probe(model.probe_modules()) as probe:
        logits = model(x)
    assert logits.shape == (3, 10)
    assert {n: t.shape[1] for n, t in probe.post.items()} == units
    for name in units:
        assert torch.equal(probe.post[name], probe.pre[name].relu())


def test_zero_unit_clamps_only_that_unit():
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10)).eval()
    x = torch.rand(4, 1, 28, 28)
    relu = model.probe_modules()["conv2"]
    with torch.no_grad(), ZeroUnit(relu, [3]), Probe({"conv2": relu}) as probe:
        model(x)
    out = probe.post["conv2"]
    assert out[:, 3].abs().sum() == 0 and out[:, 4].abs().sum() > 0


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path):
    torch.manual_seed(1)
    spec = ModelSpec("mlp", (1, 28, 28), 10, {"widths": [20, 10]})
    model = build_model(spec).eval()
    save_checkpoint(model, spec, tmp_path / "c.pt")
    loaded, spec2 = load_checkpoint(tmp_path / "c.pt")
    x = torch.rand(5, 1, 28, 28)
    assert spec2 == spec and torch.equal(model(x), loaded(x))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_bad_model_options_are_named():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model(ModelSpec("resnet", (1, 28, 28), 10))
    with pytest.raises(ConfigError, match="width multiplier"):
        build_model(ModelSpec("cifar-convnet", (3, 32, 32), 10, {"width": 0}))
