"""The run's warehouse tables, built from the stages' results with the schema's column names.

Every table goes through ``warehouse.rows.TableRows``: a column declared in ``warehouse/schema.py``
but not given here (or given but not declared) fails at once. ``run_id`` is filled by the writer.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import numpy as np

from compute.ablation.effects import KINDS
from compute.ablation.outcome import LayerAblation, Outcome, fdr
from compute.datasets.sources import ImageSet
from compute.measure.stats import EvalStats, anomaly, demand, selectivity, strongest_anomaly
from compute.measure.train import TrainResult
from warehouse.rows import TableRows
from warehouse.schema import SCHEMA_VERSION
from warehouse.layout import CHECKPOINT


def _nulls(values: np.ndarray) -> list[float | None]:
    """NaN as null: "no value" (a dead unit's anomaly). DuckDB orders NaN above every number, so a
    NaN would pass ``anomaly >= 1``."""
    return [None if np.isnan(v) else float(v) for v in values]


def unit_tables(layer_order: list[str], stats: EvalStats, ablations: dict[str, LayerAblation],
                class_names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of ``units`` (one row per unit) and ``unit_classes`` (unit-major, class-minor)."""
    units, classes = TableRows("units"), TableRows("unit_classes")
    k = len(class_names)
    for li, name in enumerate(layer_order):
        ls, ab = stats.layers[name], ablations[name]
        cm, ov = ls.class_means, ls.overall
        n = cm["rect"].shape[1]
        dead = ls.n_active == 0
        sel = selectivity(cm["rect"])
        pref = [None if d else int(c) for c, d in zip(sel["pref_class"], dead)]
        anom = anomaly(cm["tgrad"], cm["act"], ~dead)  # (K, U), NaN for dead units
        anom_max, best = strongest_anomaly(anom)
        sp = ls.special
        spec_max, spec_best = strongest_anomaly(sp["specialization"])
        paired = ab.paired
        assert paired is not None, "the ablation stage must come from the engine (paired statistics)"
        lo, hi, p = paired.loss_test()
        acc_p = paired.mcnemar_p()
        units.add(
            layer=[name] * n, layer_index=[li] * n, unit=range(n),
            mean_act=ov["act"], mean_rect=ov["rect"], max_act=ls.max_act, frac_active=ov["active"],
            n_active=ls.n_active, dead=dead, selectivity=sel["selectivity"], pref_class=pref,
            pref_class_name=[None if c is None else class_names[c] for c in pref], mu_max=sel["mu_max"],
            mu_rest=sel["mu_rest"], grad_mean=ov["grad"], grad_abs_mean=ov["grad_abs"],
            train_grad_mean=ov["tgrad"], grad_z_max=np.nanmax(demand(cm["grad"]), axis=0), taylor=ov["taylor"],
            taylor_norm=ov["taylor"] / (np.linalg.norm(ov["taylor"]) or 1.0), abl_acc_delta=ab.acc_delta,
            abl_loss_delta=ab.loss_delta, abl_loss_abs=np.abs(ab.loss_delta), abl_loss_lo=lo, abl_loss_hi=hi,
            abl_loss_p=p, abl_loss_q=fdr(p), abl_n_hurt=paired.hurt.astype(np.int64),
            abl_n_helped=paired.helped.astype(np.int64), abl_acc_p=acc_p,
            anomaly_max=_nulls(anom_max), anomaly_class=[None if b < 0 else int(b) for b in best],
            fire_threshold=sp["threshold"], specialization_max=_nulls(spec_max),
            specialization_class=[None if b < 0 else int(b) for b in spec_best],
            abl_n=np.broadcast_to(paired.n, (n,)).astype(np.int64))
        classes.add(
            layer=[name] * (n * k), unit=np.repeat(np.arange(n), k), **{"class": np.tile(np.arange(k), n)},
            class_name=list(class_names) * n, n=np.tile(ls.counts, n).astype(np.int64),
            mean_act=cm["act"].T.ravel(), mean_rect=cm["rect"].T.ravel(), grad_mean=cm["grad"].T.ravel(),
            grad_abs_mean=cm["grad_abs"].T.ravel(), train_grad_mean=cm["tgrad"].T.ravel(),
            taylor=cm["taylor"].T.ravel(), frac_active=cm["active"].T.ravel(), anomaly=_nulls(anom.T.ravel()),
            abl_acc_delta=ab.class_acc_delta.ravel(), abl_loss_delta=ab.class_loss_delta.ravel(),
            frac_fire=_nulls(sp["frac_fire"].T.ravel()), fire_effect=_nulls(sp["fire_effect"].T.ravel()),
            specialization=_nulls(sp["specialization"].T.ravel()))
    return units.columns, classes.columns


def examples_table(eval_set: ImageSet, stats: EvalStats) -> dict[str, list]:
    """Columns of ``examples``: one row per evaluation example, in evaluation-set order."""
    rows = TableRows("examples")
    n = len(eval_set)
    rows.add(example=np.arange(n), label=eval_set.labels.numpy(), pred=stats.example_pred, loss=stats.example_loss,
             subgroup=[None] * n if eval_set.groups is None else list(eval_set.groups))
    return rows.columns


def unit_examples_table(layer_order: list[str], ablations: dict[str, LayerAblation]) -> dict[str, list]:
    """Columns of ``unit_examples``: per layer, the engine's sparse per-unit example effects."""
    rows = TableRows("unit_examples")
    for name in layer_order:
        e = ablations[name].examples
        assert e is not None, "the ablation stage must come from the engine (example effects)"
        rows.add(layer=[name] * len(e.unit), unit=e.unit, example=e.example, kind=[KINDS[k] for k in e.kind], rank=e.rank,
                 loss_delta=e.loss_delta, pred_ablated=e.pred_ablated)
    return rows.columns


def trace_table(result: TrainResult, class_names: tuple[str, ...]) -> dict[str, list]:
    """Columns of ``train_trace``: rows in (epoch, unit, class) order; empty when nothing was trained."""
    rows = TableRows("train_trace")
    for name, fields in result.trace.items():
        assert result.counts is not None
        e, k, u = fields["act"].shape
        size = e * k * u
        # Arrays are (E, K, U): move classes last.
        rows.add(
            epoch=np.repeat(np.arange(1, e + 1), u * k), layer=[name] * size,
            unit=np.tile(np.repeat(np.arange(u), k), e), **{"class": np.tile(np.arange(k), e * u)},
            class_name=list(class_names) * (e * u),
            n=np.broadcast_to(result.counts[:, None, :], (e, u, k)).astype(np.int64).ravel(),
            **{col: fields[f].transpose(0, 2, 1).ravel()
               for col, f in (("mean_act", "act"), ("mean_rect", "rect"), ("grad_mean", "grad"),
                              ("train_grad_mean", "tgrad"))})
    return rows.columns


def layers_table(layer_order: list[str], shapes: dict[str, tuple[int, ...]], probes: dict[str, str]) -> dict[str, list]:
    """Columns of ``layers``; ``probes`` maps each layer to a description of its probe point."""
    rows = TableRows("layers")
    rows.add(layer=layer_order, layer_index=range(len(layer_order)),
             kind=["conv" if len(shapes[n]) == 3 else "linear" for n in layer_order],
             n_units=[shapes[n][0] for n in layer_order], shape=[list(shapes[n]) for n in layer_order],
             probe=[probes[n] for n in layer_order])
    return rows.columns


def epochs_table(result: TrainResult) -> dict[str, list]:
    rows = TableRows("epochs")
    rows.add(**{c: [h[c] for h in result.history]
                for c in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")})
    return rows.columns


def runs_table(cfg: Any, run_id: str, sizes: dict[str, int], class_names: tuple[str, ...], epochs: int,
               scores: dict[str, float], base: Outcome, duration: float, device: str, versions: dict[str, str],
               model_spec: dict[str, Any] | None) -> dict[str, list]:
    """The one row of ``runs``: provenance, settings and headline results.

    ``cfg`` is the run's ``RunConfig``; ``sizes`` has ``n_train``, ``n_test``, ``n_eval``; ``scores``
    has train/test loss and accuracy.
    """
    config = {**asdict(cfg), "run_id": run_id, "model_spec": model_spec}
    rows = TableRows("runs")
    rows.add(
        created_at=[datetime.now(timezone.utc)], schema_version=[SCHEMA_VERSION], model=[cfg.model],
        dataset=[cfg.dataset], eval_dataset=[cfg.eval_dataset or f"{cfg.dataset} (test split)"],
        **{k: [v] for k, v in sizes.items()}, n_classes=[len(class_names)], class_names=[list(class_names)],
        seed=[cfg.seed], epochs=[epochs], batch_size=[cfg.batch_size], lr=[cfg.lr], label_noise=[cfg.label_noise],
        experiment=[cfg.experiment], **{k: [v] for k, v in scores.items()},
        eval_loss=[base.loss], eval_acc=[base.accuracy], duration_s=[duration], device=[device],
        torch_version=[versions["torch"]], package_versions=[json.dumps(versions)],
        config=[json.dumps(config, default=list)], checkpoint=[CHECKPOINT])
    return rows.columns
