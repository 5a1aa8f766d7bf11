"""One compute run, end to end: the declared stages (``compute.run.stages.STAGES``) run in order on
a built model and loaded data, then the tables are written and the run is published.

Stages write nothing into the warehouse until the end; the run is staged and published whole, so an
interrupted run leaves no trace in the warehouse, and its finished stages let ``--resume`` continue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from compute.ablation.curves import UnitScores
from compute.allocator import keep_freed_memory
from compute.ablation.engine import AblationEngine
from compute.datasets.sources import ImageSet, Splits
from compute.distributed import work
from compute.distributed.images import unit_images
from compute.distributed.executor import Executor, InProcessExecutor, Worker
from compute.errors import ConfigError, TrainingError
from compute.images.table import COLUMNS as IMAGE_COLUMNS
from compute.images.table import ROW_GROUP_ROWS
from compute.measure.specialization import class_cost_max, specialization
from compute.measure.stats import selectivity
from compute.measure.train import TrainConfig, TrainResult, train
from compute.nets.activations import ProbePoint, point_kind, unit_dim
from compute.nets.discover import ProbedGraph, select_layers
from compute.progress import announce, stage_started
from compute.nets.models import (ModelSpec, ProbedModel, build_model, input_error, layer_shapes, load_weights,
                                 save_checkpoint)
from compute.run import tables
from compute.run.config import RunConfig, RunSummary, default_run_id, package_versions, settle_config
from compute.run.data import check_device, load_data
from compute.run.stage_store import ItemStore, StageStore
from compute.run.stages import STAGES
from compute.threads import torch_threads
from warehouse.faults import crash_point
from warehouse.layout import CHECKPOINT, check_run_id
from warehouse.publish import RunWriter


@dataclass
class RunContext:
    """What every stage may read: the model, the data, the settings and the finished stages' results."""

    model: ProbedModel
    splits: Splits
    eval_set: ImageSet
    cfg: RunConfig
    device: str
    store: StageStore
    results: dict[str, Any] = field(default_factory=dict)
    executor: Executor = field(default_factory=InProcessExecutor)  # where the sharded stages' items run
    _worker: Worker | None = None

    def probes(self) -> dict[str, torch.nn.Module]:
        return self.model.probe_modules()

    def engine(self) -> AblationEngine:
        return AblationEngine(self.model, device=self.device)

    def worker(self) -> Worker:
        """The model (trained weights) and data the items read; built once, after training."""
        if self._worker is None:
            data = {"eval": self.eval_set, "train": self.splits.train, "test": self.splits.test}
            if self.cfg.ablation_budget == "sequential":
                data["eval-seq"] = self.eval_set.subset(self.sequential_order())
            self._worker = Worker(self.model, data, self.device)
        return self._worker

    def sequential_order(self) -> np.ndarray:
        """The fixed random order in which a sequential ablation takes the evaluation examples."""
        return np.random.default_rng([self.cfg.seed, 104729]).permutation(len(self.eval_set))

    def items(self, stage: str) -> ItemStore:
        """Where the stage's finished work items are kept, so a killed run repeats only the others."""
        return ItemStore(self.store.directory / "items" / stage)


def _train(ctx: RunContext) -> dict[str, Any]:
    """Train with an epoch-level checkpoint in the stage store, so a killed run loses one epoch at most.

    With ``epochs == 0`` (an already trained model) nothing is trained and the trace is empty.
    """
    def checkpoint(state: dict[str, Any]) -> None:
        ctx.store.save("train-epoch", state)
        crash_point(f"epoch-{state['epoch']}")

    cfg, trained = ctx.cfg, TrainResult()
    if cfg.epochs > 0:
        tcfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size, lr=cfg.lr,
                           until_train_acc=cfg.until_train_acc)
        trained = train(ctx.model, ctx.probes(), ctx.splits.train, ctx.splits.test, tcfg, ctx.device,
                        ctx.store.load("train-epoch"), checkpoint)  # type: ignore[arg-type]
    return {"model": {k: v.cpu() for k, v in ctx.model.state_dict().items()}, "result": trained}


def _evaluate(ctx: RunContext) -> tuple[float, float, float, float]:
    """Loss and accuracy on both splits; a loss that is not finite stops the run (every statistic would be NaN)."""
    figures = (*work.evaluate(ctx.executor, ctx.worker(), ctx.items("evaluate"), "train"),
               *work.evaluate(ctx.executor, ctx.worker(), ctx.items("evaluate"), "test"))
    for split, loss in (("training set", figures[0]), ("test split", figures[2])):
        if not np.isfinite(loss):  # training checks its own batches; --epochs 0 or a model from Python did not train
            raise TrainingError(f"the model's loss on the {split} is {loss}: its outputs overflow or are NaN, so "
                                f"every statistic would be NaN. Check the weights (--checkpoint, or the model given "
                                f"from Python) or retrain with a lower --lr.")
    return figures


def _statistics(ctx: RunContext) -> Any:
    """The statistics' sums, then each layer's firing rule (two passes) and the specialization pass that
    uses it: every pass a round of work items per data shard."""
    worker, store = ctx.worker(), ctx.items("statistics")
    stats = work.statistics(ctx.executor, worker, store)
    rules = work.firing_rules(ctx.executor, worker, store)
    sums = work.specialization(ctx.executor, worker, store, rules)
    cost_max = class_cost_max(sums, {n: ls.n_active > 0 for n, ls in stats.layers.items()})
    for n, ls in stats.layers.items():
        ls.special = {**specialization(sums[n], ls.counts, ls.n_active > 0, cost_max),
                      "threshold": rules[n].threshold}
    return stats


def _ablation(ctx: RunContext) -> Any:
    units = ctx.engine().unit_counts(ctx.eval_set)
    if ctx.cfg.ablation_budget == "sequential":
        return work.sequential_unit(ctx.executor, ctx.worker(), ctx.items("ablation"), units, ctx.sequential_order(),
                                    ctx.cfg.ablation_width, data="eval-seq")
    return work.single_unit(ctx.executor, ctx.worker(), ctx.items("ablation"), units)


def _curves(ctx: RunContext) -> tuple[dict[str, list], dict[str, list], work.Evaluated]:
    """Cumulative ablation curves and their areas on the evaluation set (and the training set), and the
    evaluation set's masks with their sums, which the class curves reuse."""
    stats, (_, ablations) = ctx.results["statistics"], ctx.results["ablation"]
    scores = {n: UnitScores(selectivity(stats.layers[n].class_means["rect"])["selectivity"], ablations[n].loss_delta,
                            stats.layers[n].n_active > 0)
              for n in ablations}
    # Orders come from the evaluation set's scores on both splits, so the curves are comparable.
    curves, aucs, evaluated = work.curves(ctx.executor, ctx.worker(), ctx.items("curves"), scores, "eval", "eval")
    if ctx.cfg.train_curves:
        train_curves, train_aucs, _ = work.curves(ctx.executor, ctx.worker(), ctx.items("curves"), scores, "train",
                                                  "train")
        curves = {c: curves[c] + train_curves[c] for c in curves}
        aucs = {c: aucs[c] + train_aucs[c] for c in aucs}
    return curves, aucs, evaluated


def _class_curves(ctx: RunContext) -> tuple[dict[str, list], dict[str, list]]:
    """Per class, units removed in the order of their importance for it, on the evaluation set."""
    stats, (_, ablations) = ctx.results["statistics"], ctx.results["ablation"]
    curves = ctx.results["curves"]
    known = curves[2] if len(curves) > 2 else None  # a curves stage saved by older code kept no sums
    return work.class_curves(ctx.executor, ctx.worker(), ctx.items("class_curves"),
                             {n: ablations[n].class_loss_delta for n in ablations},
                             {n: stats.layers[n].n_active > 0 for n in ablations}, known=known)


def _images(ctx: RunContext) -> tuple[dict[str, list], dict[str, float]]:
    """The images stage, as rounds of work items (``compute.distributed.images``)."""
    cfg = ctx.cfg.images
    if cfg is None:
        return {c: [] for c in IMAGE_COLUMNS}, {}
    return unit_images(ctx.executor, ctx.worker(), ctx.items("images"), ctx.items("actmax"), cfg)


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], Any]] = {
    "train": _train, "evaluate": _evaluate, "statistics": _statistics, "ablation": _ablation,
    "curves": _curves, "class_curves": _class_curves, "images": _images}


def run_stages(ctx: RunContext) -> None:
    """Every resumable stage of ``STAGES`` in order: saved results are loaded, the rest computed."""
    for stage in STAGES:
        if not stage.resumable:
            continue
        missing = [n for n in stage.needs if n not in ctx.results]
        assert not missing, f"stage {stage.name} needs {missing}"
        ctx.results[stage.name] = ctx.store.run(stage.name, lambda: STAGE_FUNCTIONS[stage.name](ctx))
        if stage.name == "train":  # later stages see the trained weights
            ctx.model.load_state_dict(ctx.results["train"]["model"])
        if stage.name == "statistics" and ctx.cfg.ablate == "mean":
            _set_mean_fills(ctx)


def _set_mean_fills(ctx: RunContext) -> None:
    """Mean ablation: every probe point's ablation value is its units' mean output on the evaluation
    set; the worker (and its engine's splits) is rebuilt so that every later stage ablates to it."""
    stats = ctx.results["statistics"]
    for layer, module in ctx.probes().items():
        if not isinstance(module, ProbePoint):
            raise ConfigError(f"--ablate mean needs probe points that carry an ablation value; layer {layer} is a "
                              f"plain {type(module).__name__} module. Let Neuron Atlas trace the model (do not "
                              f"subclass ProbedModel), or use --ablate zero.")
        module.fill = torch.as_tensor(stats.layers[layer].overall["out"], dtype=torch.float32, device=ctx.device)
    ctx._worker = None


def _probe_description(model: ProbedModel, layer: str) -> str:
    module = model.probe_modules()[layer]
    kind, dim = point_kind(module).name, unit_dim(module)
    where = "" if dim == 1 else ", units on the last dimension"
    if isinstance(model, ProbedGraph):
        return f"output of {kind} call site `{layer}` (traced; its input is the pre-activation{where})"
    return f"output of {kind} module `{model.probes[layer]}` (its input is the pre-activation{where})"


def compute_run(cfg: RunConfig, warehouse_root: Path, resume: bool = False,
                executor: Executor | None = None) -> RunSummary:
    """Train (or load), probe and ablate a model by name, then publish the run into ``warehouse_root``.

    Finished stages are kept in the run's staging folder; with ``resume`` an interrupted run
    (same ``run_id``) continues from its last finished stage under its saved configuration.
    ``executor`` runs the sharded stages' items (default: in this process); the caller closes it.
    """
    started = time.perf_counter()
    if cfg.images is not None:
        cfg.images.check()
    run_id = check_run_id(cfg.run_id or default_run_id(cfg))
    # Open the writer first: a bad warehouse or a taken run id fails before minutes of training.
    with RunWriter(warehouse_root, run_id, resume=resume) as writer:
        if writer.already_published:
            return published_summary(writer)
        cfg = settle_config(cfg, run_id, writer.stages_dir, resume)
        cfg.require_weights()  # on resume, of the saved configuration
        splits, eval_set = load_data(cfg)
        crash_point("after-load")
        torch.manual_seed(cfg.seed)
        spec = ModelSpec(cfg.model, splits.train.shape, splits.train.n_classes, cfg.model_options())
        model = build_model(spec)
        if cfg.checkpoint:
            load_weights(model, Path(cfg.checkpoint))
        return analyze_into(writer, model, spec, splits, eval_set, cfg, started, executor)


def published_summary(writer: RunWriter) -> RunSummary:
    """The summary of a run the interrupted computation had already published (killed after the rename):
    read back from its tables, which ``RunWriter`` has just validated."""
    stage_started("publish")
    row = pq.read_table(writer.final / "runs.parquet").to_pylist()[0]
    rows = {name: pq.read_metadata(writer.final / f"{name}.parquet").num_rows for name in ("units", "unit_images")}
    figures = {k: float(row[k]) for k in ("train_acc", "test_acc", "eval_acc", "eval_loss", "duration_s")}
    return RunSummary(writer.run_id, writer.final, {**figures, "units": float(rows["units"]),
                                                    "images": float(rows["unit_images"])})


def analyze_into(writer: RunWriter, model: ProbedModel, spec: ModelSpec | None, splits: Splits,
                 eval_set: ImageSet, cfg: RunConfig, started: float, executor: Executor | None = None) -> RunSummary:
    """Every stage on a built model and loaded data, written through ``writer`` and published.

    ``spec`` rebuilds the model from its name when the checkpoint is reloaded; None means a model
    given from Python, saved whole instead.
    """
    device = check_device(cfg.device)
    model.probes = select_layers(model.probes, list(cfg.layers) if cfg.layers else None,
                                 getattr(model, "skipped", None))
    if cfg.ablate not in ("zero", "mean"):
        raise ConfigError(f"ablate must be 'zero' or 'mean', got {cfg.ablate!r}.")
    skipped = getattr(model, "skipped", {})
    if skipped:
        announce(f"{len(skipped)} activation call(s) not probed: " +
                 "; ".join(f"{layer}: {why}" for layer, why in skipped.items()))
    model = model.to(device)
    try:
        shapes = layer_shapes(model, splits.train.shape, device, splits.train.n_classes)
    except RuntimeError as e:
        raise input_error(cfg.model, splits.train.shape, e) from None
    ctx = RunContext(model, splits, eval_set, cfg, device, StageStore(writer.stages_dir),
                     executor=executor or InProcessExecutor())
    keep_freed_memory()  # batch-sized tensors reuse freed memory instead of page-faulting (compute/allocator.py)
    with torch_threads(cfg.threads):  # one thread policy for every stage (compute/threads.py)
        run_stages(ctx)
    return _publish(ctx, writer, spec, shapes, started)


def _publish(ctx: RunContext, writer: RunWriter, spec: ModelSpec | None, shapes: dict[str, tuple[int, ...]],
             started: float) -> RunSummary:
    """The ``publish`` stage: every table, the checkpoint and the manifest, then the atomic rename."""
    stage_started("publish")
    r, cfg, names = ctx.results, ctx.cfg, ctx.splits.train.class_names
    trained: TrainResult = r["train"]["result"]
    train_loss, train_acc, test_loss, test_acc = r["evaluate"]
    base, ablations = r["ablation"]
    images, image_seconds = r["images"]
    writer.write_table("unit_images", images, row_group_size=ROW_GROUP_ROWS)
    layer_order = list(ctx.model.probes)
    units, classes = tables.unit_tables(layer_order, r["statistics"], ablations, names)
    writer.write_table("units", units)
    writer.write_table("unit_classes", classes)
    writer.write_table("examples", tables.examples_table(ctx.eval_set, r["statistics"]))
    writer.write_table("unit_examples", tables.unit_examples_table(layer_order, ablations))
    writer.write_table("train_trace", tables.trace_table(trained, names))
    curves, aucs = r["curves"][:2]
    writer.write_table("ablation_curves", curves)
    writer.write_table("ablation_auc", aucs)
    per_class, removal = r["class_curves"]
    writer.write_table("class_curves", per_class)
    writer.write_table("class_removal", removal)
    writer.write_table("layers", tables.layers_table(
        layer_order, shapes, {n: _probe_description(ctx.model, n) for n in layer_order}))
    writer.write_table("epochs", tables.epochs_table(trained))
    save_checkpoint(ctx.model.cpu(), spec, writer.file(CHECKPOINT))
    crash_point("after-checkpoint")
    duration = time.perf_counter() - started
    writer.write_table("runs", tables.runs_table(
        cfg, writer.run_id, {"n_train": len(ctx.splits.train), "n_test": len(ctx.splits.test),
                             "n_eval": len(ctx.eval_set)},
        names, len(trained.history),
        {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc},
        base, duration, ctx.device, package_versions(), spec.to_dict() if spec else None))
    path = writer.publish({"model": cfg.model, "dataset": cfg.dataset})
    figures = {"train_acc": train_acc, "test_acc": test_acc, "eval_acc": base.accuracy, "eval_loss": base.loss,
               "units": float(len(units["unit"])), "duration_s": duration,
               "ablation_unit_examples": float(sum(np.sum(np.broadcast_to(a.paired.n, a.loss_delta.shape))
                                                   for a in ablations.values() if a.paired is not None)), "images": float(len(images["png"])),
               **{f"images_s/{stage}": t for stage, t in image_seconds.items()}}
    return RunSummary(writer.run_id, path, figures)
