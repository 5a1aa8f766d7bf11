"""Training with the gradient signal of every unit recorded per epoch and class.

The record is what the neuron-specialization analysis needs: for each epoch, unit and class, the
mean pre-ReLU activation, the mean post-ReLU activation, and the two gradient signals per example,
summed over positions (``compute.measure.stats.unit_scalars``): what the loss asks of the unit
(-dLoss/d(post-ReLU activity)) and the training signal that reaches it (-dLoss/d(pre-activation)),
averaged over that epoch's examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compute.datasets.sources import ImageSet
from compute.errors import TrainingError
from compute.nets.convs import fast_convs
from compute.nets.pools import fast_pools
from compute.nets.probe import Probe
from compute.progress import bar
from compute.measure.stats import ClassSums, unit_scalars

TRACE_FIELDS = ("act", "rect", "grad", "tgrad")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    seed: int
    batch_size: int = 64
    lr: float = 1e-3
    until_train_acc: float | None = None  # stop once an epoch's training accuracy reaches this


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batch_bounds(n: int, batch_size: int, batch_norm: bool) -> list[tuple[int, int]]:
    """(start, stop) of each training batch. With batch norm a last batch of one example is joined to the
    one before: batch norm cannot train on one example of a 1x1 map (torchvision models on small
    images), and the other batches are unchanged."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if batch_norm and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@dataclass
class TrainResult:
    # layer -> field -> (epochs, classes, units) class means over each epoch's examples
    trace: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    counts: np.ndarray | None = None  # (epochs, classes) examples seen per class per epoch
    history: list[dict[str, float]] = field(default_factory=list)


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1000, device: str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
    loss, correct = evaluation_sums(model, data, batch_size, device)
    return loss / len(data), correct / len(data)


@torch.no_grad()
def evaluation_sums(model: nn.Module, data: ImageSet, batch_size: int = 1000,
                    device: str = "cpu") -> tuple[float, int]:
    """(summed cross-entropy loss, correct predictions) of ``model`` on ``data``: sums, so that shards
    of a dataset add up (``compute.distributed.work.evaluate``)."""
    model.eval()
    loss, correct = 0.0, 0
    with fast_pools(model), fast_convs(model):  # the same values, faster (compute/nets/pools.py, convs.py)
        for start in range(0, len(data), batch_size):
            x = data.floats(start, start + batch_size, device)
            y = data.labels[start:start + batch_size].to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return loss, correct


EpochHook = Callable[[dict[str, Any]], None]


def train(model: nn.Module, probes: dict[str, nn.Module], train_set: ImageSet, test_set: ImageSet,
          cfg: TrainConfig, device: str = "cpu", resume_from: dict[str, Any] | None = None,
          on_epoch: EpochHook | None = None) -> TrainResult:
    """Train with Adam on mean cross-entropy, recording every probed unit's trace.

    After each epoch ``on_epoch`` receives the full training state (weights, optimizer, batch-order
    generator, trace so far); passing that state back as ``resume_from`` continues training
    exactly where it stopped, giving the same result as an uninterrupted run.
    """
    if cfg.epochs < 1:
        raise TrainingError(f"--epochs must be at least 1, got {cfg.epochs}.")
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    result = TrainResult()
    traces: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in probes}
    counts: list[np.ndarray] = []
    first = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        opt.load_state_dict(resume_from["optimizer"])
        gen.set_state(resume_from["generator"])
        traces, counts, result.history = resume_from["traces"], resume_from["counts"], resume_from["history"]
        first = cfg.epochs if resume_from.get("done") else resume_from["epoch"]
    bounds = batch_bounds(len(train_set), cfg.batch_size, has_batch_norm(model))
    n_batches = len(bounds)
    images, labels = train_set.images.to(device), train_set.labels.to(device)  # copied once, not per batch
    progress = bar(None, "training", unit="batch", total=cfg.epochs * n_batches, initial=first * n_batches)
    for epoch in range(first, cfg.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen).to(device)
        sums: dict[str, ClassSums] = {}
        loss_t = torch.zeros((), dtype=torch.float64, device=device)  # on the device: no synchronisation per step
        correct_t = torch.zeros((), dtype=torch.long, device=device)
        with Probe(probes, keep_grad=True) as probe:
            for b in range(n_batches):
                progress.update()
                idx = order[bounds[b][0]:bounds[b][1]]
                x = images[idx].to(torch.float32).div_(255.0)
                y = labels[idx]
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"training diverged: loss is {float(loss)} at epoch {epoch + 1}, batch {b + 1}. "
                        f"Lower the learning rate (--lr, now {cfg.lr}) or check the data for NaN/inf."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for name in probes:
                    # The mean loss scales each example's gradient by 1/B; undo it to get dLoss_n/da.
                    s = unit_scalars(probe.pre[name], probe.post[name], probe.grad(name) * len(idx), TRACE_FIELDS,
                                     probes[name])
                    if name not in sums:
                        sums[name] = ClassSums.zeros(train_set.n_classes, s["act"].shape[1], TRACE_FIELDS, y.device)
                    sums[name].add(y, s)
                opt.step()
                loss_t += loss.detach().double() * len(idx)
                correct_t += (logits.argmax(1) == y).sum()
        for name, cs in sums.items():
            traces[name].append(cs.class_means())
        counts.append(next(iter(sums.values())).counts.cpu().numpy())
        loss_sum, correct = float(loss_t), int(correct_t)
        test_loss, test_acc = evaluate(model, test_set, device=device)
        result.history.append({
            "epoch": epoch + 1, "train_loss": loss_sum / len(train_set), "train_acc": correct / len(train_set),
            "test_loss": test_loss, "test_acc": test_acc,
        })
        progress.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / len(train_set):.3f}", test_acc=f"{test_acc:.3f}")
        # Running accuracy over the epoch's steps: it trails the end-of-epoch accuracy, so this stops late, never early.
        done = cfg.until_train_acc is not None and correct / len(train_set) >= cfg.until_train_acc
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "generator": gen.get_state(), "traces": traces, "counts": counts, "history": result.history,
                      "done": done})
        if done:
            break
    progress.close()
    result.trace = {name: {f: np.stack([t[f] for t in ts]) for f in TRACE_FIELDS} for name, ts in traces.items()}
    result.counts = np.stack(counts)
    return result
