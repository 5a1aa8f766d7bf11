"""Which units: ``UnitFilter``, its fields declared once, and the SQL it becomes.

``FIELDS`` declares every filter field once: its URL parameter, its command-line option, its
text codec (parsing into typed, bounded values), the dashboard widget kind that edits it and the
SQL clauses it adds. The dashboard's URL state, the export command line (``add_arguments`` /
``from_cli`` / ``to_cli``), the explorer's widgets and ``Preset.apply`` all iterate ``FIELDS``, so
adding a filter field means adding its attribute to ``UnitFilter`` and one ``Field`` below.

SQL is built from small clause objects (``Compare``, ``OneOf``; after datasette's filters) whose
``where`` gives SQL text with ``?`` placeholders and the values to bind, and whose ``human`` gives
the same condition in words. Column names are checked against ``warehouse.schema``, so nothing a
user types is ever spliced into SQL text.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

import pyarrow as pa

from warehouse.connect import UNITS_IN_MEMORY, unit_key
from warehouse.errors import AtlasError
from warehouse.parse import INT32_MAX, INT64_MAX, ParseError, bounded_int, finite_float, layer_name, shown
from warehouse.schema import TABLES
from warehouse.text import md, md_code


class QueryError(AtlasError, ValueError):
    """A filter or query request that cannot be answered; the message names the problem."""


def _numeric_columns(table: str) -> tuple[str, ...]:
    return tuple(c.name for c in TABLES[table].columns
                 if pa.types.is_floating(c.type) or pa.types.is_integer(c.type))


#: Columns of ``units`` a range filter, an axis or a sort may name.
UNIT_METRICS: tuple[str, ...] = _numeric_columns("units")
#: Columns of ``unit_classes`` a class-level condition may name.
CLASS_METRICS: tuple[str, ...] = tuple(c for c in _numeric_columns("unit_classes") if c not in ("unit", "class"))
UNIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in TABLES["units"].columns)


@dataclass(frozen=True)
class Range:
    """``lo <= column <= hi``; a missing bound is open."""

    column: str
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class UnitFilter:
    """Which units of one run to show (each field is declared in ``FIELDS``).

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


def check_column(column: str, allowed: tuple[str, ...], what: str) -> str:
    if column not in allowed:
        raise QueryError(f"unknown {what} {shown(column)}; choose one of {', '.join(allowed)}.")
    return column


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise QueryError(f"{what} must be a finite number, got {value}.")
    return value


# --- text forms -----------------------------------------------------------------------------------

def parse_range(text: str, allowed: tuple[str, ...] = UNIT_METRICS) -> Range:
    """``"selectivity:0.5:1"`` / ``"abl_loss_delta::0.01"`` / ``"anomaly:1:"`` -> ``Range``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise QueryError(f"range {shown(text)} must look like COLUMN:LO:HI with LO or HI possibly empty, "
                         f"e.g. selectivity:0.5: .")
    column, lo, hi = parts
    check_column(column, allowed, "column")
    bounds: list[float | None] = []
    for b in (lo, hi):
        try:
            bounds.append(finite_float(b, what=f"a bound of {column}") if b.strip() else None)
        except ParseError as e:
            raise QueryError(f"range {shown(text)}: {e}") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] > bounds[1]:
        raise QueryError(f"range {shown(text)}: lower bound {bounds[0]} is above upper bound {bounds[1]}.")
    return Range(column, bounds[0], bounds[1])


def format_range(r: Range) -> str:
    """Inverse of ``parse_range``."""
    def bound(v: float | None) -> str:
        return "" if v is None else repr(float(v))
    return f"{r.column}:{bound(r.lo)}:{bound(r.hi)}"


def parse_int(text: str, what: str, lo: int, hi: int) -> int:
    """``warehouse.parse.bounded_int`` raising ``QueryError`` (what the URL state and the export catch)."""
    try:
        return bounded_int(text, lo, hi, what)
    except ParseError as e:
        raise QueryError(str(e)) from None


T = TypeVar("T")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """One value of a field <-> one text token (a URL value, a command-line argument)."""

    parse: Callable[[str], T]
    format: Callable[[T], str]


def choice(what: str, allowed: tuple[str, ...]) -> Codec[str]:
    return Codec(lambda t: check_column(t, allowed, what), str)


def _int(what: str, lo: int, hi: int) -> Codec[int]:
    return Codec(lambda t: parse_int(t, what, lo, hi), str)


def _yes_no(what: str) -> Codec[bool]:
    def parse(t: str) -> bool:
        if t not in ("yes", "no"):
            raise QueryError(f"{what} must be yes or no, got {shown(t)}.")
        return t == "yes"
    return Codec(parse, lambda v: "yes" if v else "no")


def flag(what: str) -> Codec[bool]:
    def parse(t: str) -> bool:
        if t not in ("0", "1"):
            raise QueryError(f"{what} must be 0 or 1, got {shown(t)}.")
        return t == "1"
    return Codec(parse, lambda v: "1" if v else "0")


def _layer() -> Codec[str]:
    def parse(t: str) -> str:
        try:
            return layer_name(t)
        except ParseError as e:
            raise QueryError(str(e)) from None
    return Codec(parse, str)


# --- SQL clauses ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compare:
    """``alias.column OP ?``."""

    column: str
    op: Literal[">=", "<=", "="]
    value: Any

    def where(self, alias: str) -> tuple[str, list[Any]]:
        return f'{alias}."{self.column}" {self.op} ?', [self.value]

    def human(self) -> str:
        word = {">=": "≥", "<=": "≤", "=": "is"}[self.op]
        return f"{self.column} {word} {self.value:g}" if isinstance(self.value, float) else \
            f"{self.column} {word} {self.value}"


@dataclass(frozen=True)
class OneOf:
    """``alias.column IN (?, ...)``."""

    column: str
    values: tuple[Any, ...]

    def where(self, alias: str) -> tuple[str, list[Any]]:
        return f'{alias}."{self.column}" IN ({", ".join("?" * len(self.values))})', list(self.values)

    def human(self) -> str:
        return f"{self.column} in {', '.join(map(str, self.values))}"


Clause = Compare | OneOf


def where_sql(clauses: Iterable[Clause], alias: str) -> tuple[list[str], list[Any]]:
    """The clauses' SQL (to be AND-ed) and their parameters, in order."""
    sql, params = [], []
    for c in clauses:
        s, p = c.where(alias)
        sql.append(s)
        params += p
    return sql, params


def range_clauses(r: Range, allowed: tuple[str, ...], what: str) -> list[Clause]:
    col = check_column(r.column, allowed, what)
    out: list[Clause] = []
    if r.lo is not None:
        out.append(Compare(col, ">=", _finite(r.lo, f"lower bound of {r.column}")))
    if r.hi is not None:
        out.append(Compare(col, "<=", _finite(r.hi, f"upper bound of {r.column}")))
    return out


# --- the fields ------------------------------------------------------------------------------------

Widget = Literal["layers", "ranges", "classes", "class", "tristate", "choice", "flag", "count"]


@dataclass(frozen=True)
class Field:
    """One field of ``UnitFilter`` in all its forms.

    ``many``: a tuple of values, written as one comma-joined URL value (``joined``) or repeated.
    ``unit_sql`` / ``class_sql``: the clauses the value adds on ``units`` / on ``unit_classes``
    rows (class-level conditions). ``preset_keeps``: a preset does not reset it (run, layers, class).
    ``cli_append``: command-line values add to a preset's instead of replacing them.
    """

    name: str
    url: str
    flag: str
    codec: Codec[Any]
    label: str = ""
    help: str = ""
    widget: Widget = "choice"
    key: str = ""
    many: bool = False
    joined: bool = False
    preset_keeps: bool = False
    cli_append: bool = False
    choices: tuple[str, ...] = ()
    unit_sql: Callable[[Any], list[Clause]] | None = None
    class_sql: Callable[[Any], list[Clause]] | None = None
    fallback: Any = None  # the default of a field that is not UnitFilter's (the dashboard's view state)

    @property
    def default(self) -> Any:
        own = UnitFilter.__dataclass_fields__.get(self.name)
        return own.default if own is not None else self.fallback

    def tokens(self, value: Any) -> list[str]:
        """The value as text tokens (none for the default)."""
        if value == self.default:
            return []
        return [self.codec.format(v) for v in value] if self.many else [self.codec.format(value)]


def _ranges(allowed: tuple[str, ...], what: str) -> Callable[[tuple[Range, ...]], list[Clause]]:
    return lambda rs: [c for r in rs for c in range_clauses(r, allowed, what)]


FIELDS: tuple[Field, ...] = (
    Field("layers", "layers", "--layer", _layer(), "Layers (none = all)", "layer to include (repeatable; default all)",
          "layers", "layers", many=True, joined=True, preset_keeps=True,
          unit_sql=lambda v: [OneOf("layer", tuple(v))] if v else [],
          class_sql=lambda v: [OneOf("layer", tuple(v))] if v else []),
    Field("ranges", "range", "--range", Codec(parse_range, format_range), "Metric ranges",
          f"metric range COL:LO:HI, a bound may be empty (repeatable); COL one of {', '.join(UNIT_METRICS)}",
          "ranges", "metrics", many=True, cli_append=True, choices=UNIT_METRICS,
          unit_sql=_ranges(UNIT_METRICS, "metric")),
    Field("pref_classes", "pref", "--pref-class", _int("preferred class (a class index)", 0, INT32_MAX), "Preferred class",
          "preferred class (repeatable)", "classes", "pref", many=True, joined=True,
          unit_sql=lambda v: [OneOf("pref_class", tuple(int(c) for c in v))] if v else []),
    Field("dead", "dead", "--dead", _yes_no("dead"), "Dead units", "only dead (yes) / only live (no) units",
          "tristate", "dead", unit_sql=lambda v: [] if v is None else [Compare("dead", "=", bool(v))]),
    Field("condition_class", "cls", "--class", _int("class (a class index)", 0, INT32_MAX), "Class-level conditions hold for",
          "the class the class conditions apply to (default: any class)", "class", "cls", preset_keeps=True,
          class_sql=lambda v: [] if v is None else [Compare("class", "=", int(v))]),
    Field("class_conditions", "cc", "--class-condition",
          Codec(lambda t: parse_range(t, CLASS_METRICS), format_range),
          "Class-level conditions (all on the same class)",
          f"condition COL:LO:HI that one class must meet, all on the same class (repeatable); "
          f"COL one of {', '.join(CLASS_METRICS)}", "ranges", "cmetrics", many=True, cli_append=True,
          choices=CLASS_METRICS, class_sql=_ranges(CLASS_METRICS, "class metric")),
    Field("order_by", "sort", "--sort", choice("sort column", UNIT_METRICS), "Sort by",
          "sort column (default: the preset's, else layer order)", "choice", "sort", choices=UNIT_METRICS),
    Field("descending", "desc", "--desc", flag("desc"), "Descending", "sort descending", "flag", "desc"),
    Field("limit", "limit", "--limit", _int("limit (a positive number of units)", 1, INT64_MAX), "At most this many units",
          "at most this many units", "count", "limit"),
)
FIELD = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: dict[str, Any] = field(default_factory=dict)

    def apply(self, base: UnitFilter) -> UnitFilter:
        """``base``'s run, layers and class, with this preset's conditions and order."""
        cleared = replace(base, **{f.name: f.default for f in FIELDS if not f.preset_keeps})
        return replace(cleared, **self.spec)

    def matches(self, f: UnitFilter) -> bool:
        """Whether ``f`` is this preset applied as it is (nothing changed but what a preset keeps)."""
        return self.apply(f) == f


# --- URL and command-line forms ---------------------------------------------------------------------

def _values(params: Mapping[str, Any], key: str) -> list[str]:
    """Every value of a query parameter (``st.query_params`` has ``get_all``; plain dicts hold lists)."""
    if hasattr(params, "get_all"):
        return list(params.get_all(key))
    value = params.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def parse_fields(fields: Iterable[Field], params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The typed values of ``fields`` found in URL ``params`` and the notices (markdown, values escaped)
    for the values ignored.

    A malformed or out-of-range value, or a repeated one, is left out and named: one notice per
    parameter however many values it repeats. The others are kept. Fields absent from ``params``
    are absent from the result.
    """
    values: dict[str, Any] = {}
    notices: list[str] = []
    for f in fields:
        raw = _values(params, f.url)
        if not raw:
            continue
        if f.many:
            tokens = [t for r in raw for t in (r.split(",") if f.joined else [r]) if t != ""]
        else:
            if len(raw) > 1:
                notices.append(f"`{f.url}` was given {len(raw)} times; the last value is used.")
            tokens = raw[-1:]
        items: list[Any] = []
        bad: dict[str, str] = {}  # token -> why, in order: one notice per parameter, however many tokens
        repeated: dict[str, None] = {}
        for t in tokens:
            try:
                item = f.codec.parse(t)
            except QueryError as e:
                bad.setdefault(t, str(e))
                continue
            if f.many and item in items:
                repeated.setdefault(t)
                continue
            items.append(item)
        if bad:
            first, why = next(iter(bad.items()))
            more = f" (and {len(bad) - 1:,} other value(s) of `{f.url}`)" if len(bad) > 1 else ""
            notices.append(f"{md_code(f'{f.url}={first[:60]}')}{more} is ignored: {md(why)}")
        if repeated:
            listed = ", ".join(md_code(t[:60]) for t in list(repeated)[:3]) + (", …" if len(repeated) > 3 else "")
            notices.append(f"`{f.url}`: {listed} is repeated; each value is used once.")
        if f.many:
            values[f.name] = tuple(items)
        elif items:
            values[f.name] = items[0]
    return values, notices


def format_fields(fields: Iterable[Field], values: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """URL parameters for ``values``; defaults are left out to keep the URL short."""
    out: dict[str, str | list[str]] = {}
    for f in fields:
        tokens = f.tokens(values[f.name])
        if not tokens:
            continue
        if f.many and f.joined:
            out[f.url] = ",".join(tokens)
        elif f.many:
            out[f.url] = tokens
        else:
            out[f.url] = tokens[0]
    return out


def filter_params(f: UnitFilter) -> dict[str, str | list[str]]:
    """``f``'s fields as URL parameters (its run not included)."""
    return format_fields(FIELDS, {fld.name: getattr(f, fld.name) for fld in FIELDS})


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """One command-line option per field (values parsed by ``from_cli``, so errors read the same as
    in the dashboard)."""
    for f in FIELDS:
        if f.widget == "flag":
            ap.add_argument(f.flag, dest=f.name, action="store_true", help=f.help)
        elif f.many:
            ap.add_argument(f.flag, dest=f.name, action="append", default=[], help=f.help, metavar=_metavar(f))
        else:
            ap.add_argument(f.flag, dest=f.name, default=None, help=f.help, metavar=_metavar(f))


def _metavar(f: Field) -> str:
    return "COL:LO:HI" if f.widget == "ranges" else f.url.upper()


def from_cli(args: argparse.Namespace, run_id: str, preset: Preset | None = None) -> UnitFilter:
    """The filter of parsed command-line ``args``: ``preset`` first, the options added to it."""
    f = UnitFilter(run_id)
    given: dict[str, Any] = {}
    for fld in FIELDS:
        raw = getattr(args, fld.name)
        if fld.widget == "flag":
            if raw:
                given[fld.name] = True
        elif fld.many:
            if raw:
                given[fld.name] = tuple(fld.codec.parse(t) for t in raw)
        elif raw is not None:
            given[fld.name] = fld.codec.parse(raw)
    if preset is not None:
        f = preset.apply(replace(f, **{k: v for k, v in given.items() if FIELD[k].preset_keeps}))
        if "order_by" in given:  # an explicit sort is ascending unless --desc says otherwise
            given.setdefault("descending", False)
        for k, v in list(given.items()):
            if FIELD[k].cli_append:
                given[k] = getattr(f, k) + v
    return replace(f, **given)


def to_cli(f: UnitFilter) -> list[str]:
    """Command-line options that give ``f`` back through ``from_cli`` (the run not included)."""
    out: list[str] = []
    for fld in FIELDS:
        value = getattr(f, fld.name)
        if fld.widget == "flag":
            out += [fld.flag] if value else []
        else:
            out += [a for t in fld.tokens(value) for a in (fld.flag, t)]
    return out


def describe(f: UnitFilter) -> str:
    """The filter's conditions in words, e.g. "layer in fc1 · selectivity ≥ 0.5"; "" for none."""
    unit = [c.human() for fld in FIELDS if fld.unit_sql for c in fld.unit_sql(getattr(f, fld.name))]
    cls = [c.human() for fld in FIELDS if fld.class_sql and fld.name != "layers"
           for c in fld.class_sql(getattr(f, fld.name))]
    parts = unit + ([f"some class with {' and '.join(cls)}"] if cls else [])
    return " · ".join(parts)


# --- the SELECT ----------------------------------------------------------------------------------

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
    clauses = [Compare("run_id", "=", f.run_id)]
    clauses += [c for fld in FIELDS if fld.class_sql for c in fld.class_sql(getattr(f, fld.name))]
    where, params = where_sql(clauses, "unit_classes")
    return f'SELECT layer, unit, "class" FROM unit_classes WHERE {" AND ".join(where)}', params


def _grouped(rows: str, join: str = "") -> str:
    """Per unit, the class-ordered list of the classes among ``rows`` (integers; named at the end:
    reading the class_name strings of unit_classes rows costs about a third of the query)."""
    return (f'SELECT c.layer, c.unit, list(c."class" ORDER BY c."class") AS matched FROM ({rows}) c {join} '
            f"GROUP BY c.layer, c.unit")


def order_terms(alias: str, column: str, descending: bool) -> str:
    """The filter's order (``column``, ties by layer and unit) as ORDER BY terms on ``alias``."""
    direction = "DESC" if descending else "ASC"
    return f'{alias}."{column}" {direction} NULLS LAST, {alias}.layer_index, {alias}.unit'


def _order(alias: str, column: str, descending: bool) -> str:
    return "ORDER BY " + order_terms(alias, column, descending)


def _class_names(matched: str) -> str:
    return f"list_transform({matched}, lambda k: r.class_names[k + 1]) AS matched_classes"


def class_match_sql(f: UnitFilter) -> tuple[str, list[Any]]:
    """(layer_index, unit, matched, unit_key): the units with some class meeting all of ``f``'s class-level
    conditions and those classes, class-ordered; what ``filter_sql``'s ``class_table`` must hold. Keyed by
    the layer's index: joining a million units on two integers is about twice as fast as on a name, and on
    the one integer ``unit_key`` (``warehouse.connect.unit_key``) faster again in memory."""
    rows, params = _class_rows_sql(f)
    return (f"SELECT l.layer_index, m.unit, m.matched, {unit_key('l.layer_index', 'm.unit')} AS unit_key "
            f"FROM ({_grouped(rows)}) m JOIN layers l ON l.run_id = ? AND l.layer = m.layer"), params + [f.run_id]


def needs_class_scan(f: UnitFilter, memory: bool) -> bool:
    """Whether ``filter_sql`` would read ``unit_classes`` for ``f`` (a ``class_table`` saves that)."""
    by_class = bool(f.class_conditions) or f.condition_class is not None
    return by_class and not (_anomaly_floor(f) is not None and memory)


def filter_sql(f: UnitFilter, columns: tuple[str, ...] = UNIT_COLUMNS, ordered: bool = True,
               matches: bool = True, memory: bool = False, class_table: str | None = None) -> tuple[str, list[Any]]:
    """One SELECT over ``units``, plus ``matched_classes`` when class conditions are set and ``matches``.

    ``ordered=False`` leaves out the ORDER BY when no limit depends on it (counts, samples).
    ``unit_classes`` is scanned once at most: for membership and matched classes together, or,
    when ``units.anomaly_max`` answers membership, for the matched classes of the rows kept, unless
    ``memory`` says the connection holds ``units_in_memory``, whose ``class_anomaly`` names them.
    ``class_table`` names a table holding ``class_match_sql(f)``'s rows: then nothing scans ``unit_classes``.
    """
    for c in columns:
        check_column(c, UNIT_COLUMNS, "column")
    order = check_column(f.order_by, UNIT_METRICS, "sort column")
    if f.limit is not None and not 1 <= f.limit <= INT64_MAX:
        raise QueryError(f"limit must be between 1 and {INT64_MAX:,}, got {f.limit}.")
    by_class = bool(f.class_conditions) or f.condition_class is not None
    floor = _anomaly_floor(f) if by_class else None
    scan = by_class and floor is None  # membership needs unit_classes
    gather = by_class and matches
    from_memory = gather and floor is not None and memory
    rows, row_params = _class_rows_sql(f) if by_class else ("", [])
    if by_class and class_table is not None and not from_memory:
        if not class_table.isidentifier():
            raise QueryError(f"not a table name: {class_table!r}.")
        rows, row_params, scan = "", [], True

    source, params, extra = "units u", [], ""
    if class_table is not None and scan:  # in memory, joined on the one-integer unit_key (see connect.UNIT_KEY_SHIFT)
        source = f"{UNITS_IN_MEMORY} u" if memory else source
        on = "{0}.unit_key = u.unit_key" if memory else "{0}.layer_index = u.layer_index AND {0}.unit = u.unit"
    if class_table is not None and scan and gather:
        source += f" JOIN {class_table} m ON {on.format('m')}"
        extra = ", m.matched"
    elif class_table is not None and scan:
        source += f" SEMI JOIN {class_table} c ON {on.format('c')}"
    elif from_memory:
        source, extra = f"{UNITS_IN_MEMORY} u", ", u.class_anomaly"
    elif scan and gather:
        source += f" JOIN ({_grouped(rows)}) m ON m.layer = u.layer AND m.unit = u.unit"
        params, extra = list(row_params), ", m.matched"
    elif scan:
        source += f" SEMI JOIN ({rows}) c ON c.layer = u.layer AND c.unit = u.unit"
        params = list(row_params)
    clauses: list[Clause] = [Compare("run_id", "=", f.run_id)]
    if floor is not None:
        clauses.append(Compare("anomaly_max", ">=", _finite(floor, "lower bound of anomaly")))
    clauses += [c for fld in FIELDS if fld.unit_sql for c in fld.unit_sql(getattr(f, fld.name))]
    where, where_params = where_sql(clauses, "u")
    params += where_params

    cols = tuple(dict.fromkeys((*columns, "layer", "unit", order, "layer_index"))) if gather else columns
    select = ", ".join(f'u."{c}"' for c in cols) + extra
    sql = f"SELECT {select} FROM {source} WHERE {' AND '.join(where)}"
    if ordered or f.limit is not None:
        sql += " " + _order("u", order, f.descending)
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(int(f.limit))
    if not gather:
        return sql, params

    shown = ", ".join(f'page."{c}"' for c in columns)
    if scan:
        sql = (f"WITH page AS ({sql}) SELECT {shown}, {_class_names('page.matched')} FROM page "
               f"JOIN runs r ON r.run_id = ?")
        params.append(f.run_id)
    elif from_memory:
        kept = "list_filter(range(len(page.class_anomaly)), lambda k: page.class_anomaly[k + 1] >= ?)"
        sql = f"WITH page AS ({sql}) SELECT {shown}, {_class_names(kept)} FROM page JOIN runs r ON r.run_id = ?"
        params += [floor, f.run_id]
    else:
        kept = _grouped(rows, "SEMI JOIN page ON page.layer = c.layer AND page.unit = c.unit")
        sql = (f"WITH page AS ({sql}), m AS ({kept}) SELECT {shown}, {_class_names('m.matched')} FROM page "
               f"JOIN runs r ON r.run_id = ? LEFT JOIN m ON m.layer = page.layer AND m.unit = page.unit")
        params += row_params + [f.run_id]
    if ordered or f.limit is not None:
        sql += " " + _order("page", order, f.descending)
    return sql, params
