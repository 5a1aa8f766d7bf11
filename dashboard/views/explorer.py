"""Unit explorer: filter units by metric ranges, classes and presets; facets, table, scatter, correlation.

The state lives in the URL (``dashboard.state``): a new URL (a shared link, Back/Forward, a jump
from another page) is put into the widgets; otherwise the widgets hold it and are written back.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from dashboard import cached, explorer_panels, filter_widgets, nav, ui
from dashboard.knowledge import render_class_removal
from dashboard.state import ExplorerState, encode, for_run, parse
from warehouse.filters import QueryError, UnitFilter, describe
from warehouse.queries import PRESETS
from warehouse.text import md

PAGE = "explorer"
MAX_ROWS = 5_000  # table rows shown; downloads hold every matching row
CUSTOM = "(custom filter)"
S = st.session_state
VIEW_KEYS = {"x": "ex-x", "y": "ex-y", "color": "ex-color", "log_x": "ex-logx", "log_y": "ex-logy"}


def incoming(run_ids: list[str]) -> tuple[ExplorerState | None, list[str]]:
    """The state to put into the widgets, if any: a new URL's, or the session's last one when the
    widgets were cleared by a visit to another page; and the notices for ignored URL values."""
    notices: list[str] = []
    state = None
    if ui.url_is_new(PAGE):
        state, notices = parse(st.query_params)
    if state is None and "ex-sort" not in S:
        state = S.get("ex-state")
    return state, notices


def to_widgets(state: ExplorerState, classes: list[str]) -> None:
    filter_widgets.to_widgets(state.filter, classes)
    S["ex-preset"] = state.preset or CUSTOM
    for name, key in VIEW_KEYS.items():
        S[key] = getattr(state, name)
    explorer_panels.rank_to_widgets(state.rank, classes)


def from_widgets(run: str, classes: list[str]) -> ExplorerState:
    f = filter_widgets.from_widgets(run, classes)
    preset = S.get("ex-preset") if S.get("ex-preset") in PRESETS else None
    return ExplorerState(f, preset, **{name: S[key] for name, key in VIEW_KEYS.items()},
                         rank=explorer_panels.rank_from_widgets(classes))


def apply_preset() -> None:
    """The preset box's callback: the chosen preset on the current run, layers and class."""
    name = S["ex-preset"]
    if name in PRESETS:
        current = from_widgets(S["ex-run"], S["ex-classes"])
        to_widgets(replace(current, filter=PRESETS[name].apply(current.filter), preset=name), S["ex-classes"])


def filter_box(layers: list[str], classes: list[str]) -> None:
    with st.container(border=True):
        st.selectbox("Preset", [CUSTOM, *PRESETS], key="ex-preset", on_change=apply_preset,
                     help="\n\n".join(f"**{p.name}**: {p.description}" for p in PRESETS.values()))
        filter_widgets.draw(layers, classes)


def summary(state: ExplorerState, total: int, shown: int) -> None:
    f = state.filter
    if state.preset:
        note = " (modified: " + md(describe(f) or "no conditions") + ")" if state.preset_modified else ""
        st.caption(f"Preset **{state.preset}**: {PRESETS[state.preset].description}{note}")
    elif describe(f):
        st.caption(f"Filter: {md(describe(f))}")
    st.markdown(f"**{total:,} unit(s) match.**" + (f" The table shows the first {shown:,}; the downloads hold all."
                                                     if shown < total else ""))


def main() -> None:
    st.title("Unit explorer")
    root, fp, runs = ui.page_runs()
    run_ids = [r.run_id for r in runs]
    state, notices = incoming(run_ids)
    run = ui.pick_run(run_ids, state.filter.run_id if state else None, "ex-run")
    classes = cached.class_names(root, fp, run)
    layers = cached.layer_names(root, fp, run)
    S["ex-classes"] = classes
    if state is not None and state.filter.run_id == run:
        state, more = for_run(state, layers, classes)
        to_widgets(state, classes)
        notices += more
    elif "ex-sort" not in S or S.get("ex-state-run") != run:
        to_widgets(ExplorerState(UnitFilter(run)), classes)
    filter_widgets.keep_valid(layers, classes)
    nav.notices(notices)

    filter_box(layers, classes)
    state = from_widgets(run, classes)
    S["ex-state"], S["ex-state-run"] = state, run
    ui.write_url(PAGE, encode(state))

    try:
        table, total = cached.filtered(root, fp, state.filter, MAX_ROWS)
    except QueryError as e:
        st.error(md(str(e)))
        st.stop()
    summary(state, total, len(table))
    if total == 0:
        st.info("No unit matches this filter. Widen a range, pick more layers or choose another preset.")
        st.stop()
    f = state.filter
    if f.dead is None and f.limit is None and (n_dead := cached.count(root, fp, replace(f, dead=True))):
        st.caption(f"{n_dead:,} of them are dead: never active on the evaluation set (the loss can still push a "
                   "silent unit up). Choose *Dead units: live only* to hide them.")
    explorer_panels.facets(root, fp, state, classes)
    table = explorer_panels.table(root, fp, state, table)
    labels = [f"{layer}:{unit}" for layer, unit in zip(table["layer"], table["unit"])]
    explorer_panels.unit_chooser(state, labels)
    explorer_panels.class_rank(root, fp, state, classes)
    explorer_panels.what_if(run, labels)
    with st.expander("Can a class's knowledge be removed? (per-class cumulative ablation)"):
        render_class_removal(cached.connection(root)[0], run, classes)
    st.subheader("Scatter")
    explorer_panels.axis_widgets()
    explorer_panels.scatter(root, fp, state, layers, classes)


main()
