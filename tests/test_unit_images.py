"""The images stage on a real LeNet-5 briefly trained on mnist-5k: every statistic behind an image
is recomputed here independently (functional forward passes, a hand-written guided backprop)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

import warehouse
from compute.images.actmax import activation_maps, consistency
from compute.datasets.sources import ImageSet, load_dataset, stratified_subset
from compute.images.attribution import unit_attributions, weighted_averages
from compute.images.config import ActMaxConfig, ImageConfig
from compute.nets.models import CifarConvNet, LeNet5, load_checkpoint
from compute.images.render import decode_png, diverging_pixels, image_pixels
from compute.distributed.images import unit_images_in_process
from warehouse.bundle import export_bundle, image_name, safe_part
from dashboard.image_panels import crop_to_box, upscale, with_thumbnails
from warehouse.images import data_uri, thumbnails, unit_images
from warehouse.schema import IMAGE_KINDS
from warehouse.errors import WarehouseError

K = 5  # conftest.small_run's top_k
RUN = "small"
ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}


@pytest.fixture(scope="module")
def run(small_run) -> dict:
    """conftest's small LeNet-5 run (its images stage: top 5 examples, 32 actmax steps)."""
    root, summary = small_run
    model, _ = load_checkpoint(summary.path / "checkpoint.pt")
    splits = load_dataset("mnist-5k")
    table = pq.read_table(summary.path / "unit_images.parquet").to_pandas()
    return {"root": root, "path": summary.path, "model": model, "table": table,
            "eval": stratified_subset(splits.test, 300), "train": stratified_subset(splits.train, 1000)}


def pre_activation(model: LeNet5, x: torch.Tensor, layer: str) -> torch.Tensor:
    """LeNet-5's pre-activations written out with torch.nn.functional, independent of the hooks."""
    h = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=2)
    if layer == "conv1":
        return h
    h = F.conv2d(F.max_pool2d(F.relu(h), 2), model.conv2.weight, model.conv2.bias)
    if layer == "conv2":
        return h
    h = F.linear(F.max_pool2d(F.relu(h), 2).flatten(1), model.fc1.weight, model.fc1.bias)
    if layer == "fc1":
        return h
    return F.linear(F.relu(h), model.fc2.weight, model.fc2.bias)


def lenet_box(layer: str, y: int, x: int) -> tuple[int, int, int, int]:
    """LeNet-5's receptive fields by hand: conv1 is 5x5 with padding 2; conv2 5x5 after a 2x2 pool,
    so conv2 position i sees conv1 rows 2i..2i+9, i.e. input rows 2i-2..2i+11."""
    lo_y, lo_x, size = (y - 2, x - 2, 5) if layer == "conv1" else (2 * y - 2, 2 * x - 2, 14)
    return max(0, lo_y), max(0, lo_x), min(28, lo_y + size), min(28, lo_x + size)


def rows(table, layer: str, unit: int, kind: str):
    return table[(table.layer == layer) & (table.unit == unit) & (table.kind == kind)].sort_values(["rank", "class"])


def test_every_unit_has_every_kind_and_pngs_decode_to_their_sizes(run: dict) -> None:
    t = run["table"]
    for layer, n in LAYERS.items():
        counts = t[t.layer == layer].groupby("kind").size().to_dict()
        expected = {"top": K * n, "bottom": K * n, "gbp": K * n, "grad": K * n, "act_avg": 10 * n,
                    "grad_avg": 10 * n, "happy": 3 * n, "sad": 3 * n}
        if layer.startswith("conv"):
            expected["top_crop"] = K * n
        if layer == "conv1":
            expected["weights"] = n
        assert counts == expected, layer
    sample = t.groupby("kind").head(20)
    for _, r in sample.iterrows():
        px = decode_png(r.png)
        assert px.shape[:2] == (r.height, r.width)
        want_rgb = r.kind in ("gbp", "grad", "weights") or (r.kind in ("top", "bottom") and r.layer.startswith("conv"))
        assert px.ndim == (3 if want_rgb else 2), r.kind
    # Stored at the input's own size; only an example with a receptive-field box is drawn larger.
    top = t[t.kind == "top"]
    assert set(top[top.layer.str.startswith("conv")].height) == {112}  # 28 x 4, the box outlined
    assert set(top[~top.layer.str.startswith("conv")].height) == {28}
    assert set(t[t.kind.isin(["gbp", "act_avg", "happy"])].height) == {28}
    assert set(t[t.kind == "weights"].height) == {5}


def test_top_and_bottom_examples_match_an_independent_forward_pass(run: dict) -> None:
    model, data, t = run["model"], run["eval"], run["table"]
    x = data.floats(0, len(data))
    with torch.no_grad():
        preds = model(x).argmax(1).numpy()
        for layer in LAYERS:
            pre = pre_activation(model, x, layer).reshape(len(x), LAYERS[layer], -1)
            peak = pre.max(2).values.numpy()
            for unit in (0, LAYERS[layer] - 1):
                order = np.argsort(-peak[:, unit], kind="stable")
                top, bottom = rows(t, layer, unit, "top"), rows(t, layer, unit, "bottom")
                np.testing.assert_allclose(top.value, peak[order[:K], unit], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(bottom.value, peak[order[::-1][:K], unit], rtol=1e-5, atol=1e-6)
                for r in top.itertuples():
                    n = int(r.example)
                    assert abs(peak[n, unit] - r.value) < 1e-5
                    assert r.label == int(data.labels[n]) and r.pred == preds[n]
                    if layer.startswith("conv"):
                        w = int(pre.shape[2] ** 0.5)
                        assert divmod(int(pre[n, unit].argmax()), w) == tuple(r.position)


def test_crops_are_the_receptive_field_from_layer_arithmetic(run: dict) -> None:
    data, t = run["eval"], run["table"]
    crops = t[t.kind == "top_crop"]
    assert len(crops) == K * (6 + 16)
    for r in crops.itertuples():
        y, x = r.position
        box = lenet_box(r.layer, int(y), int(x))
        assert tuple(r.box) == box
        px = decode_png(r.png)
        scale = r.height // (box[2] - box[0])
        assert r.width == scale * (box[3] - box[1])
        original = data.images[int(r.example), 0].numpy()[box[0]:box[2], box[1]:box[3]]
        np.testing.assert_array_equal(px[::scale, ::scale], original)
    # The whole image of the same example carries the box in red, the crop's pixels untouched inside.
    top = rows(t, "conv2", 3, "top").iloc[0]
    px = decode_png(top.png)
    y0, x0, y1, x1 = (v * 4 for v in top.box)
    assert tuple(px[y0, x0 + 5]) == (255, 48, 48)
    inner = data.images[int(top.example), 0].numpy()[top.box[0] + 1:top.box[2] - 1, top.box[1] + 1:top.box[3] - 1]
    np.testing.assert_array_equal(px[y0 + 4:y1 - 4:4, x0 + 4:x1 - 4:4, 0], inner)


class GuidedReLU(torch.autograd.Function):
    """Springenberg et al.'s rule: pass a gradient back only where the input and the gradient are positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


def reference_guided_backprop(model: LeNet5, x: torch.Tensor, layer: str, unit: int, pos: int) -> torch.Tensor:
    x = x.clone().requires_grad_()
    h = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=2)
    if layer != "conv1":
        h = F.conv2d(F.max_pool2d(GuidedReLU.apply(h), 2), model.conv2.weight, model.conv2.bias)
        if layer != "conv2":
            h = F.linear(F.max_pool2d(GuidedReLU.apply(h), 2).flatten(1), model.fc1.weight, model.fc1.bias)
            if layer == "fc2":
                h = F.linear(GuidedReLU.apply(h), model.fc2.weight, model.fc2.bias)
    target = h.reshape(len(x), h.shape[1], -1)[:, unit, pos].sum()
    (g,) = torch.autograd.grad(target, x)
    return g


def test_guided_backprop_and_gradient_match_reference_computations(run: dict) -> None:
    model, data = run["model"], run["eval"]
    probes = model.probe_modules()
    x = data.floats(0, 12)
    for layer, unit, pos in (("conv1", 2, 300), ("conv2", 5, 44), ("fc1", 7, 0), ("fc2", 11, 0)):
        n = len(x)
        gbp, grad = unit_attributions(model, probes[layer], x.clone().requires_grad_(),
                                      torch.full((n,), unit), torch.full((n,), pos))
        ref = torch.cat([reference_guided_backprop(model, x[i:i + 1], layer, unit, pos) for i in range(n)])
        np.testing.assert_allclose(gbp, ref.numpy(), rtol=1e-4, atol=1e-6)
        xg = x.clone().requires_grad_()
        pre = pre_activation(model, xg, layer).reshape(n, LAYERS[layer], -1)[:, unit, pos]
        (g,) = torch.autograd.grad(pre.sum(), xg)
        np.testing.assert_allclose(grad, g.numpy(), rtol=1e-4, atol=1e-6)
        if layer != "conv1":  # guided backprop differs from the gradient past a ReLU
            assert not np.allclose(gbp, grad)


def test_weighted_averages_match_numpy(run: dict) -> None:
    model, data, t = run["model"], run["train"], run["table"]
    avgs = weighted_averages(model, model.probe_modules(), data, batch_size=300)
    x = data.floats(0, len(data)).requires_grad_()
    y = data.labels.numpy()
    for layer, unit in (("conv2", 4), ("fc1", 9)):
        pre = pre_activation(model, x, layer)
        post = F.relu(pre)
        # Gradient signal: the rest of the network run from this layer's post-ReLU output.
        post_leaf = post.detach().requires_grad_()
        h = post_leaf
        if layer == "conv2":
            h = F.linear(F.max_pool2d(h, 2).flatten(1), model.fc1.weight, model.fc1.bias).relu()
        h = F.linear(h, model.fc2.weight, model.fc2.bias).relu()
        logits = F.linear(h, model.fc3.weight, model.fc3.bias)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, data.labels, reduction="sum"), post_leaf)
        w_act = post.detach().reshape(len(x), post.shape[1], -1)[:, unit].mean(1).double().numpy()
        w_grad = np.maximum(0, -g.reshape(len(x), g.shape[1], -1)[:, unit].sum(1).double().numpy())
        imgs = x.detach().double().numpy()
        for kind, w, got, got_w in (("act_avg", w_act, avgs[layer].act, avgs[layer].act_weight),
                                    ("grad_avg", w_grad, avgs[layer].grad, avgs[layer].grad_weight)):
            for c in range(10):
                m = y == c
                total = w[m].sum()
                expect = (w[m][:, None, None, None] * imgs[m]).sum(0) / total if total > 0 else np.zeros((1, 28, 28))
                np.testing.assert_allclose(got[unit, c], expect, rtol=1e-4, atol=1e-5)
                assert got_w[unit, c] == pytest.approx(w[m].mean(), rel=1e-4, abs=1e-7)
            stored = rows(t, layer, unit, kind)
            assert list(stored["class"]) == list(range(10))
            np.testing.assert_allclose(stored.value, got_w[unit], rtol=1e-6)
            np.testing.assert_array_equal(decode_png(stored.iloc[3].png), image_pixels(got[unit, 3]))


def test_happy_maps_drive_units_far_above_their_dataset_activation(run: dict) -> None:
    model, data, t = run["model"], run["eval"], run["table"]
    x = data.floats(0, len(data))
    with torch.no_grad():
        for layer, n in LAYERS.items():
            act = pre_activation(model, x, layer).reshape(len(x), n, -1).mean(2).numpy()  # (N, U)
            happy = t[(t.layer == layer) & (t.kind == "happy") & (t["rank"] == 0)].sort_values("unit")
            sad = t[(t.layer == layer) & (t.kind == "sad") & (t["rank"] == 0)].sort_values("unit")
            z_happy = (happy.value.to_numpy() - act.mean(0)) / act.std(0)
            z_sad = (sad.value.to_numpy() - act.mean(0)) / act.std(0)
            assert np.median(z_happy) > 3 and np.mean(z_happy > 1.5) > 0.95, layer
            assert np.median(z_sad) < -1.5, layer
            # The HappyMaps beat the most activating real image for nearly every unit.
            assert np.mean(happy.value.to_numpy() > act.max(0)) > 0.8, layer
            # The stored value is what the stored (8-bit) image does.
            imgs = np.stack([decode_png(p) for p in happy.png]).astype(np.float32)[:, None] / 255
            again = pre_activation(model, torch.from_numpy(imgs), layer).reshape(n, n, -1).mean(2)
            np.testing.assert_allclose(np.diag(again.numpy()), happy.value, rtol=1e-4, atol=1e-5)
            restarts = t[(t.layer == layer) & (t.kind == "happy")]
            assert (restarts.groupby("unit").value.apply(lambda v: v.is_monotonic_decreasing)).all()


def test_consistency_is_mean_pairwise_correlation() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 1, 8, 8, generator=g)
    got = consistency(a).numpy()
    for u in range(4):
        c = np.corrcoef(a[u].reshape(3, -1).numpy())
        assert got[u] == pytest.approx(c[~np.eye(3, dtype=bool)].mean(), abs=1e-6)
    same = a[:, :1].repeat(1, 3, 1, 1, 1)
    np.testing.assert_allclose(consistency(same).numpy(), 1.0, atol=1e-6)
    flat = torch.zeros(1, 2, 1, 4, 4)
    assert consistency(flat).item() == pytest.approx(1.0, abs=1e-12)


def test_actmax_batch_of_units_equals_optimising_each_alone(run: dict) -> None:
    """A layer's units optimised as one batch follow the path each would take alone: eval mode,
    per-image objective and blur, element-wise Adam, per-unit noise seeds, and a converged image
    frozen where it stopped (40 steps: some images stop early, others run on)."""
    model = run["model"]
    cfg = ActMaxConfig(steps=40, restarts=2)
    mean = torch.tensor([0.13])
    module = model.probe_modules()["conv2"]
    happy, sad = activation_maps(model, module, range(16), (1, 28, 28), mean, cfg)
    steps = np.concatenate([happy.steps.ravel(), sad.steps.ravel()])
    assert steps.min() < 40 and set(steps) <= {16, 24, 32, 40}
    for unit in (4, 11):
        one_happy, one_sad = activation_maps(model, module, [unit], (1, 28, 28), mean, cfg)
        np.testing.assert_allclose(happy.images[unit], one_happy.images[0], atol=1e-4)
        np.testing.assert_array_equal(happy.steps[unit], one_happy.steps[0])
        np.testing.assert_allclose(sad.values[unit], one_sad.values[0], rtol=1e-4, atol=1e-5)
        assert happy.consistency[unit] == pytest.approx(one_happy.consistency[0], abs=1e-4)


def reference_actmax(model: LeNet5, x0: torch.Tensor, units: torch.Tensor, sign: torch.Tensor, cfg: ActMaxConfig,
                     mean: torch.Tensor) -> torch.Tensor:
    """The regularized ascent written with torch.optim.Adam, autograd through every regularizer and
    torchvision's gaussian_blur, one image per row, no early stop."""
    from torchvision.transforms.functional import gaussian_blur

    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=cfg.lr)
    shifts = torch.Generator().manual_seed(cfg.seed)
    kernel = 2 * int(np.ceil(3 * cfg.blur_sigma)) + 1
    for step in range(cfg.steps):
        dy, dx = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=shifts).tolist()
        pre = pre_activation(model, torch.roll(x, (dy, dx), (2, 3)), "conv2")
        act = pre.reshape(len(x), pre.shape[1], -1)[torch.arange(len(x)), units].mean(1)
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().sum((1, 2, 3)) + (x[..., :, 1:] - x[..., :, :-1]).abs().sum((1, 2, 3))
        loss = (-(sign * act) + cfg.l2 * ((x - mean) ** 2).sum((1, 2, 3)) + cfg.tv * tv).sum()
        opt.zero_grad()
        with torch.backends.mkldnn.flags(enabled=False):  # the convolution backward kernels actmax uses: Adam
            loss.backward()  # turns rounding-level differences of near-zero gradients into whole steps
        opt.step()
        with torch.no_grad():
            if (step + 1) % cfg.blur_every == 0:
                x.copy_(gaussian_blur(x, [kernel, kernel], [cfg.blur_sigma, cfg.blur_sigma]))
            x.clamp_(0, 1)
    return x.detach()


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch's note when oneDNN is switched off
def test_actmax_stack_equals_a_reference_written_with_torch_adam_and_autograd(run: dict) -> None:
    """The stack's hand-written Adam, analytic L2/TV gradients and grouped-conv blur against the
    plain formulation (tol=0, so no image stops)."""
    model = run["model"]
    cfg = ActMaxConfig(steps=9, restarts=1, tol=0.0)
    mean = torch.tensor([0.13])
    units = [2, 7, 13]
    happy, sad = activation_maps(model, model.probe_modules()["conv2"], units, (1, 28, 28), mean, cfg)
    noise = torch.stack([torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(u)) for u in units])
    x0 = (mean.reshape(1, -1, 1, 1) + cfg.init_std * torch.cat([noise, noise])).clamp(0, 1)
    ref = reference_actmax(model, x0, torch.tensor(units * 2), torch.tensor([1.0] * 3 + [-1.0] * 3), cfg,
                           mean.reshape(1, -1, 1, 1))
    ref = ref.mul(255).round().div(255)
    got = np.concatenate([happy.images[:, 0], sad.images[:, 0]])
    assert np.mean(np.abs(got - ref.numpy()) < 1.5 / 255) > 0.999  # equal up to an 8-bit rounding step
    assert (happy.steps == 9).all()


def test_an_image_stops_when_its_objective_stops_rising(run: dict) -> None:
    """The documented rule, checked on the windows' objectives of a run that never stops: an image
    stops at the first window whose mean objective rose by less than tol x the previous mean, and
    its final image is that of a run cut at that step."""
    model, module = run["model"], run["model"].probe_modules()["fc2"]
    mean, units = torch.tensor([0.13]), list(range(0, 84, 12))
    cfg = ActMaxConfig(steps=48, restarts=1)
    windows: dict[int, torch.Tensor] = {}
    activation_maps(model, module, units, (1, 28, 28), mean, ActMaxConfig(steps=48, restarts=1, tol=0.0),
                    on_window=lambda s, _c, obj: windows.__setitem__(s, obj))
    happy, sad = activation_maps(model, module, units, (1, 28, 28), mean, cfg)
    took = np.concatenate([happy.steps[:, 0], sad.steps[:, 0]])  # restarts=1: rank 0 is the only image
    obj = np.stack([windows[s].numpy() for s in sorted(windows)])  # (windows, images), happy then sad
    expected = np.full(len(took), 48)
    for i in range(len(took)):
        for w in range(1, len(obj)):
            if obj[w, i] - obj[w - 1, i] < cfg.tol * max(abs(obj[w - 1, i]), 1e-3):
                expected[i] = 8 * (w + 1)
                break
    np.testing.assert_array_equal(took, expected)
    assert (took < 48).any()
    i = int(np.argmin(took))
    cut, cut_sad = activation_maps(model, module, units, (1, 28, 28), mean,
                                   ActMaxConfig(steps=int(took[i]), restarts=1, tol=0.0))
    both, cut_both = np.concatenate([happy.images, sad.images]), np.concatenate([cut.images, cut_sad.images])
    np.testing.assert_allclose(both[i], cut_both[i], atol=1e-6)


def test_weights_are_the_first_conv_filters(run: dict) -> None:
    model, t = run["model"], run["table"]
    for u in range(6):
        r = rows(t, "conv1", u, "weights").iloc[0]
        expected = diverging_pixels(model.conv1.weight[u, 0].detach().numpy())
        np.testing.assert_array_equal(decode_png(r.png), expected)


def test_unit_images_parquet_is_sorted_in_small_row_groups(run: dict) -> None:
    f = pq.ParquetFile(run["path"] / "unit_images.parquet")
    assert f.metadata.num_row_groups > 20
    assert max(f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)) <= 512
    keys = list(zip(run["table"].layer, run["table"].unit))
    assert keys == sorted(keys)


def test_queries_bind_values_and_return_one_unit(run: dict) -> None:
    con = warehouse.connect(run["root"])
    df = unit_images(con, RUN, "conv2", 7)
    assert set(df.layer) == {"conv2"} and set(df.unit) == {7} and len(df) == 5 * K + 20 + 6
    assert list(df.kind.drop_duplicates()) == ["top", "top_crop", "bottom", "gbp", "grad", "act_avg", "grad_avg",
                                               "happy", "sad"]
    assert len(unit_images(con, RUN, "conv2' OR '1'='1", 7)) == 0
    assert len(unit_images(con, RUN, "fc1", 3, kinds=("happy",))) == 3
    th = thumbnails(con, RUN, kind="happy")
    assert len(th) == sum(LAYERS.values()) and th.thumbnail.str.startswith("data:image/png;base64,").all()
    assert len(thumbnails(con, RUN, kind="act_avg", layer="fc2")) == 84


def test_bundle_holds_table_pngs_and_manifest(run: dict, tmp_path: Path) -> None:
    con = warehouse.connect(run["root"])
    out = export_bundle(con, RUN, [("conv1", 0), ("fc2", 5)], tmp_path / "b.zip")
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["units"] == [["conv1", 0], ["fc2", 5]]
        units_csv = z.read("units.csv").decode().splitlines()
        assert len(units_csv) == 3 and units_csv[0].startswith("run_id,layer")
        pngs = [n for n in names if n.endswith(".png")]
        assert len(pngs) == manifest["n_images"] == (5 * K + 27) + (4 * K + 26)
        for n in pngs[:10] + ["units.csv"]:
            assert hashlib.sha256(z.read(n)).hexdigest() == manifest["sha256"][n]
        stored = unit_images(con, RUN, "fc2", 5, kinds=("happy",)).png.iloc[0]
        assert z.read("images/fc2/5/happy_r0.png") == bytes(stored)
        assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
    assert image_name("../../etc", 1, "top", 0, None) == "images/_.._etc/1/top_r0.png"
    assert safe_part("..") == "_" and "/" not in safe_part("a/../../b")
    with pytest.raises(WarehouseError, match="no units conv9/1"):
        export_bundle(con, RUN, [("conv9", 1)], tmp_path / "bad.zip")
    with pytest.raises(WarehouseError, match="not in the warehouse"):
        export_bundle(con, "nope", [("conv1", 1)], tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists() and len(list(tmp_path.iterdir())) == 1


def test_cli_no_images_and_bad_image_flags(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1"}
    base = [sys.executable, "-m", "compute", "run", "--warehouse", str(wh), "--epochs", "1",
            "--train-size", "200", "--eval-size", "100"]
    bad = subprocess.run(base + ["--run-id", "bad", "--actmax-lr", "-1"], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert bad.returncode == 2 and "learning rate: a finite number above 0" in bad.stderr
    assert not (wh / "runs" / "bad").exists()
    ok = subprocess.run(base + ["--run-id", "plain", "--no-images"], capture_output=True, text=True,
                        env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert pq.read_metadata(wh / "runs" / "plain" / "unit_images.parquet").num_rows == 0
    assert json.loads(warehouse.connect(wh).execute("SELECT config FROM runs").fetchall()[0][0])["images"] is None


def evidence_app(root: Path, layer: str, unit: int) -> AppTest:
    script = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport warehouse\n"
              f"from dashboard.image_panels import render_unit_evidence\n"
              f"render_unit_evidence(warehouse.connect({str(root)!r}), {RUN!r}, {layer!r}, {unit})\n")
    return AppTest.from_string(script, default_timeout=60).run()


def test_unit_page_shows_every_image_grid(run: dict) -> None:
    at = evidence_app(run["root"], "conv2", 3)
    assert not at.exception
    grids = [len(im.value) for im in at.image]
    assert grids == [K, K, K, K, K, 10, 10, 3, 3]  # top, crops, gbp, grad, bottom, averages, happy, sad
    assert all(u.endswith(".png") for im in at.image for u in im.value)  # served as PNG, not re-encoded JPEG
    t = run["table"]
    top = rows(t, "conv2", 3, "top").iloc[0]
    assert at.image[0].captions[0] == f"#1 act {top.value:.2f} · {int(top.label)}→{int(top.pred)}"
    happy = rows(t, "conv2", 3, "happy").iloc[0]
    assert any(f"consistency across restarts {happy.consistency:.2f}" in m.value for m in at.markdown)
    assert len(at.get("download_button")) == 1
    # A first-layer conv unit also shows its filter; a linear unit has no crops.
    assert [len(im.value) for im in evidence_app(run["root"], "conv1", 0).image][-1] == 1
    assert len(evidence_app(run["root"], "fc1", 0).image) == 8


def test_dashboard_upscales_stored_images_by_whole_pixels(run: dict) -> None:
    """Images are stored at the input's size; the dashboard enlarges them without blurring, and cuts a
    conv unit's gbp map to the receptive field of the top example's peak."""
    t = run["table"]
    happy = rows(t, "fc1", 3, "happy").iloc[0]
    small = decode_png(happy.png)
    big = decode_png(upscale(bytes(happy.png), 160))
    assert big.shape == (168, 168)  # 28 x 6: the whole factor nearest 160
    np.testing.assert_array_equal(big[::6, ::6], small)
    np.testing.assert_array_equal(big[5::6, 5::6], small)
    top, gbp = rows(t, "conv2", 3, "top").iloc[0], rows(t, "conv2", 3, "gbp").iloc[0]
    y0, x0, y1, x1 = (int(v) for v in top.box)
    cut = decode_png(crop_to_box(bytes(gbp.png), list(top.box), (28, 28)))
    factor = cut.shape[0] // (y1 - y0)
    np.testing.assert_array_equal(cut[::factor, ::factor], decode_png(gbp.png)[y0:y1, x0:x1])


def test_unit_page_explains_missing_images(run: dict) -> None:
    at = evidence_app(run["root"], "conv2", 99)
    assert not at.exception and len(at.image) == 0
    assert "No images" in at.info[0].value


def test_explorer_thumbnails_are_data_uris(run: dict) -> None:
    con = warehouse.connect(run["root"])
    units = pd.DataFrame({"layer": ["fc1", "conv2"], "unit": [3, 1], "selectivity": [0.1, 0.2]})
    df, config = with_thumbnails(con, RUN, units, kind="happy")
    assert list(df.columns) == ["layer", "unit", "selectivity", "thumbnail"]
    expected = rows(run["table"], "fc1", 3, "happy").iloc[0].png
    assert df.thumbnail[0] == data_uri(bytes(expected))
    assert "thumbnail" in config


def test_rgb_conv_net_gets_every_kind_with_colour_images() -> None:
    """The CIFAR-style net (3 channels, batch norm, 8 conv layers) on real digits made RGB."""
    digits = stratified_subset(load_dataset("mnist-5k").test, 60)
    rgb = F.pad(digits.images, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    data = ImageSet(rgb, digits.labels, digits.class_names, "digits-rgb")
    torch.manual_seed(0)
    model = CifarConvNet((3, 32, 32), 10, width=0.0625).eval()
    model.probes = {name: path for name, path in model.probes.items() if name in ("conv1", "conv8", "fc1")}
    probes = model.probe_modules()
    table, seconds = unit_images_in_process(model, data, data, ImageConfig(top_k=2, actmax=ActMaxConfig(steps=4, restarts=2)))
    t = pd.DataFrame(table)
    assert set(t.layer) == set(probes) and "activation maximization" in seconds
    kinds = t.groupby("layer").kind.unique().map(set)
    assert kinds["conv1"] == set(IMAGE_KINDS)
    assert kinds["conv8"] == set(IMAGE_KINDS) - {"weights"} and "top_crop" not in kinds["fc1"]
    for _, r in t.groupby("kind").head(3).iterrows():
        px = decode_png(r.png)
        assert px.shape == (r.height, r.width, 3), r.kind
    deep = t[(t.layer == "conv8") & (t.kind == "top_crop")].iloc[0]
    assert list(deep.box) == [0, 0, 32, 32]  # conv8 sees the whole (padded) image
    assert decode_png(t[t.kind == "weights"].iloc[0].png).shape == (3, 3, 3)  # a 3x3 filter, RGB


@pytest.mark.parametrize("images", [ImageConfig(top_k=3, actmax=ActMaxConfig(steps=7, tv=0.0, seed=4)), None])
def test_image_settings_survive_resume(tmp_path: Path, images: ImageConfig | None) -> None:
    """An interrupted run resumes with the image settings it started with (saved as JSON)."""
    from compute.run.config import RunConfig, settle_config

    cfg = RunConfig(run_id="r", images=images)
    settle_config(cfg, "r", tmp_path, resume=False)
    assert settle_config(RunConfig(run_id="r"), "r", tmp_path, resume=True) == cfg
