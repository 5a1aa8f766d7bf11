"""Bring your own model and data: traced probe points, torchvision models, image folders, the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import warehouse
from compute.api import analyze
from compute.datasets.sources import load_dataset, stratified_subset
from compute.nets.discover import select_layers, trace_probes
from compute.errors import ConfigError, DataError
from compute.nets.models import ModelSpec, build_model, load_checkpoint, load_weights, save_checkpoint
from compute.run.config import RunConfig
from compute.run.pipeline import compute_run
from compute.nets.probe import Probe


class ResidualNet(nn.Module):
    """One in-place ReLU module used twice, a residual addition, BatchNorm and global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv1(x)))
        y = self.relu(self.conv2(h) + h)
        z = F.relu(self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1)))
        return z


def test_traced_probes_see_each_relu_call_like_a_manual_forward():
    torch.manual_seed(0)
    net = ResidualNet().eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    probed = trace_probes(net).eval()
    assert list(probed.probes) == ["relu", "relu_1", "relu_2"]
    x = load_dataset("mnist-5k").test.floats(0, 8)
    with torch.no_grad(), Probe(probed.probe_modules()) as probe:
        out = probed(x)
        pre1 = net.bn(net.conv1(x))
        h = pre1.clamp(min=0)
        pre2 = net.conv2(h) + h
        y = pre2.clamp(min=0)
        pre3 = net.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))
    for layer, pre in (("relu", pre1), ("relu_1", pre2), ("relu_2", pre3)):
        torch.testing.assert_close(probe.pre[layer], pre)
        torch.testing.assert_close(probe.post[layer], pre.clamp(min=0))
    torch.testing.assert_close(out, pre3.clamp(min=0))
    # Tracing changes nothing the original computes, and keeps its parameters and state-dict keys.
    with torch.no_grad():
        torch.testing.assert_close(net(x.clone()), out)
    assert probed.state_dict().keys() == net.state_dict().keys()


def test_stochastic_depth_is_traced_as_one_module_so_its_mode_still_counts():
    """Traced through, StochasticDepth's ``if not self.training`` would be frozen at tracing time."""
    from torchvision.ops import StochasticDepth

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), StochasticDepth(0.5, "row"), nn.Linear(8, 2))
    probed = trace_probes(net.train())
    assert any(n.op == "call_module" and isinstance(probed.get_submodule(n.target), StochasticDepth)
               for n in probed.graph.nodes)
    x = torch.randn(64, 4)
    with torch.no_grad():
        kept = probed.eval()(x)
        torch.testing.assert_close(kept, net.eval()(x))  # eval: the identity, though traced in train mode
        dropped = probed.train()(x)
    assert not torch.allclose(dropped, kept)  # train: rows dropped or scaled by 2


def test_layer_selection_by_name_and_glob():
    probes = build_model(ModelSpec("torchvision:resnet18", (1, 28, 28), 10)).probes
    assert len(probes) == 17 and list(probes)[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"]
    from compute.nets.models import layer_shapes

    model = build_model(ModelSpec("torchvision:resnet18", (1, 28, 28), 10))
    assert sum(s[0] for s in layer_shapes(model, (1, 28, 28)).values()) == 3904
    assert list(select_layers(probes, ["layer4.*"])) == ["layer4.0.relu", "layer4.0.relu_1", "layer4.1.relu",
                                                         "layer4.1.relu_1"]
    with pytest.raises(ConfigError, match="no layer matches 'fc9'.*layer1.0.relu"):
        select_layers(probes, ["fc9"])


@pytest.mark.slow  # ~1 min; make test keeps torchvision slices (test_activations) and ResNet-18 on Ray (test_ray)
def test_torchvision_resnet18_through_all_stages_with_checkpoint_reload(tmp_path: Path):
    """ResNet-18 adapted to 1-channel 28x28 digits, trained briefly on real MNIST digits."""
    # The stem and the last stage (two whole residual blocks, both ReLU calls of each): every stage of the
    # pipeline on the interesting probe points, in CI time. All 17 layers take minutes; each early layer adds
    # ~13 s of curves here (its suffix is most of the network), so the stem is the one early layer.
    layers = ("relu", "layer4.*")
    summary = compute_run(RunConfig(images=None, model="torchvision:resnet18", epochs=1, train_size=100, eval_size=10,
                                    batch_size=50, layers=layers, run_id="rn18"), tmp_path)
    con = warehouse.connect(tmp_path)
    assert con.execute("SELECT count(*), sum(n_units) FROM layers").fetchall() == [(5, 64 + 512 * 4)]
    assert con.execute("SELECT count(DISTINCT layer) FROM ablation_curves").fetchall()[0][0] == 6  # 5 + last2
    assert con.execute("SELECT count(*) FROM units WHERE abl_loss_delta IS NULL").fetchall() == [(0,)]
    probe = con.execute("SELECT probe FROM layers WHERE layer = 'layer4.0.relu_1'").fetchall()[0][0]
    assert "call site `layer4.0.relu_1`" in probe
    model, spec = load_checkpoint(summary.path / "checkpoint.pt")
    assert spec is not None and spec.name == "torchvision:resnet18" and len(model.probes) == 17  # all, reloaded
    # Analyze the saved weights again without training: the same units get the same statistics.
    ckpt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ckpt)
    compute_run(RunConfig(images=None, model="torchvision:resnet18", epochs=0, checkpoint=str(ckpt), train_size=100, eval_size=10,
                          layers=("layer4.1.*",), run_id="rn18-reload"), tmp_path)
    rows = warehouse.connect(tmp_path).execute(
        "SELECT a.mean_rect, b.mean_rect, a.abl_acc_delta, b.abl_acc_delta FROM units a JOIN units b USING (layer, unit) "
        "WHERE a.run_id = 'rn18' AND b.run_id = 'rn18-reload'").fetchall()
    assert len(rows) == 1024
    np.testing.assert_allclose([r[0] for r in rows], [r[1] for r in rows], rtol=1e-5, atol=1e-6)
    assert [r[2] for r in rows] == [r[3] for r in rows]


def test_epochs_zero_needs_a_checkpoint_and_bad_checkpoints_are_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        compute_run(RunConfig(images=None, epochs=0, run_id="x"), tmp_path)
    wrong = tmp_path / "mlp.pt"
    torch.save(build_model(ModelSpec("mlp", (1, 28, 28), 10)).state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not fit the model"):
        compute_run(RunConfig(images=None, epochs=0, checkpoint=str(wrong), train_size=100, eval_size=50, run_id="y"), tmp_path)
    assert not any((tmp_path / "runs").iterdir())


def test_image_folder_dataset_brings_its_class_names(tmp_path: Path):
    digits = stratified_subset(load_dataset("mnist-5k").test, 200)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for i, (img, label) in enumerate(zip(digits.images, digits.labels)):
        folder = tmp_path / "digits" / f"{int(label)}-{names[int(label)]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    compute_run(RunConfig(images=None, model="mlp", widths=(16,), dataset=f"folder:{tmp_path / 'digits'}", epochs=1, run_id="f"),
                tmp_path / "wh")
    con = warehouse.connect(tmp_path / "wh")
    assert con.execute("SELECT class_names, n_train, n_eval FROM runs").fetchall() == [
        ([f"{i}-{n}" for i, n in enumerate(names)], 160, 40)]
    assert con.execute("SELECT DISTINCT class_name FROM unit_classes WHERE class = 7").fetchall() == [("7-seven",)]
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "digits" / "3-three" / "odd.png")
    with pytest.raises(DataError, match="odd.png is \\(10, 12\\) pixels"):
        load_dataset(f"folder:{tmp_path / 'digits'}")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_class_names_reach_the_warehouse(tmp_path: Path):
    compute_run(RunConfig(images=None, model="mlp", widths=(16,), dataset="fashion-mnist", epochs=1, train_size=300,
                          eval_size=100, run_id="fm"), tmp_path)
    con = warehouse.connect(tmp_path)
    assert con.execute("SELECT class_name FROM unit_classes WHERE class = 1 LIMIT 1").fetchall() == [("Trouser",)]
    assert "Trouser" in con.execute("SELECT class_names FROM runs").fetchall()[0][0]


def test_python_api_trains_and_analyzes_a_custom_module(tmp_path: Path):
    data = load_dataset("mnist-5k")
    train = torch.utils.data.TensorDataset(data.train.floats(0, 300), data.train.labels[:300])
    torch.manual_seed(0)
    net = ResidualNet()
    run = analyze(net, data.test, train_data=train, epochs=1, images=None, layers=["relu_1", "relu_2"], warehouse=tmp_path,
                  run_id="custom")
    con = warehouse.connect(tmp_path)
    assert con.execute("SELECT layer, n_units FROM layers ORDER BY layer_index").fetchall() == [("relu_1", 4),
                                                                                             ("relu_2", 10)]
    assert con.execute("SELECT model, n_train, n_eval, epochs FROM runs").fetchall() == [("ResidualNet", 300, 1000, 1)]
    # A model given from Python is saved as weights only (nothing is unpickled on load): load them into it.
    with pytest.raises(ConfigError, match="given from Python"):
        load_checkpoint(run.path / "checkpoint.pt")
    again = ResidualNet()
    load_weights(again, run.path / "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))
    with pytest.raises(DataError, match="must lie in \\[0, 1\\]"):
        analyze(net, torch.utils.data.TensorDataset(torch.randn(4, 1, 28, 28) * 5, torch.zeros(4)), warehouse=tmp_path)


class _Pairs(torch.utils.data.Dataset):
    """Real digits as (image, label) pairs, each passed through ``convert(index, image, label)``."""

    def __init__(self, convert) -> None:
        self.data, self.convert = stratified_subset(load_dataset("mnist-5k").test, 40), convert

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.convert(i, self.data.floats(i, i + 1)[0], int(self.data.labels[i]))


@pytest.mark.parametrize("convert,message", [
    (lambda i, x, y: (x[:, :27] if i == 3 else x, y), "image 3 has shape \\(1, 27, 28\\), image 0 \\(1, 28, 28\\)"),
    (lambda i, x, y: (x, F.one_hot(torch.tensor(y), 10)), "label of example 0 is 'tensor\\(\\[.*not a class number"),
    (lambda i, x, y: (x, f"digit {y}"), "label of example 0 is 'digit \\d', not a class number"),
    (lambda i, x, y: (x, y + 0.5), "label of example 0 is '\\d\\.5', not a class number"),
    (lambda i, x, y: (x.clone().fill_(float("nan")) if i == 7 else x, y), "image 7 holds NaN or infinite pixel values"),
    (lambda i, x, y: (Image.fromarray((x[0] * 255).byte().numpy()), y), "image 0 is a Image, not a tensor.*ToTensor"),
    (lambda i, x, y: (x, 10**6 if i == 5 else y), "label 1000000 implies more classes than its 40 examples"),
])
def test_python_api_names_a_dataset_it_cannot_read(tmp_path: Path, convert, message):
    """Map-style datasets with ragged images, labels that are no class number, NaN pixels or PIL images: one
    paragraph each, not torch.stack's or int()'s traceback, NaN pixels silently turned to 0, or a name made for
    each of a million classes."""
    with pytest.raises(DataError, match=message):
        analyze(ResidualNet(), _Pairs(convert), images=None, warehouse=tmp_path, run_id="bad")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_python_api_names_a_model_of_fewer_outputs_than_classes(tmp_path: Path):
    """A model of 5 logits for data of 10 classes failed in the first loss with torch's IndexError."""
    net = ResidualNet()
    net.fc = nn.Linear(net.fc.in_features, 5)
    with pytest.raises(ConfigError, match="output for one image is of shape \\(5,\\), but the data has 10 classes"):
        analyze(net, _Pairs(lambda i, x, y: (x, y)), images=None, warehouse=tmp_path, run_id="five")
    assert not any((tmp_path / "runs").iterdir())
