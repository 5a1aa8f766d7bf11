"""The dashboard's and the export's questions to the warehouse, as SQL with bound parameters.

A ``UnitFilter`` is a typed description of "which units": run, layers, metric ranges, preferred
classes and class-level conditions. ``filter_sql`` turns it into one SELECT whose user values are
all ``?`` parameters; column names are checked against ``warehouse.schema`` so nothing a user
types is ever spliced into SQL text. The text forms (``parse_range`` / ``format_range``) are shared
by the dashboard's URL and the export command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from warehouse.connect import UNITS_IN_MEMORY, has_units_in_memory
from warehouse.schema import TABLES
from warehouse.errors import AtlasError


def _numeric_columns(table: str) -> tuple[str, ...]:
    return tuple(c.name for c in TABLES[table].columns
                 if pa.types.is_floating(c.type) or pa.types.is_integer(c.type))


#: Columns of ``units`` a range filter, an axis or a sort may name.
UNIT_METRICS: tuple[str, ...] = _numeric_columns("units")
#: Columns of ``unit_classes`` a class-level condition may name.
CLASS_METRICS: tuple[str, ...] = tuple(c for c in _numeric_columns("unit_classes") if c not in ("unit", "class"))
#: Columns of ``units`` shown with a layer percentile on the unit page.
PERCENTILE_METRICS: tuple[str, ...] = tuple(
    c.name for c in TABLES["units"].columns if pa.types.is_floating(c.type))
UNIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in TABLES["units"].columns)


class QueryError(AtlasError, ValueError):
    """A filter or query request that cannot be answered; the message names the problem."""


@dataclass(frozen=True)
class Range:
    """``lo <= column <= hi``; a missing bound is open."""

    column: str
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class UnitFilter:
    """Which units of one run to show.

    ``class_conditions`` all apply to the *same* class row of ``unit_classes``: a unit matches
    when some class (``condition_class`` if given) satisfies every one of them, e.g. "gradient
    high and activation low for one class". ``matched_classes`` lists those classes per unit.
    """

    run_id: str
    layers: tuple[str, ...] = ()
    ranges: tuple[Range, ...] = ()
    pref_classes: tuple[int, ...] = ()
    class_conditions: tuple[Range, ...] = ()
    condition_class: int | None = None
    dead: bool | None = None
    order_by: str = "layer_index"
    descending: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: dict[str, Any] = field(default_factory=dict)

    def apply(self, base: UnitFilter) -> UnitFilter:
        """``base``'s run, layers and class, with this preset's conditions and order."""
        cleared = replace(base, ranges=(), pref_classes=(), class_conditions=(), dead=None,
                          order_by="layer_index", descending=False, limit=None)
        return replace(cleared, **self.spec)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("high gradient, low activation",
           "Some class (or the chosen one) pushes the unit up while the unit is silent for it: "
           "unit_classes.anomaly >= 1, i.e. both the gradient signal and the activation deficit are at "
           "least one layer standard deviation (docs/metrics.md).",
           {"class_conditions": (Range("anomaly", 1.0, None),), "order_by": "anomaly_max", "descending": True}),
    Preset("highly selective", "Class selectivity index of at least 0.5 (mu_max at least 3x mu_rest).",
           {"ranges": (Range("selectivity", 0.5, None),), "order_by": "selectivity", "descending": True}),
    Preset("most important", "The 50 units whose ablation raises the loss most.",
           {"order_by": "abl_loss_delta", "descending": True, "limit": 50}),
    Preset("selective but unimportant",
           "Selectivity of at least 0.5, yet ablating the unit changes the loss by less than 0.005.",
           {"ranges": (Range("selectivity", 0.5, None), Range("abl_loss_delta", None, 0.005)),
            "order_by": "selectivity", "descending": True}),
    Preset("dead units", "Never active on the evaluation set.", {"dead": True}),
)}


def _check_column(column: str, allowed: tuple[str, ...], what: str) -> str:
    if column not in allowed:
        raise QueryError(f"unknown {what} {column!r}; choose one of {', '.join(allowed)}.")
    return column


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise QueryError(f"{what} must be a finite number, got {value}.")
    return value


def parse_range(text: str, allowed: tuple[str, ...] = UNIT_METRICS) -> Range:
    """``"selectivity:0.5:1"`` / ``"abl_loss_delta::0.01"`` / ``"anomaly:1:"`` -> ``Range``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise QueryError(f"range {text!r} must look like COLUMN:LO:HI with LO or HI possibly empty, "
                         f"e.g. selectivity:0.5: .")
    column, lo, hi = parts
    _check_column(column, allowed, "column")
    bounds: list[float | None] = []
    for b in (lo, hi):
        try:
            value = float(b) if b.strip() else None
        except ValueError:
            raise QueryError(f"range {text!r}: bound {b!r} is not a number.") from None
        bounds.append(_finite(value, f"a bound of {column}"))
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise QueryError(f"range {text!r}: lower bound {bounds[0]} is above upper bound {bounds[1]}.")
    return Range(column, bounds[0], bounds[1])


def format_range(r: Range) -> str:
    """Inverse of ``parse_range``."""
    fmt = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    return f"{r.column}:{fmt(r.lo)}:{fmt(r.hi)}"


def _range_sql(alias: str, r: Range, allowed: tuple[str, ...], what: str) -> tuple[list[str], list[Any]]:
    col = f'{alias}."{_check_column(r.column, allowed, what)}"'
    sql, params = [], []
    if r.lo is not None:
        sql.append(f"{col} >= ?")
        params.append(_finite(r.lo, f"lower bound of {r.column}"))
    if r.hi is not None:
        sql.append(f"{col} <= ?")
        params.append(_finite(r.hi, f"upper bound of {r.column}"))
    return sql, params


def _anomaly_floor(f: UnitFilter) -> float | None:
    """``lo`` when the only class-level condition is "some class has anomaly >= lo".

    ``units.anomaly_max`` is the largest anomaly over a unit's classes (NaN classes skipped), so
    that condition is exactly ``anomaly_max >= lo`` and membership needs no scan of the ten times
    larger ``unit_classes`` (the "high gradient, low activation" preset).
    """
    if f.condition_class is None and len(f.class_conditions) == 1:
        r = f.class_conditions[0]
        if r.column == "anomaly" and r.lo is not None and r.hi is None:
            return r.lo
    return None


def _class_rows_sql(f: UnitFilter) -> tuple[str, list[Any]]:
    """(layer, unit, class) of the ``unit_classes`` rows meeting all class-level conditions."""
    where, params = ["run_id = ?"], [f.run_id]
    if f.layers:
        where.append(f"layer IN ({', '.join('?' * len(f.layers))})")
        params += list(f.layers)
    if f.condition_class is not None:
        where.append('"class" = ?')
        params.append(int(f.condition_class))
    for r in f.class_conditions:
        s, p = _range_sql("unit_classes", r, CLASS_METRICS, "class metric")
        where += s
        params += p
    return f'SELECT layer, unit, "class" FROM unit_classes WHERE {" AND ".join(where)}', params


def filter_sql(f: UnitFilter, columns: tuple[str, ...] = UNIT_COLUMNS, ordered: bool = True,
               matches: bool = True, memory: bool = False) -> tuple[str, list[Any]]:
    """One SELECT over ``units``, plus ``matched_classes`` when class conditions are set and ``matches``.

    ``ordered=False`` leaves out the ORDER BY when no limit depends on it (counts, samples).
    ``unit_classes`` is scanned once at most: for membership and matched classes together, or,
    when ``units.anomaly_max`` answers membership, for the matched classes of the rows kept, unless
    ``memory`` says the connection holds ``units_in_memory``, whose ``class_anomaly`` names them.
    """
    for c in columns:
        _check_column(c, UNIT_COLUMNS, "column")
    order = _check_column(f.order_by, UNIT_METRICS, "sort column")
    if f.limit is not None and f.limit < 1:
        raise QueryError(f"limit must be positive, got {f.limit}.")
    by_class = bool(f.class_conditions) or f.condition_class is not None
    floor = _anomaly_floor(f) if by_class else None
    scan = by_class and floor is None  # membership needs unit_classes
    gather = by_class and matches
    from_memory = gather and floor is not None and memory
    rows, row_params = _class_rows_sql(f) if by_class else ("", [])
    # Classes are gathered as integers and named from runs.class_names at the end: reading the
    # class_name strings of unit_classes rows costs about a third of the query.
    grouped = (f'SELECT c.layer, c.unit, list(c."class" ORDER BY c."class") AS matched FROM ({rows}) c {{}} '
               f"GROUP BY c.layer, c.unit")
    source, params, extra = "units u", [], ""
    if from_memory:
        source, extra = f"{UNITS_IN_MEMORY} u", ", u.class_anomaly"
    elif scan and gather:
        source += f" JOIN ({grouped.format('')}) m ON m.layer = u.layer AND m.unit = u.unit"
        params, extra = list(row_params), ", m.matched"
    elif scan:
        source += f" SEMI JOIN ({rows}) c ON c.layer = u.layer AND c.unit = u.unit"
        params = list(row_params)
    where = ["u.run_id = ?"]
    params.append(f.run_id)
    if floor is not None:
        where.append('u."anomaly_max" >= ?')
        params.append(_finite(floor, "lower bound of anomaly"))
    if f.layers:
        where.append(f"u.layer IN ({', '.join('?' * len(f.layers))})")
        params += list(f.layers)
    for r in f.ranges:
        s, p = _range_sql("u", r, UNIT_METRICS, "metric")
        where += s
        params += p
    if f.pref_classes:
        where.append(f"u.pref_class IN ({', '.join('?' * len(f.pref_classes))})")
        params += [int(c) for c in f.pref_classes]
    if f.dead is not None:
        where.append("u.dead = ?")
        params.append(bool(f.dead))
    direction = "DESC" if f.descending else "ASC"
    order_sql = f'ORDER BY {{t}}."{order}" {direction} NULLS LAST, {{t}}.layer_index, {{t}}.unit'
    cols = tuple(dict.fromkeys((*columns, "layer", "unit", order, "layer_index"))) if gather else columns
    select = ", ".join(f'u."{c}"' for c in cols) + extra
    sql = f"SELECT {select} FROM {source} WHERE {' AND '.join(where)}"
    if ordered or f.limit is not None:
        sql += " " + order_sql.format(t="u")
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(int(f.limit))
    if not gather:
        return sql, params
    shown = ", ".join(f'page."{c}"' for c in columns)
    names = "list_transform({}.matched, lambda k: r.class_names[k + 1]) AS matched_classes"
    if scan:
        sql = f"WITH page AS ({sql}) SELECT {shown}, {names.format('page')} FROM page JOIN runs r ON r.run_id = ?"
        params.append(f.run_id)
    elif from_memory:
        listed = ("list_transform(list_filter(range(len(page.class_anomaly)), lambda k: page.class_anomaly[k + 1] >= ?), "
                  "lambda k: r.class_names[k + 1]) AS matched_classes")
        sql = f"WITH page AS ({sql}) SELECT {shown}, {listed} FROM page JOIN runs r ON r.run_id = ?"
        params += [floor, f.run_id]
    else:
        kept = grouped.format("SEMI JOIN page ON page.layer = c.layer AND page.unit = c.unit")
        sql = (f"WITH page AS ({sql}), m AS ({kept}) SELECT {shown}, {names.format('m')} FROM page "
               f"JOIN runs r ON r.run_id = ? LEFT JOIN m ON m.layer = page.layer AND m.unit = page.unit")
        params += row_params + [f.run_id]
    if ordered or f.limit is not None:
        sql += " " + order_sql.format(t="page")
    return sql, params


def filter_units(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> pd.DataFrame:
    """The units matching ``f``, every column of ``units`` (and ``matched_classes``)."""
    sql, params = filter_sql(f, memory=has_units_in_memory(con))
    return con.execute(sql, params).df()


def filter_units_arrow(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> pa.Table:
    sql, params = filter_sql(f, memory=has_units_in_memory(con))
    return con.sql(sql, params=params).to_arrow_table()


def scatter_data(con: duckdb.DuckDBPyConnection, f: UnitFilter, x: str, y: str,
                 max_points: int = 50_000) -> tuple[pd.DataFrame, int]:
    """Points (layer, layer_index, unit, pref_class_name, x, y) of the filtered units and their total count.

    Above ``max_points`` a deterministic sample is returned: the ``max_points`` units with the
    smallest hash of (layer, unit), so the plot stays responsive and does not change between
    reruns. A pre-filter on the hash range keeps the sort to about 1.25 x ``max_points`` rows.
    """
    x = _check_column(x, UNIT_METRICS, "x axis")
    y = _check_column(y, UNIT_METRICS, "y axis")
    inner, params = filter_sql(f, tuple(dict.fromkeys(("layer", "layer_index", "unit", "pref_class_name", x, y))),
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
    cols = [_check_column(c, PERCENTILE_METRICS, "metric") for c in values]
    finite = {c: v for c, v in values.items() if v is not None and math.isfinite(v)}
    exprs = [f'100.0 * count(*) FILTER (WHERE "{c}" <= ?) / nullif(count(*) FILTER (WHERE isfinite("{c}")), 0)'
             for c in cols if c in finite]
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
        'SELECT "class", class_name, n, mean_act, mean_rect, grad_mean, grad_abs_mean, taylor, frac_active, '
        'anomaly, abl_acc_delta, abl_loss_delta FROM unit_classes WHERE run_id = ? AND layer = ? AND unit = ? '
        'ORDER BY "class"', [run_id, layer, int(unit)]).df()
    trace = con.execute(
        'SELECT epoch, "class", class_name, n, mean_act, mean_rect, grad_mean FROM train_trace '
        'WHERE run_id = ? AND layer = ? AND unit = ? ORDER BY epoch, "class"', [run_id, layer, int(unit)]).df()
    pct = layer_percentiles(con, run_id, layer, {c: row[c] for c in PERCENTILE_METRICS})
    return UnitPage(row, layer_rows.iloc[0].to_dict() if len(layer_rows) else {}, classes, trace, pct)


def count_units(con: duckdb.DuckDBPyConnection, f: UnitFilter) -> int:
    """How many units match ``f`` (its limit included)."""
    sql, params = filter_sql(f, ("unit",), ordered=False, matches=False)
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
