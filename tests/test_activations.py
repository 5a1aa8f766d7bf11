"""Every elementwise activation and every unit layout: discovery, statistics against an independent
computation, the ablation engine against the naive hook loop (zero and mean ablation), and small
slices of real torchvision architectures (random init) through the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import warehouse
from compute.ablation.engine import AblationEngine
from compute.ablation.naive import single_unit_ablation
from compute.api import analyze
from compute.datasets.sources import ImageSet, load_dataset, stratified_subset
from compute.errors import ConfigError
from compute.images.config import ActMaxConfig, ImageConfig
from compute.measure.stats import evaluation_stats
from compute.nets.activations import KINDS, derivative
from compute.nets.discover import select_layers, trace_probes
from compute.nets.models import REGISTRY, ModelSpec, build_model, layer_shapes
from compute.nets.probe import Probe, ZeroUnit
from compute.nets.receptive_field import receptive_boxes, token_boxes
from compute.ablation.outcome import outcome
from tests.ablation_models import digits


def rgb_digits(n: int, size: int = 32, classes: int = 3) -> ImageSet:
    """Real digits of the first ``classes`` classes, padded to ``size`` and repeated on three channels."""
    test = load_dataset("mnist-5k").test
    keep = torch.cat([torch.nonzero(test.labels == c).flatten()[:n // classes] for c in range(classes)])
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))]
    pad = (size - 28) // 2
    images = F.pad(test.images[keep], (pad, size - 28 - pad, pad, size - 28 - pad)).repeat(1, 3, 1, 1)
    return ImageSet(images.contiguous(), test.labels[keep], tuple(str(c) for c in range(classes)), "rgb-digits")


class Mixed(nn.Module):
    """Every way of calling an activation: modules, functions, methods; a gate; a softmax; and a
    GELU on a reshaped tensor whose unit dimension cannot be told."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.Hardswish(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.se = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 7 * 7, 16)
        self.mish = nn.Mish()
        self.fc2 = nn.Linear(16, 12)
        self.out = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.conv(x)))                      # act: hardswish module, in place
        h = F.silu(self.conv2(h))                                # silu: function
        h = h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))  # a gate: skipped
        h = F.max_pool2d(h, 4)
        t = h.flatten(2).transpose(1, 2)                         # (N, 49, 4): a layout of unknown origin
        t = F.gelu(t * 2.0)                                      # skipped: cannot tell the unit dimension
        z = F.gelu(self.fc(t.flatten(1)), approximate="tanh")    # gelu_1: tanh form, function
        z = F.leaky_relu(self.mish(z), 0.2)                      # mish module, leaky_relu function
        z = self.fc2(z).tanh()                                   # tanh: method, as the nonlinearity
        return self.out(z).softmax(1) * 10                       # softmax: not elementwise


def test_discovery_finds_every_kind_and_says_what_it_skipped():
    torch.manual_seed(0)
    net = Mixed().eval()
    probed = trace_probes(net, (1, 28, 28)).eval()
    kinds = {layer: m.kind for layer, m in probed.probe_modules().items()}
    assert kinds == {"act": "hardswish", "silu": "silu", "gelu_1": "gelu", "mish": "mish",
                     "leaky_relu": "leaky_relu", "tanh": "tanh"}
    assert set(probed.skipped) == {"sigmoid", "gelu", "softmax"}
    assert "gate" in probed.skipped["sigmoid"] and "not elementwise" in probed.skipped["softmax"]
    assert "unit dimension cannot be told" in probed.skipped["gelu"]
    x = digits()[1].floats(0, 6)
    with torch.no_grad(), Probe(probed.probe_modules()) as probe:
        out = probed(x)
    torch.testing.assert_close(out, net(x.clone()))  # the in-place Hardswish became a fresh copy
    torch.testing.assert_close(probe.post["gelu_1"], F.gelu(probe.pre["gelu_1"], approximate="tanh"))
    torch.testing.assert_close(probe.post["leaky_relu"], F.leaky_relu(probe.pre["leaky_relu"], 0.2))
    torch.testing.assert_close(probe.post["act"], F.hardswish(probe.pre["act"]))
    assert probed.state_dict().keys() == net.state_dict().keys()
    with pytest.raises(ConfigError, match="matches only activation calls that cannot be probed: sigmoid .*gate"):
        select_layers(probed.probes, ["sig*"], probed.skipped)
    assert list(select_layers(probed.probes, ["!*l*"])) == ["act", "mish", "tanh"]  # "!" leaves layers out
    assert list(select_layers(probed.probes, ["*l*", "!gelu*"])) == ["silu", "leaky_relu"]
    with pytest.raises(ConfigError, match="leaves no layer"):
        select_layers(probed.probes, ["!*"])


def test_registry_facts_hold_for_each_kind():
    z = torch.linspace(-8, 8, 16001, dtype=torch.float64)
    for kind in KINDS:
        f = kind.build(kind.functions[0] if kind.functions else None, (), {}).double()
        with torch.no_grad():
            y, at_zero = f(z), f(torch.zeros(1, dtype=torch.float64))
        assert float(at_zero) == pytest.approx(kind.at_zero, abs=1e-12), kind.name
        # Active (response > 0) is exactly pre-activation > 0 for every kind.
        assert torch.equal((y - kind.at_zero) > 0, z > 0), kind.name
        if kind.minimum is not None:
            assert float(y.min()) == pytest.approx(kind.minimum, abs=2e-3), kind.name
        if kind.rectified:
            assert torch.all(y[z <= 0] == kind.at_zero), kind.name
    assert KINDS[[k.name for k in KINDS].index("gelu")].minimum == pytest.approx(-0.170, abs=1e-3)


@pytest.mark.parametrize("bad,message", [
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "has no activation to probe"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 20), nn.GLU(), nn.Linear(10, 10)), "not elementwise"),
])
def test_models_without_a_probe_able_activation_get_one_paragraph(bad, message):
    with pytest.raises(ConfigError, match=message) as e:
        trace_probes(bad, (1, 28, 28))
    assert "\n" not in str(e.value)


def manual_lenet(model, x: torch.Tensor, f) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """LeNet-5 written out by hand with activation ``f``: {layer: (pre, post)} and the logits."""
    c1 = model.conv1(x)
    a1 = f(c1)
    c2 = model.conv2(F.max_pool2d(a1, 2))
    a2 = f(c2)
    f1 = model.fc1(F.max_pool2d(a2, 2).flatten(1))
    a3 = f(f1)
    f2 = model.fc2(a3)
    a4 = f(f2)
    return {"conv1": (c1, a1), "conv2": (c2, a2), "fc1": (f1, a3), "fc2": (f2, a4)}, model.fc3(a4)


@pytest.mark.parametrize("kind,f", [("gelu", F.gelu), ("silu", lambda t: t * torch.sigmoid(t))])
def test_smooth_statistics_match_an_independent_computation(kind, f):
    """Response, activity, both gradient signals (the training one through f'(z), taken by autograd
    at the pre-activation of a hand-written forward pass) and dead/active counts, per class."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {"activation": kind})).eval()
    data = stratified_subset(digits()[1], 60)
    stats = evaluation_stats(model, model.probe_modules(), data, batch_size=25)
    x, y = data.floats(0, len(data)), data.labels
    acts, logits = manual_lenet(model, x, f)
    losses = F.cross_entropy(logits, y, reduction="none")
    names = list(acts)
    grads = torch.autograd.grad(losses.sum(), [acts[n][1] for n in names] + [acts[n][0] for n in names])
    for i, name in enumerate(names):
        pre, post = acts[name]
        ga, gz = grads[i], grads[len(names) + i]
        dims = tuple(range(2, pre.dim()))
        red = (lambda t: t.mean(dims)) if dims else (lambda t: t)
        tot = (lambda t: t.sum(dims)) if dims else (lambda t: t)
        expect = {"act": red(pre), "rect": red(post.clamp(min=0)), "out": red(post), "grad": -tot(ga),
                  "tgrad": -tot(gz), "active": (red(post.clamp(min=0)) > 0).double()}
        for field, value in expect.items():
            value = value.detach().double().numpy()
            want = np.stack([value[(y == c).numpy()].mean(0) for c in range(10)])
            np.testing.assert_allclose(stats.layers[name].class_means[field], want, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{kind} {name} {field}")
        n_active = ((pre > 0).flatten(2).any(2) if dims else pre > 0).sum(0).numpy()
        np.testing.assert_array_equal(stats.layers[name].n_active, n_active)
    # The smooth training signal is not zero where the unit is silent, unlike ReLU's.
    z = torch.tensor([-1.0, -0.5])
    assert torch.all(derivative(model.relu1, z) != 0)


def assert_engine_equals_naive(model, data, layers=None, units=None) -> None:
    """Engine single-unit sums (or those of ``units`` per layer) equal the naive hook loop."""
    engine = AblationEngine(model, probes={k: v for k, v in model.probes.items() if layers is None or k in layers})
    counts = engine.unit_counts(data)
    modules = model.probe_modules()
    for layer, n in counts.items():
        chosen = list(range(n)) if units is None else units[layer]
        masks = torch.ones(len(chosen), n)
        masks[torch.arange(len(chosen)), torch.tensor(chosen)] = 0
        intact, (sums,) = engine.evaluate_jobs(data, [{layer: masks}])
        base = outcome(model, data)
        assert intact.outcome(0).accuracy == pytest.approx(base.accuracy, abs=1e-12)
        for row, u in enumerate(chosen):
            with ZeroUnit(modules[layer], [u]):
                ref = outcome(model, data)
            got = sums.outcome(row)
            np.testing.assert_allclose(got.class_accuracy, ref.class_accuracy, rtol=0, atol=1e-12,
                                       err_msg=f"{layer}:{u}")
            np.testing.assert_allclose(got.class_loss, ref.class_loss, rtol=0, atol=1e-5, err_msg=f"{layer}:{u}")


def set_mean_fills(model, data) -> None:
    stats = evaluation_stats(model, model.probe_modules(), data)
    for layer, module in model.probe_modules().items():
        module.fill = torch.as_tensor(stats.layers[layer].overall["out"], dtype=torch.float32)


@pytest.mark.parametrize("kind,ablate", [("gelu", "zero"), ("silu", "mean"), ("hardswish", "mean")])
def test_engine_equals_naive_for_smooth_lenet(kind, ablate):
    torch.manual_seed(1)
    model = build_model(ModelSpec("lenet5", (1, 28, 28), 10, {"activation": kind})).eval()
    data = stratified_subset(digits()[1], 80)
    if ablate == "mean":
        set_mean_fills(model, data)
        assert float(model.relu3.fill.abs().sum()) > 0
    assert_engine_equals_naive(model, data, units={"conv1": [0, 5], "conv2": [0, 7, 15], "fc1": [0, 60, 119],
                                                   "fc2": [0, 83]})
    # The whole sweep through the naive reference too, on one layer.
    engine = AblationEngine(model, probes={"fc2": model.probes["fc2"]})
    _, ref = single_unit_ablation(model, {"fc2": model.probe_modules()["fc2"]}, {"fc2": 84}, data)
    _, got = engine.single_unit(data)
    np.testing.assert_allclose(got["fc2"].acc_delta, ref["fc2"].acc_delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["fc2"].loss_delta, ref["fc2"].loss_delta, rtol=0, atol=1e-5)


def tiny_vit(classes: int = 3) -> nn.Module:
    from torchvision.models import VisionTransformer  # here: importing torchvision takes seconds of collection

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=48,
                             num_classes=classes)


def test_token_units_reduce_over_tokens_and_map_to_patches():
    data = rgb_digits(24)
    model = trace_probes(tiny_vit(), data.shape).eval()
    layer = "encoder.layers.encoder_layer_1.mlp.1"
    assert list(model.probes) == ["encoder.layers.encoder_layer_0.mlp.1", layer]
    assert "not elementwise" in model.skipped["encoder.layers.encoder_layer_0.self_attention"]
    assert layer_shapes(model, data.shape)[layer] == (48, 17)  # 48 MLP neurons at 16 patch tokens + the class token
    stats = evaluation_stats(model, model.probe_modules(), data)
    x = data.floats(0, len(data))
    with torch.no_grad(), Probe(model.probe_modules()) as probe:
        model(x)
    pre = probe.pre[layer]  # (N, T, C)
    assert pre.shape == (24, 17, 48)
    np.testing.assert_allclose(stats.layers[layer].overall["act"], pre.mean((0, 1)).double().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(stats.layers[layer].overall["rect"], F.gelu(pre).clamp(min=0).mean((0, 1)).numpy(),
                               rtol=1e-5, atol=1e-6)
    boxes = token_boxes(model, layer, data.shape)
    assert boxes.shape == (17, 1, 4)
    assert boxes[0, 0].tolist() == [0, 0, 32, 32]  # the class token: the whole image
    assert boxes[1, 0].tolist() == [0, 0, 8, 8] and boxes[6, 0].tolist() == [8, 8, 16, 16]
    assert_engine_equals_naive(model, data, units={n: [0, 5, 47] for n in model.probes})
    set_mean_fills(model, data)
    assert_engine_equals_naive(model, data, units={n: [0, 5, 47] for n in model.probes})


ARCHS = [  # name, input, probe points to analyze, expected probe points / units of the whole model
    ("efficientnet_b0", ["features.1.0.block.0.2", "features.8.2"], 49, "silu"),
    ("convnext_tiny", ["features.1.0.block.4", "features.7.2.block.4"], 18, "gelu"),
    ("mobilenet_v3_small", ["features.1.block.0.2", "features.12.2", "classifier.1"], 33, "hardswish"),
]


@pytest.mark.parametrize("name,layers,n_probes,kind", ARCHS)
def test_torchvision_architectures_engine_equals_naive(name, layers, n_probes, kind):
    torch.manual_seed(0)
    model = build_model(ModelSpec(f"torchvision:{name}", (3, 32, 32), 3)).eval()
    assert len(model.probes) == n_probes and kind in {m.kind for m in model.probe_modules().values()}
    data = rgb_digits(16)
    chosen = {layer: [0, 3] for layer in layers}
    assert_engine_equals_naive(model, data, layers=layers, units=chosen)


def test_convnext_channels_last_boxes_read_like_conv_maps():
    model = build_model(ModelSpec("torchvision:convnext_tiny", (3, 32, 32), 3)).eval()
    layer = "features.1.0.block.4"  # GELU on (N, H, W, C) after the block's permute
    assert model.probe_modules()[layer].unit_dim == -1
    assert layer_shapes(model, (3, 32, 32))[layer] == (384, 8, 8)
    boxes = receptive_boxes(model, layer, (3, 32, 32))
    # The 4x4 stride-4 stem, then a 7x7 depthwise conv (padding 3): 4 + 6 * 4 = 28 pixels, clipped.
    assert boxes.shape == (8, 8, 4) and boxes[4, 4].tolist() == [4, 4, 32, 32]
    assert boxes[0, 0].tolist() == [0, 0, 16, 16]


def mini_convnext() -> nn.Module:
    """torchvision's ConvNeXt (its CNBlocks, LayerNorm2d, channels-last GELUs) at 24/48 channels, one
    block per stage: convnext_tiny's 3,072-unit last stage makes every per-unit stage minutes long."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(24, 48, 1), CNBlockConfig(48, None, 1)], num_classes=3)


@pytest.mark.parametrize("name,layers,images", [
    ("efficientnet_b0", ("features.8.2",), False),
    ("convnext", ("features.1.0.block.4", "features.3.0.block.4"), True),
    ("mobilenet_v3_small", ("features.0.2",), True),
])
def test_torchvision_slices_through_the_pipeline(tmp_path, name, layers, images):
    data = rgb_digits(24)  # each curve point is a pass through the whole network: a few images per class
    torch.manual_seed(0)
    from compute.nets.models import _torchvision_model  # noqa: PLC0415 (the registry's own builder)

    model = (mini_convnext() if name == "convnext" else
             _torchvision_model(ModelSpec(f"torchvision:{name}", data.shape, 3)))
    cfg = ImageConfig(top_k=2, actmax=ActMaxConfig(steps=8, restarts=2)) if images else None
    analyze(model, data, layers=list(layers), warehouse=tmp_path, run_id="arch", images=cfg)
    con = warehouse.connect(tmp_path)
    rows = con.execute("SELECT layer, n_units, probe FROM layers ORDER BY layer_index").fetchall()
    assert [r[0] for r in rows] == list(layers)
    n = sum(r[1] for r in rows)
    counts = con.execute("SELECT count(*), count(abl_loss_delta), count(selectivity) FROM units").fetchall()
    assert counts == [(n, n, n)]
    if images:
        kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM unit_images").fetchall()}
        assert {"top", "top_crop", "gbp", "happy"} <= kinds
        sizes = con.execute("SELECT DISTINCT box[3] - box[1] FROM unit_images WHERE kind = 'top_crop' AND layer = ?",
                            [layers[0]]).fetchall()
        assert sizes and all(0 < w < 32 for (w,) in sizes)  # a conv map's field, channels-last or not


def test_vit_through_the_pipeline_with_patch_crops(tmp_path):
    data = rgb_digits(40)
    cfg = ImageConfig(top_k=2, actmax=ActMaxConfig(steps=8, restarts=2))
    analyze(tiny_vit(), data, warehouse=tmp_path, run_id="vit", images=cfg, ablate="mean")
    con = warehouse.connect(tmp_path)
    assert con.execute("SELECT count(*), sum(n_units) FROM layers").fetchall() == [(2, 96)]
    assert "gelu call site" in con.execute("SELECT probe FROM layers LIMIT 1").fetchall()[0][0]
    boxes = con.execute("SELECT position, box FROM unit_images WHERE kind = 'top_crop'").fetchall()
    assert boxes and all(b[1][2] - b[1][0] in (8, 32) for b in boxes)  # a patch, or the class token's whole image
    assert all(b[1] == ([0, 0, 32, 32] if b[0][0] == 0 else [8 * ((b[0][0] - 1) // 4), 8 * ((b[0][0] - 1) % 4),
                                                               8 * ((b[0][0] - 1) // 4) + 8,
                                                               8 * ((b[0][0] - 1) % 4) + 8]) for b in boxes)
    config = con.execute("SELECT config FROM runs").fetchall()[0][0]
    assert '"ablate": "mean"' in config


def test_bad_layouts_and_activations_are_named(tmp_path):
    class Scalar(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) * torch.relu(x.mean())  # a ReLU of one number per batch

    with pytest.raises(ConfigError, match="0 dimension\\(s\\)") as e:
        trace_probes(Scalar(), (1, 28, 28))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot take images of 3x60x60.*indivisible by patch size"):
        build_model(ModelSpec("torchvision:vit_b_32", (3, 60, 60), 3))  # built for 60x60: not a multiple of 32
    activation = next(o for o in REGISTRY["lenet5"].options if o.name == "activation")
    with pytest.raises(ConfigError, match="--activation must be one of relu, relu6"):
        activation.parse("softmax")


def test_trained_gelu_lenet_through_every_stage_and_the_dashboard(tmp_path, monkeypatch):
    """LeNet-5 with GELUs trained briefly on real digits: every stage, then its unit page."""
    from streamlit.testing.v1 import AppTest

    from compute.run.config import RunConfig
    from compute.run.pipeline import compute_run

    images = ImageConfig(top_k=3, actmax=ActMaxConfig(steps=8, restarts=2))
    summary = compute_run(RunConfig(model="lenet5", activation="gelu", epochs=3, train_size=1000, eval_size=200,
                                    batch_size=32, images=images, run_id="gelu"), tmp_path)
    assert summary.figures["test_acc"] > 0.6  # trained (chance is 0.1)
    con = warehouse.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM layers WHERE probe LIKE 'output of gelu module%'").fetchall() == [(4,)]
    assert con.execute("SELECT count(*) FROM units WHERE mean_rect < 0 OR selectivity < 0").fetchall() == [(0,)]
    assert con.execute("SELECT count(DISTINCT epoch) FROM train_trace").fetchall() == [(3,)]
    crops = con.execute("SELECT count(*) FROM unit_images WHERE layer = 'conv2' AND kind = 'top_crop'").fetchall()
    assert crops[0][0] > 0
    assert con.execute("SELECT count(*) FROM class_curves").fetchall()[0][0] > 0
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/unit.py")
    at.query_params = {"run": "gelu", "unit": "fc1:3"}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.header[0].value == "Unit fc1:3" and len(at.image) > 0
