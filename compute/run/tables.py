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

from compute.ablation.outcome import LayerAblation, Outcome
from compute.measure.stats import EvalStats, anomaly, selectivity, strongest_anomaly
from compute.measure.train import TrainResult
from warehouse.rows import TableRows
from warehouse.schema import SCHEMA_VERSION
from warehouse.store import CHECKPOINT


def unit_tables(layer_order: list[str], stats: EvalStats, ablations: dict[str, LayerAblation],
                class_names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of ``units`` (one row per unit) and ``unit_classes`` (unit-major, class-minor)."""
    units, classes = TableRows("units"), TableRows("unit_classes")
    k = len(class_names)
    for li, name in enumerate(layer_order):
        ls, ab = stats.layers[name], ablations[name]
        cm, ov = ls.class_means, ls.overall
        n = cm["rect"].shape[1]
        sel = selectivity(cm["rect"])
        anom = anomaly(cm["grad"], cm["act"])  # (K, U)
        anom_max, best = strongest_anomaly(anom)
        units.add(
            layer=[name] * n, layer_index=[li] * n, unit=range(n),
            mean_act=ov["act"], mean_rect=ov["rect"], max_act=ls.max_act, frac_active=ov["active"],
            dead=ov["active"] == 0, selectivity=sel["selectivity"], pref_class=sel["pref_class"],
            pref_class_name=[class_names[c] for c in sel["pref_class"]], mu_max=sel["mu_max"],
            mu_rest=sel["mu_rest"], grad_mean=ov["grad"], grad_abs_mean=ov["grad_abs"], taylor=ov["taylor"],
            taylor_norm=ov["taylor"] / (np.linalg.norm(ov["taylor"]) or 1.0), abl_acc_delta=ab.acc_delta,
            abl_loss_delta=ab.loss_delta, anomaly_max=anom_max, anomaly_class=best)
        classes.add(
            layer=[name] * (n * k), unit=np.repeat(np.arange(n), k), **{"class": np.tile(np.arange(k), n)},
            class_name=list(class_names) * n, n=np.tile(ls.counts, n).astype(np.int64),
            mean_act=cm["act"].T.ravel(), mean_rect=cm["rect"].T.ravel(), grad_mean=cm["grad"].T.ravel(),
            grad_abs_mean=cm["grad_abs"].T.ravel(), taylor=cm["taylor"].T.ravel(),
            frac_active=cm["active"].T.ravel(), anomaly=anom.T.ravel(),
            abl_acc_delta=ab.class_acc_delta.ravel(), abl_loss_delta=ab.class_loss_delta.ravel())
    return units.columns, classes.columns


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
               for col, f in (("mean_act", "act"), ("mean_rect", "rect"), ("grad_mean", "grad"))})
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
