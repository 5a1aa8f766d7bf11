"""The explorer's filter widgets, one per field of ``warehouse.filters.FIELDS``, drawn by widget kind.

A new filter field of an existing kind (layers, ranges, classes, class, tristate, choice, flag,
count) needs no change here. Widget keys are ``ex-<field.key>``; a ranges field's bounds are
``ex-<prefix>lo-<column>`` / ``ex-<prefix>hi-<column>`` with the prefix its key before "metrics".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from warehouse.filters import FIELDS, Field, Range, UnitFilter

ANY_CLASS = "any class"
DEAD = {"any": None, "dead only": True, "live only": False}
S = st.session_state


def key(f: Field) -> str:
    return f"ex-{f.key}"


def _bound_keys(f: Field, column: str) -> tuple[str, str]:
    prefix = f.key.removesuffix("metrics")
    return f"ex-{prefix}lo-{column}", f"ex-{prefix}hi-{column}"


def to_widgets(f: UnitFilter, classes: list[str]) -> None:
    """Put ``f`` into the widgets' session state (before the widgets are drawn)."""
    for fld in FIELDS:
        value = getattr(f, fld.name)
        if fld.widget == "ranges":
            S[key(fld)] = [r.column for r in value]
            for r in value:
                S[_bound_keys(fld, r.column)[0]], S[_bound_keys(fld, r.column)[1]] = r.lo, r.hi
        elif fld.widget == "classes":
            S[key(fld)] = [classes[c] for c in value if 0 <= c < len(classes)]
        elif fld.widget == "class":
            S[key(fld)] = classes[value] if value is not None and 0 <= value < len(classes) else ANY_CLASS
        elif fld.widget == "tristate":
            S[key(fld)] = next(k for k, v in DEAD.items() if v == value)
        elif fld.widget == "layers":
            S[key(fld)] = list(value)
        else:
            S[key(fld)] = value


def from_widgets(run: str, classes: list[str]) -> UnitFilter:
    """The filter the widgets hold."""
    values: dict[str, Any] = {}
    for fld in FIELDS:
        v = S.get(key(fld))
        if fld.widget == "ranges":
            out = []
            for m in v or []:
                lo, hi = (S.get(k) for k in _bound_keys(fld, m))
                if lo is not None or hi is not None:
                    out.append(Range(m, lo, hi))
            values[fld.name] = tuple(out)
        elif fld.widget == "classes":
            values[fld.name] = tuple(classes.index(c) for c in v or [] if c in classes)
        elif fld.widget == "class":
            values[fld.name] = classes.index(v) if v in classes else None
        elif fld.widget == "tristate":
            values[fld.name] = DEAD.get(v)
        elif fld.widget == "layers":
            values[fld.name] = tuple(v or ())
        elif fld.widget == "count":
            values[fld.name] = None if v is None else int(v)
        elif fld.widget == "flag":
            values[fld.name] = bool(v)
        else:
            values[fld.name] = v if v is not None else fld.default
    return UnitFilter(run, **values)


def keep_valid(layers: list[str], classes: list[str]) -> None:
    """Drop widget values the current run does not offer (after a change of run)."""
    for fld in FIELDS:
        k = key(fld)
        if fld.widget == "layers":
            S[k] = [x for x in S.get(k, []) if x in layers]
        elif fld.widget == "classes":
            S[k] = [c for c in S.get(k, []) if c in classes]
        elif fld.widget == "class" and S.get(k) not in [ANY_CLASS, *classes]:
            S[k] = ANY_CLASS


def draw(layers: list[str], classes: list[str], on_change: Callable[[], None] | None = None,
         columns: int = 3) -> None:
    """Every field's widget, in declared order, ``columns`` to a row; range bounds below their row."""
    cols = st.columns(columns)
    pending: list[Field] = []
    for i, fld in enumerate(FIELDS):
        col = cols[i % columns]
        _widget(col, fld, layers, classes, on_change)
        if fld.widget == "ranges":
            pending.append(fld)
        if i % columns == columns - 1 or i == len(FIELDS) - 1:
            for r in pending:
                for m in S.get(key(r), []):
                    lo, hi = _bound_keys(r, m)
                    a, b = st.columns(2)
                    label = m if r.name == "ranges" else f"class {m}"
                    a.number_input(f"{label} at least", value=None, key=lo, format="%.6g", on_change=on_change)
                    b.number_input(f"{label} at most", value=None, key=hi, format="%.6g", on_change=on_change)
            pending = []
            if i < len(FIELDS) - 1:
                cols = st.columns(columns)


def _widget(col: Any, fld: Field, layers: list[str], classes: list[str],
            on_change: Callable[[], None] | None) -> None:
    k, label = key(fld), fld.label
    kind = fld.widget
    if kind == "layers":
        col.multiselect(label, layers, key=k, on_change=on_change)
    elif kind == "ranges":
        col.multiselect(label, list(fld.choices), key=k, on_change=on_change)
    elif kind == "classes":
        col.multiselect(label, classes, key=k, on_change=on_change)
    elif kind == "class":
        col.selectbox(label, [ANY_CLASS, *classes], key=k, on_change=on_change)
    elif kind == "tristate":
        col.radio(label, list(DEAD), key=k, horizontal=True, on_change=on_change)
    elif kind == "choice":
        col.selectbox(label, list(fld.choices), key=k, on_change=on_change)
    elif kind == "flag":
        col.checkbox(label, key=k, on_change=on_change)
    elif kind == "count":
        col.number_input(label, value=None, min_value=1, step=1, key=k, on_change=on_change)
