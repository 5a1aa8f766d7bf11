"""Training batches and model sizes that batch norm can take: a last batch of one example, a 1x1 map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compute.datasets.sources import load_dataset
from compute.errors import ConfigError
from compute.measure.train import TrainConfig, batch_bounds, has_batch_norm, train
from compute.nets.models import ModelSpec, ProbedModel, activation, build_model


class NormedMLP(ProbedModel):
    """fc -> batch norm -> ReLU -> fc: batch norm over 8 values per channel-less example refuses a batch of one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.relu1, self.fc2 = nn.Linear(784, 8), nn.BatchNorm1d(8), activation(), nn.Linear(8, 10)
        self.probes = {"fc1": "relu1"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu1(self.bn(self.fc1(x.flatten(1)))))


def test_batch_bounds_join_a_last_single_example_only_for_batch_norm():
    assert batch_bounds(65, 64, False) == [(0, 64), (64, 65)]
    assert batch_bounds(65, 64, True) == [(0, 65)]
    assert batch_bounds(129, 64, True) == [(0, 64), (64, 129)]
    assert batch_bounds(66, 64, True) == [(0, 64), (64, 66)] and batch_bounds(1, 64, True) == [(0, 1)]


def test_a_batch_norm_model_trains_when_the_last_batch_holds_one_example():
    """This raised torch's "Expected more than 1 value per channel when training" as a traceback."""
    data = load_dataset("mnist-5k").test
    data = data.subset(torch.arange(65))
    torch.manual_seed(0)
    model = NormedMLP()
    assert has_batch_norm(model) and not has_batch_norm(build_model(ModelSpec("lenet5", (1, 28, 28), 10)))
    result = train(model, model.probe_modules(), data, data, TrainConfig(epochs=1, seed=0, batch_size=64))
    assert int(result.counts.sum()) == 65 and result.history[0]["train_loss"] > 0


def test_a_batch_norm_model_on_images_too_small_is_one_paragraph():
    """Sizing a model ran its batch norms in training mode on one example: a ValueError traceback."""
    with pytest.raises(ConfigError, match="model cifar-convnet cannot take images of 1x1x1 .* Resize the images"):
        build_model(ModelSpec("cifar-convnet", (1, 1, 1), 2))
