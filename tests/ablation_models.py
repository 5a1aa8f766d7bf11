"""Small real models for the ablation tests: trained briefly on the bundled MNIST digits, plus a
residual net and an untraceable net that exercise the graph split and its fallback."""

from __future__ import annotations

from contextlib import ExitStack
from functools import lru_cache

import torch
from torch import nn

from compute.ablation.outcome import Outcome, outcome
from compute.datasets.sources import ImageSet, load_dataset, stratified_subset
from compute.nets.models import LeNet5, ModelSpec, ProbedModel, build_model
from compute.nets.probe import ZeroUnit
from compute.measure.train import TrainConfig, train
from compute.threads import torch_threads


@lru_cache(maxsize=1)
def digits() -> tuple[ImageSet, ImageSet]:
    """(1000 training digits, 300 evaluation digits), stratified."""
    splits = load_dataset("mnist-5k")
    return stratified_subset(splits.train, 1000), stratified_subset(splits.test, 300)


def trained(model: ProbedModel) -> ProbedModel:
    """Three epochs on the 1000 digits (about 85-90% accuracy): curves need a model worth ablating."""
    train_set, eval_set = digits()
    with torch_threads(1):  # small batches: one thread is as fast, and far faster on a busy machine
        train(model, model.probe_modules(), train_set, eval_set, TrainConfig(epochs=3, seed=0, batch_size=32))
    return model.eval()


@lru_cache(maxsize=4)
def trained_model(name: str) -> ProbedModel:
    torch.manual_seed(0)
    return trained(build_model(ModelSpec(name, (1, 28, 28), 10)))


class Residual(ProbedModel):
    """conv-ReLU, conv-ReLU, plus a skip from the first ReLU: the second layer's suffix reads an earlier tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, 10)
        self.probes = {"a": "relu1", "b": "relu2"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a))
        return self.fc(self.pool(b + a).flatten(1))


class Untraceable(LeNet5):
    """LeNet-5 whose forward branches on data, which torch.fx cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            x = -x
        return super().forward(x)


def naive_outcome(model: ProbedModel, data: ImageSet, units: dict[str, list[int]]) -> Outcome:
    """The reference: hooks zeroing every listed unit, one full evaluation pass."""
    mods = model.probe_modules()
    with ExitStack() as stack:
        for layer, us in units.items():
            stack.enter_context(ZeroUnit(mods[layer], us))
        return outcome(model, data)
