"""What a run reads: its device and its data, as its configuration names them."""

from __future__ import annotations

from pathlib import Path

import torch

from compute.datasets.sources import (ImageSet, Splits, load_dataset, load_eval_set, require_classes, stratified_subset,
                                      with_label_noise)
from compute.errors import ConfigError, DataError
from compute.run.config import RunConfig


def check_device(name: str) -> str:
    """``name`` if torch can compute on it here; an error naming the fix otherwise."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown --device {name!r}; choose cpu or cuda.")
    return name


def load_data(cfg: RunConfig) -> tuple[Splits, ImageSet]:
    """The run's training/test splits (training subset applied) and its evaluation set."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir is not None else None
    splits = load_dataset(cfg.dataset, data_dir)
    train_set = stratified_subset(splits.train, cfg.train_size) if cfg.train_size else splits.train
    train_set = with_label_noise(train_set, cfg.label_noise, cfg.seed)
    eval_set = load_eval_set(cfg.eval_dataset, data_dir, splits.train.class_names) if cfg.eval_dataset else splits.test
    if cfg.eval_size:
        eval_set = stratified_subset(eval_set, cfg.eval_size)
    require_classes(eval_set)  # the statistics compare classes on the evaluation set
    if eval_set.shape != train_set.shape:
        raise DataError(f"--eval-dataset {cfg.eval_dataset} has images of shape {eval_set.shape}; the model is "
                        f"trained on {cfg.dataset} images of shape {train_set.shape}.")
    return Splits(train_set, splits.test), eval_set
