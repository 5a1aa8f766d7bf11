"""The explorer's state as URL query parameters, so a view can be shared or bookmarked.

Parameters: ``run``, ``layers`` (comma-separated), ``preset``, ``range`` (repeated
``COL:LO:HI``), ``pref`` (comma-separated classes), ``cc`` (repeated class conditions
``COL:LO:HI``), ``cls`` (the class they apply to), ``dead`` (``yes``/``no``), ``sort``, ``desc``,
``limit``, ``x``, ``y``, ``color`` and ``unit`` (``LAYER:INDEX``, the selected unit). Range syntax
is ``warehouse.queries.parse_range``'s, the same as the export command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warehouse.queries import CLASS_METRICS, UNIT_METRICS, QueryError, UnitFilter, format_range, parse_range

DEFAULT_X = "selectivity"
DEFAULT_Y = "abl_loss_delta"
COLORS = ("layer", "pref_class_name")


@dataclass(frozen=True)
class ExplorerState:
    filter: UnitFilter
    preset: str | None = None
    x: str = DEFAULT_X
    y: str = DEFAULT_Y
    color: str = "layer"


def _all(params: Mapping[str, Any], key: str) -> list[str]:
    """Every value of a query parameter (``st.query_params`` has ``get_all``; plain dicts hold lists)."""
    if hasattr(params, "get_all"):
        return list(params.get_all(key))
    value = params.get(key)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _one(params: Mapping[str, Any], key: str) -> str | None:
    values = _all(params, key)
    return values[-1] if values else None


def _ints(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise QueryError(f"{what} must be comma-separated integers, got {text!r}.") from None


def decode(params: Mapping[str, Any]) -> ExplorerState | None:
    """The state in ``params``; None without a ``run``. Raises ``QueryError`` on a malformed value."""
    run = _one(params, "run")
    if not run:
        return None
    layers = tuple(t for t in (_one(params, "layers") or "").split(",") if t)
    dead = _one(params, "dead")
    if dead not in (None, "yes", "no"):
        raise QueryError(f"dead must be yes or no, got {dead!r}.")
    cls = _ints(_one(params, "cls"), "cls")
    limit = _ints(_one(params, "limit"), "limit")
    f = UnitFilter(
        run_id=run, layers=layers,
        ranges=tuple(parse_range(r) for r in _all(params, "range")),
        pref_classes=_ints(_one(params, "pref"), "pref"),
        class_conditions=tuple(parse_range(r, CLASS_METRICS) for r in _all(params, "cc")),
        condition_class=cls[0] if cls else None,
        dead=None if dead is None else dead == "yes",
        order_by=_one(params, "sort") or "layer_index",
        descending=_one(params, "desc") == "1",
        limit=limit[0] if limit else None,
    )
    if f.order_by not in UNIT_METRICS:
        raise QueryError(f"unknown sort column {f.order_by!r}.")
    x, y = _one(params, "x") or DEFAULT_X, _one(params, "y") or DEFAULT_Y
    color = _one(params, "color") or "layer"
    for name, value, allowed in (("x", x, UNIT_METRICS), ("y", y, UNIT_METRICS), ("color", color, COLORS)):
        if value not in allowed:
            raise QueryError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
    return ExplorerState(f, _one(params, "preset"), x, y, color)


def encode(state: ExplorerState) -> dict[str, str | list[str]]:
    """Query parameters for ``state``; defaults are left out to keep the URL short."""
    f = state.filter
    out: dict[str, str | list[str]] = {"run": f.run_id}
    if f.layers:
        out["layers"] = ",".join(f.layers)
    if state.preset:
        out["preset"] = state.preset
    if f.ranges:
        out["range"] = [format_range(r) for r in f.ranges]
    if f.pref_classes:
        out["pref"] = ",".join(str(c) for c in f.pref_classes)
    if f.class_conditions:
        out["cc"] = [format_range(r) for r in f.class_conditions]
    if f.condition_class is not None:
        out["cls"] = str(f.condition_class)
    if f.dead is not None:
        out["dead"] = "yes" if f.dead else "no"
    if f.order_by != "layer_index":
        out["sort"] = f.order_by
    if f.descending:
        out["desc"] = "1"
    if f.limit is not None:
        out["limit"] = str(f.limit)
    if state.x != DEFAULT_X:
        out["x"] = state.x
    if state.y != DEFAULT_Y:
        out["y"] = state.y
    if state.color != "layer":
        out["color"] = state.color
    return out


def parse_unit(text: str | None) -> tuple[str, int] | None:
    """``"fc1:12"`` -> ``("fc1", 12)``; None if absent. Raises ``QueryError`` if malformed."""
    if not text:
        return None
    layer, sep, index = text.rpartition(":")
    if not sep or not layer or not index.isdigit():
        raise QueryError(f"unit must look like LAYER:INDEX (e.g. fc1:12), got {text!r}.")
    return layer, int(index)
