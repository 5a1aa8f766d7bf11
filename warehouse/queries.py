"""The dashboard's and the export's questions to the warehouse, as SQL with bound parameters.

Which units a question is about is a ``UnitFilter`` (``warehouse.filters``: its fields, their
URL and command-line forms and the SQL clauses they become); ``PRESETS`` are named filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from warehouse import class_values
from warehouse.class_match import unit_sql
from warehouse.connect import has_units_in_memory
from warehouse.filters import (CLASS_METRICS, INT32_MAX, UNIT_COLUMNS, UNIT_METRICS, Preset, QueryError, Range,
                               UnitFilter, check_column, filter_sql, format_range, parse_int, parse_range)
from warehouse.schema import TABLES

__all__ = ["CLASS_METRICS", "UNIT_COLUMNS", "UNIT_METRICS", "Preset", "QueryError", "Range", "UnitFilter",
           "filter_sql", "format_range", "parse_range"]  # re-exported: the filter's home is warehouse.filters

#: Columns of ``units`` shown with a layer percentile on the unit page.
PERCENTILE_METRICS: tuple[str, ...] = tuple(
    c.name for c in TABLES["units"].columns if pa.types.is_floating(c.type))


#: Examples a unit must be active on before its selectivity is trusted by the selectivity presets
#: (a unit active on 1 example has selectivity near 1); edit the ``n_active`` range to change it.
MIN_ACTIVE = 10
#: False-discovery level of the significance preset.
ALPHA = 0.05

#: Lower bound of ``specialization_max`` in the *specialized on part of a class* preset (a score in [0, 1];
#: docs/metrics.md, Subset specialization): 14% of the live units of the 15 planted benchmark runs
#: (90th percentile 0.17), as 0.4 was before schema version 5 (0.005 in loss units before version 4).
#: The preset's name, and so every link to it, is unchanged.
MIN_SPECIALIZATION = 0.15
SPECIALIZED = "specialized on part of a class"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(SPECIALIZED,
           "Live units that some class relies on where they fire, while they fire on a part of that class only "
           f"(the crossed-7 unit): specialization_max >= {MIN_SPECIALIZATION}, i.e. for that class the share "
           "of the unit's removal cost over correctly classified examples that falls on the examples it fires "
           "on, times the share of the class it does not fire on, times the fourth root of its removal cost "
           "relative to the class's costliest unit (docs/metrics.md, Subset specialization). It finds "
           "planted subgroups where 'high gradient, low activation' does not (README, planted benchmark).",
           {"ranges": (Range("specialization_max", MIN_SPECIALIZATION, None),), "order_by": "specialization_max",
            "descending": True}),
    Preset("high gradient, low activation",
           "The older score, kept for comparison (the planted benchmark shows it misses planted subgroups): live "
           "units that training pushes up for some class (or the chosen one) although they are low for "
           "it: unit_classes.anomaly >= 1, i.e. both the training signal (gradient at the pre-activation) "
           "and the activation deficit are at least one layer standard deviation. Dead units have no anomaly.",
           {"class_conditions": (Range("anomaly", 1.0, None),), "order_by": "anomaly_max", "descending": True}),
    Preset("dead, but the loss wants them on",
           "Never active on the evaluation set, yet for some class the loss asks for the unit: grad_z_max >= 1 "
           "(the output-side gradient signal is at least one layer standard deviation). Training cannot act on "
           "them: a ReLU blocks the signal where the unit is silent (a smooth activation passes only a weak part).",
           {"dead": True, "ranges": (Range("grad_z_max", 1.0, None),), "order_by": "grad_z_max", "descending": True}),
    Preset("highly selective", f"Class selectivity index of at least 0.5 (mu_max at least 3x mu_rest), on at "
           f"least {MIN_ACTIVE} active examples.",
           {"ranges": (Range("selectivity", 0.5, None), Range("n_active", MIN_ACTIVE, None)),
            "order_by": "selectivity", "descending": True}),
    Preset("most important", "The 50 units whose ablation raises the loss most.",
           {"order_by": "abl_loss_delta", "descending": True, "limit": 50}),
    Preset("removal significantly hurts",
           f"Removing the unit raises the loss, beyond the noise: abl_loss_q <= {ALPHA} (paired t-test on the "
           f"per-example loss changes, Benjamini-Hochberg within the layer) and its 95% interval above 0.",
           {"ranges": (Range("abl_loss_q", None, ALPHA), Range("abl_loss_lo", 0.0, None)),
            "order_by": "abl_loss_delta", "descending": True}),
    Preset("selective but unimportant",
           f"Selectivity of at least 0.5 on at least {MIN_ACTIVE} active examples, yet ablating the unit changes "
           "the loss by less than 0.005.",
           {"ranges": (Range("selectivity", 0.5, None), Range("n_active", MIN_ACTIVE, None),
                       Range("abl_loss_delta", None, 0.005)),
            "order_by": "selectivity", "descending": True}),
    Preset("dead units", "Never active on the evaluation set.", {"dead": True}),
)}


def filter_units(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> pd.DataFrame:
    """The units matching ``f``, every column of ``units`` (and ``matched_classes``)."""
    sql, params = unit_sql(con, f)
    return con.execute(sql, params).df()


def filter_units_arrow(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> pa.Table:
    sql, params = unit_sql(con, f)
    return con.sql(sql, params=params).to_arrow_table()


def scatter_data(con: duckdb.DuckDBPyConnection, f: UnitFilter, x: str, y: str,
                 max_points: int = 50_000) -> tuple[pd.DataFrame, int]:
    """Points (layer, layer_index, unit, pref_class_name, x, y) of the filtered units and their total count.

    Above ``max_points`` a deterministic sample is returned: the ``max_points`` units with the
    smallest hash of (layer, unit), so the plot stays responsive and does not change between
    reruns. A pre-filter on the hash range keeps the sort to about 1.25 x ``max_points`` rows.
    """
    x = check_column(x, UNIT_METRICS, "x axis")
    y = check_column(y, UNIT_METRICS, "y axis")
    inner, params = unit_sql(con, f, tuple(dict.fromkeys(("layer", "layer_index", "unit", "pref_class_name", x, y))),
                             ordered=False, matches=False)
    total = int(con.execute(f"SELECT count(*) FROM ({inner})", params).fetchall()[0][0])
    if total <= max_points:
        df = con.execute(inner, params).df()
    else:
        sample = f"SELECT * FROM ({inner}) {{}} ORDER BY hash(layer, unit) LIMIT ?"
        cut = min(2**64 - 1, int(1.25 * max_points / total * 2**64))  # hash() is a UBIGINT
        df = con.execute(sample.format("WHERE hash(layer, unit) < ?::UBIGINT"), params + [str(cut), max_points]).df()
        if len(df) < max_points:  # the pre-filter kept too few (small, unlucky sets): sort them all
            df = con.execute(sample.format(""), params + [max_points]).df()
    return df.sort_values(["layer_index", "unit"], ignore_index=True), total


def runs_overview(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per run: provenance and accuracies, newest first."""
    return con.execute(
        "SELECT run_id, created_at, model, dataset, eval_dataset, n_train, n_eval, epochs, seed, "
        "train_acc, test_acc, eval_acc, duration_s, device, torch_version FROM runs "
        "ORDER BY created_at DESC, run_id").df()


def layer_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per layer: kind, unit count, dead units and median selectivity / importance / sparsity."""
    return con.execute(
        "SELECT l.layer, l.kind, l.n_units, count(u.unit) AS units_probed, "
        "count(*) FILTER (WHERE u.dead) AS dead, median(u.selectivity) AS median_selectivity, "
        "median(u.abl_loss_delta) AS median_abl_loss_delta, median(1 - u.frac_active) AS median_sparsity "
        "FROM layers l LEFT JOIN units u ON u.run_id = l.run_id AND u.layer = l.layer "
        "WHERE l.run_id = ? GROUP BY l.layer, l.layer_index, l.kind, l.n_units ORDER BY l.layer_index",
        [run_id]).df()


def epochs(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """The run's accuracy and loss per training epoch (no rows for a run loaded from a checkpoint)."""
    return con.execute("SELECT epoch, train_loss, train_acc, test_loss, test_acc FROM epochs WHERE run_id = ? "
                       "ORDER BY epoch", [run_id]).df()


def layer_names(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    rows = con.execute("SELECT layer FROM layers WHERE run_id = ? ORDER BY layer_index", [run_id]).fetchall()
    return [r[0] for r in rows]


def class_names(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    rows = con.execute("SELECT class_names FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return list(rows[0][0]) if rows else []


#: Distribution metrics of the overview: SQL expression over ``units`` and its label.
DISTRIBUTIONS: dict[str, str] = {
    "selectivity": "selectivity",
    "abl_loss_delta": "abl_loss_delta",
    "abl_acc_delta": "abl_acc_delta",
    "taylor_norm": "taylor_norm",
    "sparsity": "1 - frac_active",
}


def layer_histogram(con: duckdb.DuckDBPyConnection, run_id: str, metric: str, bins: int = 30) -> pd.DataFrame:
    """Histogram per layer of one distribution metric, binned in SQL: (layer, lo, hi, count).

    All layers share the same ``bins`` equal-width bins over the metric's range in the run.
    """
    if metric not in DISTRIBUTIONS:
        raise QueryError(f"unknown distribution {metric!r}; choose one of {', '.join(DISTRIBUTIONS)}.")
    expr = DISTRIBUTIONS[metric]
    return con.execute(
        f"WITH v AS (SELECT layer, layer_index, {expr} AS x FROM units WHERE run_id = ? AND isfinite({expr})), "
        "b AS (SELECT min(x) AS lo, greatest(max(x) - min(x), 1e-12) / ? AS w FROM v), "
        "h AS (SELECT layer, layer_index, least(floor((x - b.lo) / b.w), ? - 1)::INTEGER AS bin, count(*) AS count "
        "FROM v, b GROUP BY ALL) "
        "SELECT layer, b.lo + bin * b.w AS lo, b.lo + (bin + 1) * b.w AS hi, count FROM h, b "
        "ORDER BY layer_index, bin",
        [run_id, bins, bins]).df()


@dataclass
class UnitPage:
    """Everything the unit page shows about one unit."""

    unit: dict[str, Any]
    layer: dict[str, Any]
    classes: pd.DataFrame
    trace: pd.DataFrame
    percentiles: dict[str, float]


def unit_row(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int) -> dict[str, Any] | None:
    rows = con.execute("SELECT * FROM units WHERE run_id = ? AND layer = ? AND unit = ?",
                       [run_id, layer, int(unit)]).df()
    return rows.iloc[0].to_dict() if len(rows) else None


def layer_percentiles(con: duckdb.DuckDBPyConnection, run_id: str, layer: str,
                      values: dict[str, float]) -> dict[str, float]:
    """Per metric: percent of the layer's units whose value is <= the given one (NaN values left out)."""
    cols = [check_column(c, PERCENTILE_METRICS, "metric") for c in values]
    finite = {c: v for c, v in values.items() if v is not None and math.isfinite(v)}
    # count_if, not count(*) FILTER (WHERE ...): the same counts, about 5x faster over a layer of 125,000 units.
    exprs = [f'100.0 * count_if("{c}" <= ?) / nullif(count_if(isfinite("{c}")), 0)' for c in cols if c in finite]
    if not exprs:
        return {c: math.nan for c in cols}
    row = con.execute(f"SELECT {', '.join(exprs)} FROM units WHERE run_id = ? AND layer = ?",
                      [finite[c] for c in cols if c in finite] + [run_id, layer]).fetchall()[0]
    got = dict(zip([c for c in cols if c in finite], row))
    return {c: (math.nan if got.get(c) is None else float(got[c])) for c in cols}


def unit_page(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int) -> UnitPage | None:
    """The unit's metrics, per-class statistics, training trace and layer percentiles; None if absent."""
    row = unit_row(con, run_id, layer, unit)
    if row is None:
        return None
    layer_rows = con.execute("SELECT * FROM layers WHERE run_id = ? AND layer = ?", [run_id, layer]).df()
    classes = con.execute(
        'SELECT "class", class_name, n, mean_act, mean_rect, grad_mean, grad_abs_mean, train_grad_mean, taylor, frac_active, '
        'anomaly, abl_acc_delta, abl_loss_delta, frac_fire, fire_effect, specialization FROM unit_classes '
        'WHERE run_id = ? AND layer = ? AND unit = ? '
        'ORDER BY "class"', [run_id, layer, int(unit)]).df()
    trace = con.execute(
        'SELECT epoch, "class", class_name, n, mean_act, mean_rect, grad_mean, train_grad_mean FROM train_trace '
        'WHERE run_id = ? AND layer = ? AND unit = ? ORDER BY epoch, "class"', [run_id, layer, int(unit)]).df()
    pct = layer_percentiles(con, run_id, layer, {c: row[c] for c in PERCENTILE_METRICS})
    return UnitPage(row, layer_rows.iloc[0].to_dict() if len(layer_rows) else {}, classes, trace, pct)


#: The order the unit page lists the examples a unit's removal affects: what it breaks first.
EXAMPLE_KINDS = ("hurt", "loss_rise", "helped")


def unit_examples(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int,
                  label: int | None = None) -> pd.DataFrame:
    """The examples that need one unit (``unit_examples``) with what the model does with them, intact
    (``examples``) and without the unit: kind, rank, example, label, prediction intact, prediction without
    the unit, intact loss, loss change, subgroup; right -> wrong flips first, then the largest loss rises,
    then wrong -> right. ``label``: only examples of that class."""
    return con.execute(
        "SELECT ue.kind, ue.rank, ue.example, e.label, e.pred, ue.pred_ablated, e.loss, ue.loss_delta, e.subgroup "
        "FROM unit_examples ue LEFT JOIN examples e ON e.run_id = ue.run_id AND e.example = ue.example "
        "WHERE ue.run_id = ? AND ue.layer = ? AND ue.unit = ? AND (?::INTEGER IS NULL OR e.label = ?) "
        "ORDER BY list_position(?::VARCHAR[], ue.kind), ue.rank",
        [run_id, layer, int(unit), label, label, list(EXAMPLE_KINDS)]).df()


def class_removal(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per layer (or pooled group) and class: the fewest units that halve the class's accuracy while the
    others keep 90% of theirs (``class_removal``), layers in forward order, ``last2`` last."""
    return con.execute(
        "SELECT c.* EXCLUDE (run_id) FROM class_removal c LEFT JOIN layers l ON l.run_id = c.run_id AND l.layer = c.layer "
        'WHERE c.run_id = ? ORDER BY coalesce(l.layer_index, 1e9), c.layer, c."class"', [run_id]).df()


def removal_order(con: duckdb.DuckDBPyConnection, run_id: str, group: str, cls: int,
                  limit: int | None = None) -> pd.DataFrame:
    """The units of a ``class_curves`` group (a layer, or ``last2``: the last two layers pooled) in the order
    its curve removes them for class ``cls``: live units (``n_active > 0``), largest single-unit loss change
    on the class first (``unit_classes.abl_loss_delta``), ties in layer then unit order, as
    ``compute.ablation.class_curves`` orders them. The first ``n_to_halve`` are the class's halving set."""
    members = curve_layers(con, run_id, group)
    return con.execute(
        'SELECT uc.layer, uc.unit, uc.abl_loss_delta AS class_loss_delta, uc.abl_acc_delta AS class_acc_delta '
        "FROM unit_classes uc JOIN units u ON u.run_id = uc.run_id AND u.layer = uc.layer AND u.unit = uc.unit "
        'WHERE uc.run_id = ? AND list_contains(?::VARCHAR[], uc.layer) AND uc."class" = ? AND u.n_active > 0 '
        "ORDER BY isnan(uc.abl_loss_delta), uc.abl_loss_delta DESC, u.layer_index, uc.unit LIMIT ?",
        [run_id, members, int(cls), limit]).df()


def halving_set(con: duckdb.DuckDBPyConnection, run_id: str, group: str, cls: int) -> tuple[pd.DataFrame, dict | None]:
    """The fewest units of ``group`` that halve class ``cls``'s accuracy while the other classes keep 90% of
    theirs (``class_removal``), named: the first ``n_to_halve`` of ``removal_order``; and the
    ``class_removal`` row (None if the run has none). Empty when no count on the curve's grid does it."""
    found = con.execute('SELECT * EXCLUDE (run_id) FROM class_removal WHERE run_id = ? AND layer = ? AND "class" = ?',
                        [run_id, group, int(cls)]).df()
    if found.empty:
        return pd.DataFrame(columns=["layer", "unit", "class_loss_delta", "class_acc_delta"]), None
    row = found.iloc[0].to_dict()
    n = row["n_to_halve"]
    if n is None or pd.isna(n):
        return pd.DataFrame(columns=["layer", "unit", "class_loss_delta", "class_acc_delta"]), row
    return removal_order(con, run_id, group, cls, int(n)), row


def class_curves_of(con: duckdb.DuckDBPyConnection, run_id: str, layer: str) -> pd.DataFrame:
    """Every class's removal curve of one layer or group: class, n_ablated, class_acc, other_acc."""
    return con.execute(
        'SELECT "class", n_ablated, class_acc, other_acc FROM class_curves WHERE run_id = ? AND layer = ? '
        'ORDER BY "class", n_ablated', [run_id, layer]).df()


def parse_class_rank(text: str) -> tuple[str, int]:
    """``"abl_loss_delta:7"`` -> (``"abl_loss_delta"``, 7): a ``unit_classes`` metric and the class to rank by."""
    column, sep, cls = text.rpartition(":")
    if not sep:
        raise QueryError(f"rank must look like METRIC:CLASS (e.g. abl_loss_delta:7), got {text[:60]!r}.")
    check_column(column, CLASS_METRICS, "class metric")
    return column, parse_int(cls, "class (a class index)", 0, INT32_MAX)


#: Fewest candidates ``rank_by_class`` hands DuckDB from the values in memory (more when the filter keeps few).
RANK_CANDIDATES = 4096


def rank_by_class(con: duckdb.DuckDBPyConnection, f: UnitFilter, metric: str, cls: int,
                  limit: int = 50) -> pd.DataFrame:
    """The units of ``f`` ranked by one class's value of a ``unit_classes`` metric, largest first (e.g. the
    loss change on class 7 when the unit is removed, or its anomaly for class 7); units without a value
    for the class (a dead unit's anomaly) are left out. Columns layer, unit, the metric as ``class_value``,
    selectivity, pref_class_name, abl_loss_delta.

    With the run's per-class values in memory (``warehouse.class_values``) the candidates are the units
    of the largest values (every unit tied with the last one included), and DuckDB ranks those of them
    in ``f``; when fewer than ``limit`` are, more candidates are taken, up to every unit with a value.
    Any unit left out ranks below every candidate, so the rows are those of the plain join."""
    metric = check_column(metric, CLASS_METRICS, "class metric")
    inner, params = unit_sql(con, f, ("layer", "layer_index", "unit", "selectivity", "pref_class_name",
                                      "abl_loss_delta"), ordered=False, matches=False)
    grid = class_values.grid(con, f.run_id) if has_units_in_memory(con) else None
    if grid is None:
        return con.execute(
            f'SELECT m.layer, m.unit, c."{metric}" AS class_value, m.selectivity, m.pref_class_name, m.abl_loss_delta '
            f'FROM ({inner}) m JOIN unit_classes c ON c.run_id = ? AND c.layer = m.layer AND c.unit = m.unit '
            f'AND c."class" = ? WHERE NOT isnan(c."{metric}") '
            f'ORDER BY c."{metric}" DESC, m.layer_index, m.unit LIMIT ?',
            params + [f.run_id, int(cls), int(limit)]).df()
    values = class_values.values(grid, metric)
    layers = tuple(sorted({grid.layers.get(n, -1) for n in f.layers})) if f.layers else None
    take = max(8 * int(limit), RANK_CANDIDATES)
    while True:
        if 0 <= cls < grid.n_classes:
            rows, complete = class_values.top(grid, metric, int(cls), layers, take)
            column = values.values[rows, int(cls)]
        else:  # no such class: no rows
            rows, complete, column = np.zeros(0, dtype=np.int64), True, values.values[:0, 0]
        candidates = pa.table({"layer_index": grid.layer_index[rows], "unit": grid.unit[rows], "class_value": column})
        con.register("_rank_candidates", candidates)
        try:
            ranked = con.execute(
                "SELECT m.layer, m.unit, c.class_value, m.selectivity, m.pref_class_name, m.abl_loss_delta "
                f"FROM ({inner}) m JOIN _rank_candidates c ON c.layer_index = m.layer_index AND c.unit = m.unit "
                "ORDER BY c.class_value DESC, m.layer_index, m.unit LIMIT ?", params + [int(limit)]).df()
        finally:
            con.unregister("_rank_candidates")
        if len(ranked) >= limit or complete:
            return ranked
        take *= 32


def count_units(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> int:
    """How many units match ``f`` (its limit included)."""
    sql, params = unit_sql(con, f, ("unit",), ordered=False, matches=False)
    return int(con.execute(f"SELECT count(*) FROM ({sql})", params).fetchall()[0][0])


# --- Comparing runs: cumulative ablation curves, their areas, unit distributions side by side ---

def experiments(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Experiments (sweeps) with at least one run, by name."""
    rows = con.execute("SELECT DISTINCT experiment FROM runs WHERE experiment IS NOT NULL ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def runs_of(con: duckdb.DuckDBPyConnection, experiment: str | None) -> list[str]:
    """Run ids of ``experiment`` (every run when None), by label noise then seed."""
    return [r[0] for r in con.execute(
        "SELECT run_id FROM runs WHERE ? IS NULL OR experiment = ? ORDER BY label_noise, seed, run_id",
        [experiment, experiment]).fetchall()]


def curve_choices(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> pd.DataFrame:
    """The (split, layer, order) combinations with curves in any of ``run_ids``."""
    return con.execute(
        "SELECT DISTINCT split, layer, \"order\" FROM ablation_curves WHERE list_contains(?::VARCHAR[], run_id) "
        "ORDER BY split, layer, \"order\"", [list(run_ids)]).df()


def curve_bands(con: duckdb.DuckDBPyConnection, run_ids: list[str], split: str, layer: str,
                order: str) -> pd.DataFrame:
    """Per run and fraction removed: mean, std, min and max accuracy over the order's curves.

    A ``random`` order has one curve per permutation seed, so the band is the spread over seeds;
    the other orders have one curve each (std NaN, min = max = mean).
    """
    return con.execute(
        "SELECT run_id, fraction, count(*) AS n_curves, avg(accuracy) AS acc_mean, stddev_samp(accuracy) AS acc_std, "
        "min(accuracy) AS acc_min, max(accuracy) AS acc_max, avg(loss) AS loss_mean "
        "FROM ablation_curves WHERE list_contains(?::VARCHAR[], run_id) AND split = ? AND layer = ? AND \"order\" = ? "
        "GROUP BY run_id, fraction ORDER BY run_id, fraction",
        [list(run_ids), split, layer, order]).df()


def auc_table(con: duckdb.DuckDBPyConnection, run_ids: list[str], split: str | None = None,
              layer: str | None = None, order: str | None = None) -> pd.DataFrame:
    """Per run, split, layer and order: mean and std of the curves' AUC over permutation seeds, with the
    run's label noise, experiment, training seed, accuracies and generalization gap (train - test)."""
    return con.execute(
        "SELECT a.run_id, r.experiment, r.label_noise, r.seed AS train_seed, a.split, a.layer, a.\"order\", "
        "count(*) AS n_curves, avg(a.auc) AS auc_mean, stddev_samp(a.auc) AS auc_std, "
        "r.train_acc, r.test_acc, r.train_acc - r.test_acc AS gen_gap "
        "FROM ablation_auc a JOIN runs r USING (run_id) "
        "WHERE list_contains(?::VARCHAR[], a.run_id) AND (?::VARCHAR IS NULL OR a.split = ?) "
        "AND (?::VARCHAR IS NULL OR a.layer = ?) AND (?::VARCHAR IS NULL OR a.\"order\" = ?) "
        "GROUP BY ALL ORDER BY r.label_noise, r.seed, a.run_id, a.split, a.layer, a.\"order\"",
        [list(run_ids), split, split, layer, layer, order, order]).df()


def unit_distributions(con: duckdb.DuckDBPyConnection, run_ids: list[str], layers: list[str]) -> pd.DataFrame:
    """Selectivity and ablation importance (``abl_loss_delta``) of every unit of ``layers`` in ``run_ids``."""
    return con.execute(
        "SELECT run_id, layer, unit, selectivity, abl_loss_delta FROM units "
        "WHERE list_contains(?::VARCHAR[], run_id) AND list_contains(?::VARCHAR[], layer) "
        "ORDER BY run_id, layer_index, unit", [list(run_ids), list(layers)]).df()


def curve_layers(con: duckdb.DuckDBPyConnection, run_id: str, layer: str) -> list[str]:
    """The probed layers behind a curve's ``layer``: itself, or for ``last2`` the last two probed layers."""
    if layer != "last2":
        return [layer]
    return [r[0] for r in con.execute(
        "SELECT layer FROM layers WHERE run_id = ? ORDER BY layer_index DESC LIMIT 2", [run_id]).fetchall()][::-1]
