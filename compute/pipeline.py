"""One compute run, end to end: data, training, statistics, ablation, images, then a published run.

Stages write nothing until the end; the warehouse run is staged and published whole, so an
interrupted run leaves no trace in the warehouse.
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compute.ablation import LayerAblation
from compute.curves import UnitScores, ablation_curves
from compute.data import ImageSet, Splits, load_dataset, load_eval_set, stratified_subset, with_label_noise
from compute.engine import AblationEngine
from compute.errors import ConfigError, DataError
from compute.discover import ProbedGraph, select_layers
from compute.image_config import ActMaxConfig, ImageConfig
from compute.models import ModelSpec, ProbedModel, build_model, load_weights, save_checkpoint
from compute.probe import Probe
from compute.stages import StageStore
from compute.stats import EvalStats, anomaly, evaluation_stats, selectivity, strongest_anomaly
from compute.train import TrainConfig, TrainResult, evaluate, train
from compute.unit_images import COLUMNS as IMAGE_COLUMNS
from compute.unit_images import ROW_GROUP_ROWS, unit_images
from warehouse.schema import SCHEMA_VERSION
from warehouse.faults import crash_point
from warehouse.store import RunWriter, check_run_id, write_file

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
    label_noise: float = 0.0  # fraction of training labels replaced by random ones
    until_train_acc: float | None = None  # train until this training accuracy, with `epochs` as the cap
    experiment: str | None = None  # groups the runs of a sweep
    layers: tuple[str, ...] | None = None  # names or glob patterns; None = every probe point
    checkpoint: str | None = None  # trained weights to load instead of (or before) training
    images: ImageConfig | None = field(default_factory=ImageConfig)  # None: no unit_images rows
    train_curves: bool = False  # also draw the ablation curves on the training set (training labels)

    @staticmethod
    def from_dict(stored: dict[str, Any]) -> RunConfig:
        """The config saved as JSON (``runs.config``, a run's stage folder); unknown keys are ignored."""
        values = {k: v for k, v in stored.items() if k in {f.name for f in fields(RunConfig)}}
        values["widths"] = tuple(values.get("widths", ()))
        values["layers"] = tuple(values["layers"]) if values.get("layers") else None
        img = values.get("images")
        values["images"] = ImageConfig(img["top_k"], ActMaxConfig(**img["actmax"])) if img else None
        return RunConfig(**values)

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


def layer_shapes(model: ProbedModel, in_shape: tuple[int, int, int], device: str = "cpu") -> dict[str, tuple[int, ...]]:
    """Activation shape of one example at each probe point: (C, H, W) for conv, (U,) for linear layers."""
    with torch.no_grad(), Probe(model.probe_modules()) as probe:
        model.eval()(torch.zeros(1, *in_shape, device=device))
    return {name: tuple(t.shape[1:]) for name, t in probe.post.items()}


def load_data(cfg: RunConfig) -> tuple[Splits, ImageSet]:
    """The run's training/test splits (training subset applied) and its evaluation set."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    splits = load_dataset(cfg.dataset, data_dir)
    train_set = stratified_subset(splits.train, cfg.train_size) if cfg.train_size else splits.train
    train_set = with_label_noise(train_set, cfg.label_noise, cfg.seed)
    eval_set = load_eval_set(cfg.eval_dataset, data_dir, splits.train.class_names) if cfg.eval_dataset else splits.test
    if cfg.eval_size:
        eval_set = stratified_subset(eval_set, cfg.eval_size)
    if eval_set.shape != train_set.shape:
        raise DataError(f"--eval-dataset {cfg.eval_dataset} has images of shape {eval_set.shape}; the model is "
                        f"trained on {cfg.dataset} images of shape {train_set.shape}.")
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
        anom_max, best = strongest_anomaly(anom)
        units["run_id"] += [run_id] * n_units
        units["layer"] += [name] * n_units
        units["layer_index"] += [li] * n_units
        units["unit"] += list(range(n_units))
        for col, values in (("mean_act", ov["act"]), ("mean_rect", ov["rect"]), ("max_act", ls.max_act),
                            ("frac_active", ov["active"]), ("selectivity", sel["selectivity"]),
                            ("pref_class", sel["pref_class"]), ("mu_max", sel["mu_max"]), ("mu_rest", sel["mu_rest"]),
                            ("grad_mean", ov["grad"]), ("grad_abs_mean", ov["grad_abs"]), ("taylor", ov["taylor"]),
                            ("taylor_norm", taylor_norm), ("abl_acc_delta", ab.acc_delta),
                            ("abl_loss_delta", ab.loss_delta), ("anomaly_max", anom_max),
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
    for name, fields in result.trace.items():  # empty when nothing was trained (--epochs 0)
        assert result.counts is not None
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


def settle_config(cfg: RunConfig, run_id: str, stages_dir: Path, resume: bool) -> RunConfig:
    """The run's configuration: saved at the start, and read back (not re-taken) on resume."""
    path = stages_dir / "config.json"
    if resume and path.exists():
        return RunConfig.from_dict(json.loads(path.read_text()))
    cfg = replace(cfg, run_id=run_id)
    stages_dir.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(asdict(cfg)).encode(), "the run's configuration")
    return cfg


def _train_stage(model: ProbedModel, probes: dict, splits: Splits, cfg: RunConfig, stages: StageStore,
                 device: str) -> dict[str, Any]:
    """Train with an epoch-level checkpoint in the stage store, so a killed run loses one epoch at most.

    With ``epochs == 0`` (an already trained model) nothing is trained and the trace is empty.
    """
    def checkpoint(state: dict[str, Any]) -> None:
        stages.save("train-epoch", state)
        crash_point(f"epoch-{state['epoch']}")

    trained = TrainResult()
    if cfg.epochs > 0:
        tcfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, lr=cfg.lr,
                           until_train_acc=cfg.until_train_acc)
        resume_from = stages.load("train-epoch")
        trained = train(model, probes, splits.train, splits.test, tcfg, device, resume_from, checkpoint)  # type: ignore[arg-type]
    return {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "result": trained}


def _curves(engine: AblationEngine, stats: EvalStats, ablations: dict[str, LayerAblation], eval_set: ImageSet,
            train_set: ImageSet, run_id: str, on_train: bool) -> tuple[dict[str, list], dict[str, list]]:
    """Cumulative ablation curves and their areas on the evaluation set (and the training set)."""
    scores = {n: UnitScores(selectivity(stats.layers[n].class_means["rect"])["selectivity"], ablations[n].loss_delta)
              for n in ablations}
    # Orders come from the evaluation set's scores on both splits, so the curves are comparable.
    curves, aucs = ablation_curves(engine, eval_set, scores, run_id, "eval")
    if on_train:
        train_curves, train_aucs = ablation_curves(engine, train_set, scores, run_id, "train")
        curves = {c: curves[c] + train_curves[c] for c in curves}
        aucs = {c: aucs[c] + train_aucs[c] for c in aucs}
    return curves, aucs


def _probe_description(model: ProbedModel, layer: str) -> str:
    if isinstance(model, ProbedGraph):
        return f"output of ReLU call site `{layer}` (traced; its input is the pre-activation)"
    return f"output of ReLU module `{model.probes[layer]}` (its input is the pre-activation)"


def compute_run(cfg: RunConfig, warehouse_root: Path, resume: bool = False) -> RunSummary:
    """Train (or load), probe and ablate a model by name, then publish the run into ``warehouse_root``.

    Finished stages are kept in the run's staging folder; with ``resume`` an interrupted run
    (same ``run_id``) continues from its last finished stage under its saved configuration.
    """
    started = time.perf_counter()
    if cfg.images is not None:
        cfg.images.check()
    run_id = check_run_id(cfg.run_id or default_run_id(cfg))
    # Open the writer first: a bad warehouse or a taken run id fails before minutes of training.
    with RunWriter(warehouse_root, run_id, resume=resume) as writer:
        cfg = settle_config(cfg, run_id, writer.stages_dir, resume)
        if cfg.epochs == 0 and not cfg.checkpoint:
            raise ConfigError("--epochs 0 (no training) needs --checkpoint with trained weights.")
        splits, eval_set = load_data(cfg)
        crash_point("after-load")
        torch.manual_seed(cfg.seed)
        spec = ModelSpec(cfg.model, splits.train.shape, splits.train.n_classes, cfg.model_options())
        model = build_model(spec)
        if cfg.checkpoint:
            load_weights(model, Path(cfg.checkpoint))
        return analyze_into(writer, model, spec, splits, eval_set, cfg, started)


def analyze_into(writer: RunWriter, model: ProbedModel, spec: ModelSpec | None, splits: Splits,
                 eval_set: ImageSet, cfg: RunConfig, started: float) -> RunSummary:
    """Every stage on a built model and loaded data, written through ``writer`` and published.

    ``spec`` rebuilds the model from its name when the checkpoint is reloaded; None means a model
    given from Python, saved whole instead.
    """
    run_id = writer.run_id
    device = _device(cfg.device)
    model.probes = select_layers(model.probes, list(cfg.layers) if cfg.layers else None)
    model = model.to(device)
    stages = StageStore(writer.stages_dir)
    probes = model.probe_modules()
    shapes = layer_shapes(model, splits.train.shape, device)
    trained_stage = stages.run("train", lambda: _train_stage(model, probes, splits, cfg, stages, device))
    model.load_state_dict(trained_stage["model"])
    trained: TrainResult = trained_stage["result"]
    train_loss, train_acc, test_loss, test_acc = stages.run("evaluate", lambda: (
        *evaluate(model, splits.train, device=device), *evaluate(model, splits.test, device=device)))
    stats = stages.run("statistics", lambda: evaluation_stats(model, probes, eval_set, device=device))
    engine = AblationEngine(model, device=device)
    base, ablations = stages.run("ablation", lambda: engine.single_unit(eval_set))
    curves, aucs = stages.run("curves", lambda: _curves(engine, stats, ablations, eval_set, splits.train, run_id,
                                                        cfg.train_curves))
    images, image_seconds = stages.run("images", lambda: (
        unit_images(run_id, model, probes, eval_set, splits.train, cfg.images, device) if cfg.images is not None
        else ({c: [] for c in IMAGE_COLUMNS}, {})))
    writer.write_table("unit_images", images, row_group_size=ROW_GROUP_ROWS)

    names = splits.train.class_names
    layer_order = list(probes)
    units, classes = _unit_tables(run_id, layer_order, stats, ablations, names)
    writer.write_table("units", units)
    crash_point("after-table-units")
    writer.write_table("unit_classes", classes)
    writer.write_table("train_trace", _trace_table(run_id, trained, names))
    writer.write_table("ablation_curves", curves)
    writer.write_table("ablation_auc", aucs)
    writer.write_table("layers", {
        "run_id": [run_id] * len(layer_order),
        "layer": layer_order,
        "layer_index": list(range(len(layer_order))),
        "kind": ["conv" if len(shapes[n]) == 3 else "linear" for n in layer_order],
        "n_units": [shapes[n][0] for n in layer_order],
        "shape": [list(shapes[n]) for n in layer_order],
        "probe": [_probe_description(model, n) for n in layer_order],
    })
    writer.write_table("epochs", {
        "run_id": [run_id] * len(trained.history),
        **{c: [h[c] for h in trained.history] for c in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")},
    })
    save_checkpoint(model.cpu(), spec, writer.file(CHECKPOINT))
    versions = _versions()
    config = {**asdict(cfg), "run_id": run_id, "model_spec": spec.to_dict() if spec else None}
    duration = time.perf_counter() - started
    writer.write_table("runs", {
        "run_id": [run_id], "created_at": [datetime.now(timezone.utc)], "schema_version": [SCHEMA_VERSION],
        "model": [cfg.model], "dataset": [cfg.dataset], "eval_dataset": [cfg.eval_dataset or f"{cfg.dataset} (test split)"],
        "n_train": [len(splits.train)], "n_test": [len(splits.test)], "n_eval": [len(eval_set)],
        "n_classes": [len(names)], "class_names": [list(names)], "seed": [cfg.seed], "epochs": [len(trained.history)],
        "batch_size": [cfg.batch_size], "lr": [cfg.lr], "label_noise": [cfg.label_noise], "experiment": [cfg.experiment],
        "train_loss": [train_loss], "train_acc": [train_acc], "test_loss": [test_loss], "test_acc": [test_acc],
        "eval_loss": [base.loss], "eval_acc": [base.accuracy], "duration_s": [duration], "device": [device],
        "torch_version": [versions["torch"]], "package_versions": [json.dumps(versions)],
        "config": [json.dumps(config, default=list)], "checkpoint": [CHECKPOINT],
    })
    path = writer.publish({"model": cfg.model, "dataset": cfg.dataset})
    figures = {"train_acc": train_acc, "test_acc": test_acc, "eval_acc": base.accuracy, "eval_loss": base.loss,
               "units": float(len(units["unit"])), "duration_s": duration, "images": float(len(images["png"])),
               **{f"images_s/{stage}": t for stage, t in image_seconds.items()}}
    return RunSummary(run_id, path, figures)
