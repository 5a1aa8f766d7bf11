"""The pages' state as URL query parameters, parsed in one place into typed, bounded values.

Explorer parameters: ``run``, the filter's fields (``warehouse.filters.FIELDS``: ``layers``,
``range``, ``pref``, ``dead``, ``cls``, ``cc``, ``sort``, ``desc``, ``limit``) and the view's
(``VIEW_FIELDS``: ``preset``, ``x``, ``y``, ``color``, ``logx``, ``logy``). A link holding only
``run`` and ``preset`` opens the preset. Range syntax is ``warehouse.filters.parse_range``'s, the
same as the export command line. A link with a preset and none of the fields a preset sets opens
the preset (on the link's layers and class). ``parse`` never raises: each malformed, out-of-range or repeated
value is left out and named in a notice the page shows (markdown, every value from the URL or the run
escaped: ``warehouse.text``); ``decode`` is its strict form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from warehouse.filters import (FIELDS, UNIT_METRICS, Codec, Field, QueryError, UnitFilter, choice, filter_params,
                               flag, format_fields, parse_fields, parse_int)
from warehouse.parse import INT32_MAX, ParseError, layer_name, shown
from warehouse.queries import PRESETS, parse_class_rank
from warehouse import run_fit
from warehouse.layout import RUN_ID_PATTERN
from warehouse.text import md, md_code

DEFAULT_X = "selectivity"
DEFAULT_Y = "abl_loss_delta"
RANK_DEFAULT = "abl_loss_delta"  # the per-class metric a rank by one class starts with
COLORS = ("layer", "pref_class_name")
UNIT_INDEX_MAX = INT32_MAX
RUN_ID_RULE = "not a run id (1-128 letters, digits, '.', '_' or '-')."


VIEW_FIELDS: tuple[Field, ...] = (
    Field("preset", "preset", "", choice("preset", tuple(PRESETS))),
    Field("x", "x", "", choice("x", UNIT_METRICS), fallback=DEFAULT_X),
    Field("y", "y", "", choice("y", UNIT_METRICS), fallback=DEFAULT_Y),
    Field("color", "color", "", choice("color", COLORS), fallback="layer"),
    Field("log_x", "logx", "", flag("logx"), fallback=False),
    Field("log_y", "logy", "", flag("logy"), fallback=False),
    Field("rank", "rank", "", Codec(lambda t: ":".join(map(str, parse_class_rank(t))), str)),
)


@dataclass(frozen=True)
class ExplorerState:
    filter: UnitFilter
    preset: str | None = None
    x: str = DEFAULT_X
    y: str = DEFAULT_Y
    color: str = "layer"
    log_x: bool = False
    log_y: bool = False
    rank: str | None = None  # "METRIC:CLASS": the units also ranked by one class's value of a unit_classes metric

    @property
    def preset_modified(self) -> bool:
        """A preset is chosen, and the filter has been changed since."""
        return self.preset is not None and not PRESETS[self.preset].matches(self.filter)


def one(params: Mapping[str, Any], key: str) -> str | None:
    """The last value of a query parameter (``st.query_params`` or a plain dict)."""
    if hasattr(params, "get_all"):
        values = list(params.get_all(key))
    else:
        v = params.get(key)
        values = [] if v is None else (list(v) if isinstance(v, (list, tuple)) else [v])
    return str(values[-1]) if values else None


def parse_run(params: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    run = one(params, "run")
    if run is not None and not RUN_ID_PATTERN.fullmatch(run):
        return None, [f"{md_code('run=' + run[:40])} is ignored: " + md(RUN_ID_RULE)]
    return run, []


def parse(params: Mapping[str, Any]) -> tuple[ExplorerState | None, list[str]]:
    """The explorer state in ``params`` (None without a ``run``) and a notice per value ignored."""
    run, notices = parse_run(params)
    if not run:
        return None, notices
    values, more = parse_fields(FIELDS, params)
    view, also = parse_fields(VIEW_FIELDS, params)
    f = UnitFilter(run, **values)
    preset = view.get("preset")
    if preset and not any(one(params, fld.url) is not None for fld in FIELDS if not fld.preset_keeps):
        f = PRESETS[preset].apply(f)  # a short link: ?run=...&preset=...[&layers=...]
    return ExplorerState(f, **view), notices + more + also


def decode(params: Mapping[str, Any]) -> ExplorerState | None:
    """``parse``, raising ``QueryError`` with the first notice instead of leaving values out."""
    state, notices = parse(params)
    if notices:
        raise QueryError(notices[0])
    return state


def encode(state: ExplorerState) -> dict[str, str | list[str]]:
    """Query parameters for ``state``; defaults are left out to keep the URL short."""
    out: dict[str, str | list[str]] = {"run": state.filter.run_id}
    out.update(filter_params(state.filter))
    out.update(format_fields(VIEW_FIELDS, {f.name: getattr(state, f.name) for f in VIEW_FIELDS}))
    return out


def for_run(state: ExplorerState, layers: list[str], classes: list[str]) -> tuple[ExplorerState, list[str]]:
    """``state`` without the layers and classes its run does not have (``warehouse.run_fit``, the export
    command line's check), and a notice for each, naming what the run has."""
    f, misfits = run_fit.fit(state.filter, layers, classes)
    notices = run_fit.notices(misfits, f.run_id, layers, classes)
    rank = state.rank
    if rank is not None and not 0 <= int(rank.rpartition(":")[2]) < len(classes):
        notices.append(f"{md_code('rank=' + rank)} is ignored: run {md_code(f.run_id)} has "
                       f"{run_fit.classes_text(classes, 'url')}.")
        rank = None
    return replace(state, filter=f, rank=rank), notices


def parse_unit(text: str | None) -> tuple[str, int] | None:
    """``"fc1:12"`` -> ``("fc1", 12)``; None if absent. Raises ``QueryError`` if malformed."""
    if not text:
        return None
    layer, sep, index = text.strip().rpartition(":")
    if not sep or not layer:
        raise QueryError(f"unit must look like LAYER:INDEX (e.g. fc1:12), got {shown(text)}.")
    try:
        layer_name(layer)
    except ParseError as e:
        raise QueryError(f"unit must look like LAYER:INDEX (e.g. fc1:12): {e}") from None
    return layer, parse_int(index, "unit index", 0, UNIT_INDEX_MAX)


def unit_params(run: str, layer: str, unit: int, state: ExplorerState | None = None) -> dict[str, str | list[str]]:
    """The unit page's URL: the unit, and the explorer filter it was opened from (for back / previous / next)."""
    out = encode(state) if state is not None and state.filter.run_id == run else {"run": run}
    out["unit"] = f"{layer}:{unit}"
    return out
