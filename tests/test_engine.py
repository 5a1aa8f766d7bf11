"""The fast ablation engine against the naive hook method, on every unit of small real models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.ablation_models import Residual, Untraceable, digits, naive_outcome, trained_model
from compute.ablation.naive import single_unit_ablation
from compute.ablation.engine import AblationEngine
from compute.errors import ConfigError
from compute.nets.probe import ZeroUnit
from compute.ablation.suffix import GraphSplit, WholeModel, channel_parts


def untraceable_lenet() -> Untraceable:
    """The trained LeNet-5's weights in a model torch.fx cannot trace."""
    model = Untraceable((1, 28, 28), 10)
    model.load_state_dict(trained_model("lenet5").state_dict())
    return model.eval()


def assert_same_sweep(model, data, engine: AblationEngine) -> None:
    counts = engine.unit_counts(data)
    base_ref, ref = single_unit_ablation(model, model.probe_modules(), counts, data)
    base, got = engine.single_unit(data)
    assert base.accuracy == pytest.approx(base_ref.accuracy, abs=1e-12)
    assert base.loss == pytest.approx(base_ref.loss, abs=1e-5)
    assert list(got) == list(ref)
    for layer in ref:
        r, g = ref[layer], got[layer]
        assert g.acc_delta.shape == (counts[layer],)
        np.testing.assert_allclose(g.acc_delta, r.acc_delta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.class_acc_delta, r.class_acc_delta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.loss_delta, r.loss_delta, rtol=0, atol=1e-5)
        np.testing.assert_allclose(g.class_loss_delta, r.class_loss_delta, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "mlp"])
def test_single_unit_sweep_equals_naive_on_every_unit(name):
    model = trained_model(name)
    _, data = digits()
    assert_same_sweep(model, data, AblationEngine(model))


@pytest.mark.parametrize("name", ["lenet5", "mlp"])
def test_suffix_predictions_equal_hooked_full_model(name):
    """Per example, not just per class: every unit's stacked suffix logits match the hooked model."""
    model = trained_model(name)
    _, data = digits()
    x = data.floats(0, 50)
    engine = AblationEngine(model)
    mods = model.probe_modules()
    for layer, n in engine.unit_counts(data).items():
        split = engine.split(layer, x)
        assert isinstance(split, GraphSplit)
        # LeNet-5's conv1 -> pool -> conv2 and conv2 -> pool -> flatten -> fc1 run as weighed channel parts:
        # checked here per example.
        weighed = {("lenet5", "conv1"): torch.nn.Conv2d, ("lenet5", "conv2"): torch.nn.Linear}.get((name, layer))
        assert type(split.weighed) is weighed if weighed else split.weighed is None
        with torch.inference_mode():
            got = split.suffix(split.prefix(x), {layer: 1 - torch.eye(n)}).view(n, len(x), -1)
            for u in range(0, n, max(1, n // 12)):  # every unit is covered per class by the sweep test
                with ZeroUnit(mods[layer], [u]):
                    want = model(x)
                torch.testing.assert_close(got[u], want, rtol=0, atol=1e-5)
                assert torch.equal(got[u].argmax(1), want.argmax(1))


class ChannelConvs(torch.nn.Module):
    """Convolutions after each probe: strided, padded and dilated without a bias (channel parts), with
    reflect padding (stacked: not a sum over zeroed channels), then a linear layer (channel parts)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.relu1 = nn.Conv2d(1, 6, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2, bias=False), nn.ReLU()
        self.conv3, self.relu3 = nn.Conv2d(5, 4, (3, 2), padding=1, padding_mode="reflect"), nn.ReLU()
        self.fc = nn.Linear(4 * 14 * 15, 10)
        self.probes = {"a": "relu1", "b": "relu2", "c": "relu3"}

    def probe_modules(self) -> dict[str, torch.nn.Module]:
        return {name: self.get_submodule(path) for name, path in self.probes.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.relu3(self.conv3(h)).flatten(1))


def test_channel_parts_of_convolutions_and_linear_layers_match_naive():
    """``keep @ channel_parts`` is the layer on the masked input, bias included, for convolutions with
    stride, padding and dilation, with or without a bias; the sweep over every unit equals the hooks'."""
    torch.manual_seed(0)
    model = ChannelConvs().eval()  # initial weights: agreement is what is tested
    _, data = digits()
    data = data.subset(range(150))
    engine = AblationEngine(model)
    weighed = {layer: engine.split(layer, data.floats(0, 2)).weighed for layer in model.probes}
    assert weighed == {"a": model.conv2, "b": None, "c": model.fc}
    h = model.relu1(model.conv1(data.floats(0, 9))).detach()
    keep = (torch.rand(4, 6) > 0.4).float()
    parts = channel_parts(model.conv2, h)
    got = (torch.cat([keep, torch.ones(4, 1)], 1) @ parts).view(4 * 9, 5, 14, 14)
    want = model.conv2((h.unsqueeze(0) * keep.view(4, 1, 6, 1, 1)).reshape(4 * 9, 6, 28, 28))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert_same_sweep(model, data, engine)
    # Parts above the engine's budget / 32 per example stack the layer instead (conv2's 27 KB, not fc's
    # 200 bytes): the same sums.
    small = AblationEngine(model, budget_mb=0.1)
    assert [small.split(layer, data.floats(0, 2)).weighed for layer in ("a", "c")] == [None, model.fc]
    assert_same_sweep(model, data, small)


def test_tiny_memory_budget_gives_the_same_sums():
    """Chunks of 7 examples and one ablation per pass change nothing but the amount of work per pass."""
    model = trained_model("lenet5")
    data = digits()[1].subset(range(60))
    masks = {"conv2": 1 - torch.eye(16)}
    big = AblationEngine(model).evaluate(data, masks)
    small_engine = AblationEngine(model, budget_mb=0.01, chunk=7)
    b, groups = small_engine.plan([small_engine.split("conv2", data.floats(0, 2))], data.floats(0, 2), [16], len(data))
    assert b <= 7 and groups == [1]
    small = small_engine.evaluate(data, masks)
    torch.testing.assert_close(small.hits, big.hits, rtol=0, atol=0)
    torch.testing.assert_close(small.loss, big.loss, rtol=0, atol=1e-4)


def test_residual_suffix_reads_the_skip_tensor_and_matches_naive():
    torch.manual_seed(0)
    model = Residual().eval()  # initial weights: agreement is what is tested
    _, data = digits()
    engine = AblationEngine(model)
    split = engine.split("b", data.floats(0, 2))
    assert isinstance(split, GraphSplit) and len(split.inputs) == 2  # relu2's output and the skip from relu1
    assert_same_sweep(model, data, engine)


def test_untraceable_model_falls_back_to_hooks_and_matches_naive():
    model = untraceable_lenet()
    data = digits()[1].subset(range(100))
    engine = AblationEngine(model)
    assert engine.traced is None
    assert isinstance(engine.split("conv2", data.floats(0, 2)), WholeModel)
    sums = engine.evaluate(data, {"conv2": 1 - torch.eye(16)})
    for u in range(16):
        want = naive_outcome(model, data, {"conv2": [u]})
        got = sums.outcome(u)
        assert got.accuracy == pytest.approx(want.accuracy, abs=1e-12)
        np.testing.assert_allclose(got.class_accuracy, want.class_accuracy, rtol=0, atol=1e-12)
        assert got.loss == pytest.approx(want.loss, abs=1e-5)


@pytest.mark.parametrize("factory", [lambda: trained_model("lenet5"), lambda: untraceable_lenet()])
def test_units_of_two_layers_together_match_naive(factory):
    model = factory()
    _, data = digits()
    units = {"conv2": [1, 5], "fc2": [0, 3, 83]}
    masks = {}
    for layer, n in (("conv2", 16), ("fc2", 84)):
        masks[layer] = torch.ones(1, n)
        masks[layer][0, units[layer]] = 0
    got = AblationEngine(model).evaluate(data, masks).outcome(0)
    want = naive_outcome(model, data, units)
    assert got.accuracy == pytest.approx(want.accuracy, abs=1e-12)
    np.testing.assert_allclose(got.class_accuracy, want.class_accuracy, rtol=0, atol=1e-12)
    assert got.loss == pytest.approx(want.loss, abs=1e-5)


def test_bad_masks_are_named():
    model = trained_model("mlp")
    _, data = digits()
    engine = AblationEngine(model)
    with pytest.raises(ConfigError, match="unknown layers.*conv9"):
        engine.evaluate(data, {"conv9": torch.ones(1, 3)})
    with pytest.raises(ConfigError, match="disagree on the number of ablations"):
        engine.evaluate(data, {"fc1": torch.ones(2, 128), "fc2": torch.ones(3, 128)})
    with pytest.raises(ConfigError, match="no layer to ablate"):
        engine.evaluate(data, {})


def test_suffix_macs_count_what_follows_each_layer():
    model = trained_model("mlp")
    _, data = digits()
    macs = AblationEngine(model).suffix_macs(data)
    # After fc1's ReLU: the 128x128 hidden layer and the 128x10 output; after fc2's: the output only.
    assert macs == {"fc1": 128 * 128 + 128 * 10, "fc2": 128 * 10}


def test_chunked_one_channel_convs_equal_the_whole_batch_and_are_undone():
    """A one-channel convolution in chunks of ``CHUNK`` examples gives the whole batch's outputs and
    input gradient, float for float; ``fast_convs`` swaps only while it runs, and only such convs."""
    from compute.nets.convs import CHUNK, fast_convs

    torch.manual_seed(0)
    model = trained_model("lenet5")
    x = torch.rand(2 * CHUNK + 37, 1, 28, 28)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(len(x), 10)
    want = model(a)
    (want * g).sum().backward()
    with fast_convs(model):
        assert "forward" in model.conv1.__dict__ and "forward" not in model.conv2.__dict__
        got = model(b)
        (got * g).sum().backward()
    assert torch.equal(got, want) and torch.equal(b.grad, a.grad)
    assert "forward" not in model.conv1.__dict__


def test_fast_pooling_equals_torch_pooling_and_is_undone():
    """Four strided maxima give max_pool2d's values (odd sizes: the last row and column dropped) and
    its gradient, ties included (rounded inputs make equal maxima common: the whole gradient goes to the
    first, as torch's kernel sends it); ``fast_pools`` swaps a model's 2x2 pools only while it runs."""
    import torch.nn.functional as F

    from compute.nets.pools import fast_pools, max_pool_2x2

    torch.manual_seed(0)
    x = torch.randn(3, 4, 11, 10)
    assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))
    ties = x.round()
    windows = ties[..., :10, :10].unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert ((windows == windows.amax(-1, keepdim=True)).sum(-1) > 1).any()  # some windows hold equal maxima
    for inputs in (x, ties):
        a, b = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
        g = torch.randn(3, 4, 5, 5)
        (F.max_pool2d(a, 2) * g).sum().backward()
        (max_pool_2x2(b) * g).sum().backward()
        assert torch.equal(b.grad, a.grad)
        assert b.grad.count_nonzero() == g.numel()  # one element of each window, none of the odd last column
    model = trained_model("lenet5")
    digits_x = digits()[1].floats(0, 20)
    with torch.no_grad():
        want = model(digits_x)
        with fast_pools(model):
            assert model.pool1.forward is max_pool_2x2
            got = model(digits_x)
    assert torch.equal(got, want) and "forward" not in model.pool1.__dict__
