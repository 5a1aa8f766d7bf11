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


def test_weights_saved_inside_data_parallel_or_after_compile_load_into_the_plain_model(tmp_path: Path):
    """DataParallel / DistributedDataParallel save every name under ``module.``, torch.compile under ``_orig_mod.``:
    the prefix is dropped (the weights are the same), and a prefix on some names only is still refused."""
    from compute.nets.models import load_weights

    torch.manual_seed(2)
    spec = ModelSpec("lenet5", (1, 28, 28), 10, {})
    trained = build_model(spec).eval()
    x = torch.rand(4, 1, 28, 28)
    for prefix in ("module.", "_orig_mod."):
        torch.save({"state_dict": {prefix + k: v for k, v in trained.state_dict().items()}}, tmp_path / "w.pt")
        fresh = build_model(spec).eval()
        load_weights(fresh, tmp_path / "w.pt")
        assert torch.equal(fresh(x), trained(x))
    mixed = dict(trained.state_dict())
    mixed["module.fc3.bias"] = mixed.pop("fc3.bias")
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(ConfigError, match=r"does not fit the model: missing \['fc3.bias'\], unexpected "
                                          r"\['module.fc3.bias'\]"):
        load_weights(build_model(spec).eval(), tmp_path / "mixed.pt")


def test_bad_model_options_are_named():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model(ModelSpec("resnet", (1, 28, 28), 10))
    with pytest.raises(ConfigError, match="width multiplier"):
        build_model(ModelSpec("cifar-convnet", (3, 32, 32), 10, {"width": 0}))


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32), (3, 32, 32), (3, 64, 48), (1, 12, 12), (2, 45, 37)])
def test_flat_size_by_arithmetic_equals_the_forward_pass(shape: tuple[int, int, int]):
    """The first linear layer's width (computed without a forward pass) is what the body really outputs."""
    from torch import nn

    from compute.nets.models import CifarConvNet, LeNet5

    def forward_size(body: nn.Module) -> int:
        with torch.no_grad():
            return int(body.eval()(torch.zeros(1, *shape)).numel())

    lenet = LeNet5(shape, 10)
    body = nn.Sequential(lenet.conv1, lenet.relu1, lenet.pool1, lenet.conv2, lenet.relu2, lenet.pool2)
    assert lenet.fc1.in_features == forward_size(body)
    if min(shape[1:]) >= 32:  # five 2x2 pools
        for width in (0.125, 1.0):
            net = CifarConvNet(shape, 10, width)
            assert net.classifier[0].in_features == forward_size(net.features)


def test_commands_that_build_nothing_do_not_import_torch(tmp_path):
    """`compute list`, `gc`, usage errors and a run's mistyped dataset or folder answer without torch's
    seconds of import (the catalogs of models and datasets and the run settings are torch-free); building a
    built-in model imports neither sympy nor torch._dynamo."""
    import subprocess
    import sys

    mistakes = [["--dataset", "imagenet"], ["--dataset", "idx:/no/such/dir"], ["--dataset", "crossed-sevens:x"],
                ["--eval-dataset", "folder:/no/such/dir"], ["--data-dir", str(tmp_path)], ["--resume"],
                ["--epochs", "0"]]
    code = ("import sys; from compute.cli import main; "
            f"codes = [main(['run', *a, '--warehouse', {str(tmp_path)!r}]) for a in {mistakes!r}]; "
            "print(codes, 'torch' in sys.modules); "
            "from compute.nets.models import ModelSpec, build_model; build_model(ModelSpec('lenet5', (1, 28, 28), 10)); "
            "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split("\n")[:2] == [f"{[2] * len(mistakes)} False", "[]"]
    errors = done.stderr.strip().split("\n")
    assert [e.split(";")[0].split(":")[0] for e in errors] == ["error"] * len(mistakes)
    assert "unknown dataset 'imagenet'" in errors[0] and "/no/such/dir is not a directory" in errors[1]
    assert "unknown dataset 'crossed-sevens:x'" in errors[2] and errors[3].startswith("error: --eval-dataset folder:")
