"""One compute run, end to end: data, training, statistics, ablation, then a published run.

Stages write nothing until the end; the warehouse run is staged and published whole, so an
interrupted run leaves no trace in the warehouse.
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compute.ablation import LayerAblation
from compute.curves import UnitScores, ablation_curves
from compute.data import ImageSet, Splits, load_dataset, load_eval_set, stratified_subset
from compute.engine import AblationEngine
from compute.errors import ConfigError
from compute.models import ModelSpec, ProbedModel, build_model, save_checkpoint
from compute.probe import Probe
from compute.stats import EvalStats, anomaly, evaluation_stats, selectivity
from compute.train import TrainConfig, TrainResult, evaluate, train
from warehouse.schema import SCHEMA_VERSION
from warehouse.store import RunWriter, check_run_id

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run; stored as JSON in ``runs.config``."""

    model: str = "lenet5"
    dataset: str = "mnist-5k"
    epochs: int = 12
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    data_dir: str | None = None
    eval_dataset: str | None = None
    train_size: int | None = None
    eval_size: int | None = None
    widths: tuple[int, ...] = (128, 128)
    width: float = 0.25
    device: str = "cpu"
    run_id: str | None = None
    train_curves: bool = False  # also draw the ablation curves on the training set

    def model_options(self) -> dict[str, Any]:
        if self.model == "mlp":
            return {"widths": list(self.widths)}
        if self.model == "cifar-convnet":
            return {"width": self.width}
        return {}


@dataclass
class RunSummary:
    run_id: str
    path: Path
    figures: dict[str, float] = field(default_factory=dict)


def default_run_id(cfg: RunConfig) -> str:
    data = re.sub(r"[^A-Za-z0-9]+", "-", Path(cfg.dataset.removeprefix("idx:")).name or cfg.dataset).strip("-")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model}-{data}-s{cfg.seed}-{stamp}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "pyarrow", "duckdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown --device {name!r}; choose cpu or cuda.")
    return name


def _layer_shapes(model: ProbedModel, in_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    with torch.no_grad(), Probe(model.probe_modules()) as probe:
        model.eval()(torch.zeros(1, *in_shape))
    return {name: tuple(t.shape[1:]) for name, t in probe.post.items()}


def load_data(cfg: RunConfig) -> tuple[Splits, ImageSet]:
    """The run's training/test splits (training subset applied) and its evaluation set."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    splits = load_dataset(cfg.dataset, data_dir)
    train_set = stratified_subset(splits.train, cfg.train_size) if cfg.train_size else splits.train
    eval_set = load_eval_set(cfg.eval_dataset, data_dir, splits.train.class_names) if cfg.eval_dataset else splits.test
    if cfg.eval_size:
        eval_set = stratified_subset(eval_set, cfg.eval_size)
    return Splits(train_set, splits.test), eval_set


def _unit_tables(run_id: str, layer_order: list[str], stats: EvalStats, ablations: dict[str, LayerAblation],
                 class_names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, list]]:
    units: dict[str, list] = {c: [] for c in (
        "run_id", "layer", "layer_index", "unit", "mean_act", "mean_rect", "max_act", "frac_active", "dead",
        "selectivity", "pref_class", "pref_class_name", "mu_max", "mu_rest", "grad_mean", "grad_abs_mean",
        "taylor", "taylor_norm", "abl_acc_delta", "abl_loss_delta", "anomaly_max", "anomaly_class")}
    classes: dict[str, list] = {c: [] for c in (
        "run_id", "layer", "unit", "class", "class_name", "n", "mean_act", "mean_rect", "grad_mean",
        "grad_abs_mean", "taylor", "frac_active", "anomaly", "abl_acc_delta", "abl_loss_delta")}
    k = len(class_names)
    for li, name in enumerate(layer_order):
        ls, ab = stats.layers[name], ablations[name]
        cm, ov = ls.class_means, ls.overall
        n_units = cm["rect"].shape[1]
        sel = selectivity(cm["rect"])
        anom = anomaly(cm["grad"], cm["act"])  # (K, U)
        taylor_norm = ov["taylor"] / (np.linalg.norm(ov["taylor"]) or 1.0)
        best = np.argmax(anom, axis=0)
        units["run_id"] += [run_id] * n_units
        units["layer"] += [name] * n_units
        units["layer_index"] += [li] * n_units
        units["unit"] += list(range(n_units))
        for col, values in (("mean_act", ov["act"]), ("mean_rect", ov["rect"]), ("max_act", ls.max_act),
                            ("frac_active", ov["active"]), ("selectivity", sel["selectivity"]),
                            ("pref_class", sel["pref_class"]), ("mu_max", sel["mu_max"]), ("mu_rest", sel["mu_rest"]),
                            ("grad_mean", ov["grad"]), ("grad_abs_mean", ov["grad_abs"]), ("taylor", ov["taylor"]),
                            ("taylor_norm", taylor_norm), ("abl_acc_delta", ab.acc_delta),
                            ("abl_loss_delta", ab.loss_delta), ("anomaly_max", anom.max(axis=0)),
                            ("anomaly_class", best)):
            units[col] += values.tolist()
        units["dead"] += (ov["active"] == 0).tolist()
        units["pref_class_name"] += [class_names[c] for c in sel["pref_class"]]
        # unit_classes rows: unit-major, class-minor.
        classes["run_id"] += [run_id] * (n_units * k)
        classes["layer"] += [name] * (n_units * k)
        classes["unit"] += np.repeat(np.arange(n_units), k).tolist()
        classes["class"] += np.tile(np.arange(k), n_units).tolist()
        classes["class_name"] += list(class_names) * n_units
        classes["n"] += np.tile(ls.counts, n_units).astype(np.int64).tolist()
        for col, field_ in (("mean_act", "act"), ("mean_rect", "rect"), ("grad_mean", "grad"),
                            ("grad_abs_mean", "grad_abs"), ("taylor", "taylor"), ("frac_active", "active")):
            classes[col] += cm[field_].T.ravel().tolist()
        classes["anomaly"] += anom.T.ravel().tolist()
        classes["abl_acc_delta"] += ab.class_acc_delta.ravel().tolist()
        classes["abl_loss_delta"] += ab.class_loss_delta.ravel().tolist()
    return units, classes


def _trace_table(run_id: str, result: TrainResult, class_names: tuple[str, ...]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in (
        "run_id", "epoch", "layer", "unit", "class", "class_name", "n", "mean_act", "mean_rect", "grad_mean")}
    assert result.counts is not None
    for name, fields in result.trace.items():
        e, k, u = fields["act"].shape
        rows = e * k * u
        cols["run_id"] += [run_id] * rows
        cols["layer"] += [name] * rows
        # Rows in (epoch, unit, class) order: arrays are (E, K, U), so move classes last.
        cols["epoch"] += np.repeat(np.arange(1, e + 1), u * k).tolist()
        cols["unit"] += np.tile(np.repeat(np.arange(u), k), e).tolist()
        cols["class"] += np.tile(np.arange(k), e * u).tolist()
        cols["class_name"] += list(class_names) * (e * u)
        cols["n"] += np.broadcast_to(result.counts[:, None, :], (e, u, k)).astype(np.int64).ravel().tolist()
        for col, f in (("mean_act", "act"), ("mean_rect", "rect"), ("grad_mean", "grad")):
            cols[col] += fields[f].transpose(0, 2, 1).ravel().tolist()
    return cols


def compute_run(cfg: RunConfig, warehouse_root: Path) -> RunSummary:
    """Train, probe and ablate one model, then publish the run into ``warehouse_root``."""
    started = time.perf_counter()
    device = _device(cfg.device)
    run_id = check_run_id(cfg.run_id or default_run_id(cfg))
    # Open the writer first: a bad warehouse or a taken run id fails before minutes of training.
    with RunWriter(warehouse_root, run_id) as writer:
        splits, eval_set = load_data(cfg)
        torch.manual_seed(cfg.seed)
        spec = ModelSpec(cfg.model, splits.train.shape, splits.train.n_classes, cfg.model_options())
        model = build_model(spec).to(device)
        probes = model.probe_modules()
        shapes = _layer_shapes(model, spec.in_shape)
        tcfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, lr=cfg.lr)
        trained = train(model, probes, splits.train, splits.test, tcfg, device)
        train_loss, train_acc = evaluate(model, splits.train, device=device)
        test_loss, test_acc = evaluate(model, splits.test, device=device)
        stats = evaluation_stats(model, probes, eval_set, device=device)
        engine = AblationEngine(model, device=device)
        base, ablations = engine.single_unit(eval_set)

        names = splits.train.class_names
        layer_order = list(probes)
        units, classes = _unit_tables(run_id, layer_order, stats, ablations, names)
        writer.write_table("units", units)
        writer.write_table("unit_classes", classes)
        writer.write_table("train_trace", _trace_table(run_id, trained, names))
        scores = {n: UnitScores(selectivity(stats.layers[n].class_means["rect"])["selectivity"], ablations[n].loss_delta)
                  for n in layer_order}
        # Orders come from the evaluation set's scores on both splits, so the curves are comparable.
        curves, aucs = ablation_curves(engine, eval_set, scores, run_id, "eval")
        if cfg.train_curves:
            train_curves, train_aucs = ablation_curves(engine, splits.train, scores, run_id, "train")
            curves = {c: curves[c] + train_curves[c] for c in curves}
            aucs = {c: aucs[c] + train_aucs[c] for c in aucs}
        writer.write_table("ablation_curves", curves)
        writer.write_table("ablation_auc", aucs)
        writer.write_table("layers", {
            "run_id": [run_id] * len(layer_order),
            "layer": layer_order,
            "layer_index": list(range(len(layer_order))),
            "kind": ["conv" if len(shapes[n]) == 3 else "linear" for n in layer_order],
            "n_units": [shapes[n][0] for n in layer_order],
            "shape": [list(shapes[n]) for n in layer_order],
            "probe": [f"output of {model.probes[n]} (ReLU)" for n in layer_order],
        })
        writer.write_table("epochs", {
            "run_id": [run_id] * len(trained.history),
            **{c: [h[c] for h in trained.history] for c in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")},
        })
        save_checkpoint(model.cpu(), spec, writer.file(CHECKPOINT))
        versions = _versions()
        config = {**asdict(cfg), "run_id": run_id, "model_spec": spec.to_dict()}
        duration = time.perf_counter() - started
        writer.write_table("runs", {
            "run_id": [run_id], "created_at": [datetime.now(timezone.utc)], "schema_version": [SCHEMA_VERSION],
            "model": [cfg.model], "dataset": [cfg.dataset], "eval_dataset": [cfg.eval_dataset or f"{cfg.dataset} (test split)"],
            "n_train": [len(splits.train)], "n_test": [len(splits.test)], "n_eval": [len(eval_set)],
            "n_classes": [len(names)], "class_names": [list(names)], "seed": [cfg.seed], "epochs": [cfg.epochs],
            "batch_size": [cfg.batch_size], "lr": [cfg.lr], "label_noise": [0.0],
            "train_loss": [train_loss], "train_acc": [train_acc], "test_loss": [test_loss], "test_acc": [test_acc],
            "eval_loss": [base.loss], "eval_acc": [base.accuracy], "duration_s": [duration], "device": [device],
            "torch_version": [versions["torch"]], "package_versions": [json.dumps(versions)],
            "config": [json.dumps(config, default=list)], "checkpoint": [CHECKPOINT],
        })
        path = writer.publish({"model": cfg.model, "dataset": cfg.dataset})
    figures = {"train_acc": train_acc, "test_acc": test_acc, "eval_acc": base.accuracy, "eval_loss": base.loss,
               "units": float(len(units["unit"])), "duration_s": duration}
    return RunSummary(run_id, path, figures)
