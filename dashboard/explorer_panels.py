"""The unit explorer's panels below the filter: facets, table, unit chooser, what-if, scatter and correlation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import cached, nav, ui, whatif_panel
from dashboard.correlation import SMALL_N
from dashboard.image_panels import with_thumbnails
from dashboard.state import COLORS, RANK_DEFAULT, ExplorerState, encode, unit_params
from warehouse.browse import FACETS
from warehouse.export import FORMATS
from warehouse.filters import CLASS_METRICS, UNIT_METRICS
from warehouse.text import chart, md, md_code

WEBGL_FROM = 1_000  # points from which the scatter renders with WebGL
FACET_VALUES = 12  # values listed per facet
POPULATIONS = {"live units": True, "all matching units": False}
TAYLOR = ("taylor", "taylor_norm")
EXPLORER = Path(__file__).parent / "views" / "explorer.py"
UNIT = Path(__file__).parent / "views" / "unit.py"
S = st.session_state


def facets(root: str, fp: cached.Fingerprint, state: ExplorerState, classes: list[str]) -> None:
    """Counts per layer, preferred class and dead/live within the filter; each value links to the
    filter narrowed to it (Datasette's facets)."""
    counts = cached.facets(root, fp, state.filter)
    f = state.filter
    with st.expander("Facets: how the matching units split", expanded=True):
        cols = st.columns(len(FACETS))
        for col, facet in zip(cols, FACETS):
            rows = counts[counts["facet"] == facet].head(FACET_VALUES)
            col.markdown(f"**{ {'pref_class_name': 'preferred class', 'dead': 'dead / live'}.get(facet, facet) }**")
            for r in rows.itertuples():
                if pd.isna(r.value):  # a dead unit has no preferred class
                    col.markdown(f"none (dead) · **{r.units:,}**")
                    continue
                narrowed = _narrow(f, facet, r.value, classes)
                label = {"true": "dead", "false": "live"}.get(r.value, r.value) if facet == "dead" else r.value
                if narrowed is None or narrowed == f:
                    col.markdown(f"{md(label)} · **{r.units:,}**")
                else:
                    col.page_link(str(EXPLORER), label=f"{md(label)} · {r.units:,}",
                                  query_params=encode(replace(state, filter=narrowed)))


def _narrow(f: Any, facet: str, value: str, classes: list[str]) -> Any:
    if facet == "layer":
        return replace(f, layers=(value,))
    if facet == "pref_class_name":
        return replace(f, pref_classes=(classes.index(value),)) if value in classes else None
    if facet == "dead":
        return replace(f, dead=value == "true")
    return None


def table(root: str, fp: cached.Fingerprint, state: ExplorerState, table: pd.DataFrame) -> pd.DataFrame:
    """The matching units (first rows), each with a link to its unit page; a selected row opens it."""
    run = state.filter.run_id
    first = ["layer", "unit", *(["matched_classes"] if "matched_classes" in table else []), "selectivity",
             "pref_class_name", "abl_loss_delta", "abl_acc_delta", "anomaly_max", "anomaly_class"]
    table = table[first + [c for c in table.columns if c not in first and c != "run_id"]]
    column_config: dict[str, Any] = {}
    if st.toggle("Show thumbnails (each unit's top evaluation example)", key="ex-thumbs"):
        table, column_config = with_thumbnails(cached.connection(root)[0], run, table)
        table = table[["thumbnail", *[c for c in table.columns if c != "thumbnail"]]]
    shown, links = nav.with_unit_links(table, run, state)
    event = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row", key="ex-table",
                         column_config={**ui.number_formats(shown), **column_config, **links})
    if event.selection.rows:
        row = table.iloc[event.selection.rows[0]]
        nav.open_unit(run, str(row["layer"]), int(row["unit"]), state, key="ex-table-open")
    ui.downloads(f"units-{run}", "dl-units",
                 payload={fmt: cached.export_on_click(root, fp, state.filter, fmt) for fmt in FORMATS})
    return table


NO_CLASS = "(no class)"


def rank_to_widgets(rank: str | None, classes: list[str]) -> None:
    metric, _, cls = (rank or "").rpartition(":")
    S["ex-rank-metric"] = metric if metric in CLASS_METRICS else RANK_DEFAULT
    S["ex-rank-class"] = classes[int(cls)] if cls.isdigit() and int(cls) < len(classes) else NO_CLASS


def rank_from_widgets(classes: list[str]) -> str | None:
    cls = S.get("ex-rank-class", NO_CLASS)
    if cls not in classes:
        return None
    return f"{S.get('ex-rank-metric', RANK_DEFAULT)}:{classes.index(cls)}"


def class_rank(root: str, fp: cached.Fingerprint, state: ExplorerState, classes: list[str]) -> None:
    """The matching units ranked by one class's value of a per-class metric (e.g. the loss change on class 7
    when the unit is removed, or its anomaly for class 7), each linked to its unit page."""
    with st.expander("Rank the units by one class (e.g. removal effect on class 7)", expanded=state.rank is not None):
        c1, c2 = st.columns(2)
        if S.get("ex-rank-class") not in (NO_CLASS, *classes):
            S["ex-rank-class"] = NO_CLASS
        c1.selectbox("Rank by class", [NO_CLASS, *classes], key="ex-rank-class")
        c2.selectbox("Per-class metric", CLASS_METRICS, key="ex-rank-metric",
                     help="A column of unit_classes (docs/schema.md): abl_loss_delta = the class's loss change when "
                          "the unit is removed, abl_acc_delta its accuracy change, anomaly its anomaly score.")
        if state.rank is None:
            st.caption("Choose a class to rank the matching units by that class's value, largest first.")
            return
        metric, _, cls = state.rank.rpartition(":")
        ranked = cached.rank_by_class(root, fp, state.filter, metric, int(cls))
        if ranked.empty:
            st.info("No matching unit has a value for this class (dead units have no anomaly).")
            return
        ranked = ranked.rename(columns={"class_value": f"{metric} (class {classes[int(cls)]})"})
        shown, links = nav.with_unit_links(ranked, state.filter.run_id, state)
        st.dataframe(shown, hide_index=True, key="ex-rank-table", column_config=links)
        labels = [f"{a}:{b}" for a, b in zip(ranked["layer"], ranked["unit"])]
        whatif_panel.link(st, state.filter.run_id, labels[:10], f"What if the top {min(10, len(labels))} were removed?")


def unit_chooser(state: ExplorerState, labels: list[str]) -> None:
    """A unit to open, and a link to it (one history entry: one Back returns)."""
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Open a unit (or select a table row or a scatter point)", labels, key="ex-open-choice")
    if chosen:
        layer, _, unit = chosen.rpartition(":")
        c2.page_link(str(UNIT), label="Open unit page", icon=":material/open_in_new:",
                     query_params=unit_params(state.filter.run_id, layer, int(unit), state))


def what_if(run: str, labels: list[str]) -> None:
    """Links to the live what-if page (the one place that loads torch) with units of this table."""
    c1, c2 = st.columns(2)
    first = labels[:10]
    whatif_panel.link(c1, run, first, f"What if the first {len(first)} of these units were removed?")
    in_set = whatif_panel.current(run)
    if in_set:
        whatif_panel.link(c2, run, in_set, f"Open the what-if set ({len(in_set)} units)")


def axis_widgets() -> None:
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    c1.selectbox("x axis", UNIT_METRICS, key="ex-x")
    c2.selectbox("y axis", UNIT_METRICS, key="ex-y")
    c3.radio("Colour by", COLORS, key="ex-color", horizontal=True,
             format_func=lambda c: {"layer": "layer", "pref_class_name": "preferred class"}[c])
    c4.checkbox("log x", key="ex-logx")
    c4.checkbox("log y", key="ex-logy")


def taylor_axes(x: str, y: str) -> tuple[str, str]:
    """Taylor importance against the ablation loss delta is compared with its absolute value."""
    swap = lambda a, b: "abl_loss_abs" if a == "abl_loss_delta" and b in TAYLOR else a  # noqa: E731
    return swap(x, y), swap(y, x)


def scatter(root: str, fp: cached.Fingerprint, state: ExplorerState, layers: list[str], classes: list[str]) -> None:
    """Scatter of two metrics (a clicked point opens its unit) and their Spearman correlation per layer.

    Live units by default: dead units sit at selectivity 0 and ablation effect 0 and would enter a
    rank correlation as a block of ties."""
    run = state.filter.run_id
    population = st.radio("Units in the scatter and correlation", list(POPULATIONS), horizontal=True,
                          key="ex-population",
                          help="Dead units (never active on the evaluation set) sit at selectivity 0 and ablation "
                               "effect 0 and enter a rank correlation as a block of ties; live units only is the default.")
    f = replace(state.filter, dead=False) if POPULATIONS[population] and state.filter.dead is None else state.filter
    x_axis, y_axis = taylor_axes(state.x, state.y)
    if (x_axis, y_axis) != (state.x, state.y):
        st.caption("Taylor importance estimates the *size* of the loss change, so it is plotted against "
                   "abl_loss_abs = |abl_loss_delta|.")
    state = replace(state, x=x_axis, y=y_axis)
    points, n_points = cached.scatter(root, fp, f, state.x, state.y)
    st.caption(("Live units only" if f.dead is False else "Dead units only" if f.dead else
                "All matching units, dead ones included") + f": {n_points:,} units.")
    if len(points) < n_points:
        st.caption(f"Plotting a fixed sample of {len(points):,} of {n_points:,} units.")
    shown = points
    for axis, on in ((state.x, state.log_x), (state.y, state.log_y)):
        if on:
            shown = shown[shown[axis] > 0]
    if len(shown) < len(points):
        st.caption(f"{len(points) - len(shown):,} unit(s) with a value ≤ 0 cannot be placed on a log axis and "
                   "are left out of the plot (not of the correlation).")
    # Per point only numbers (its row here, its unit): Plotly sends numeric arrays as binary, while a column
    # of names per point goes through Python's JSON encoder (most of the chart's time at 50,000 points).
    # The hover names the trace (layer or preferred class) and the unit.
    shown = shown.reset_index(drop=True)
    shown = shown.assign(pref_class_name=shown["pref_class_name"].map(chart, na_action="ignore"),
                         point=np.arange(len(shown)))
    fig = px.scatter(shown, x=state.x, y=state.y, color=state.color, hover_data={"unit": True, "point": False},
                     custom_data=["point"], render_mode="webgl" if len(shown) >= WEBGL_FROM else "svg",
                     log_x=state.log_x, log_y=state.log_y, title=f"{state.y} against {state.x}",
                     category_orders={"layer": layers, "pref_class_name": [chart(c) for c in classes]})
    picked = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="ex-scatter")
    if picked.selection.points:
        data = picked.selection.points[0]["customdata"]  # a typed array comes back as {"0": ..., "1": ...}
        row = shown.iloc[int(data["0"] if isinstance(data, dict) else data[0])]
        nav.open_unit(run, str(row["layer"]), int(row["unit"]), state, key="ex-scatter-open")

    st.markdown(f"**Spearman correlation of {state.x} and {state.y} per layer** (95% confidence interval, "
                f"{'live units' if f.dead is False else 'units as filtered'})")
    corr = cached.correlations(points[["layer", state.x, state.y]], state.x, state.y)
    few = corr[corr["warning"] != ""]
    if len(few):
        st.warning("Too few units for a rank correlation to mean much in " + ", ".join(
            f"{md_code(r.layer)} (n = {r.n})" for r in few.itertuples()) + f": with fewer than {SMALL_N} points "
            "the interval spans most of [-1, 1] and the bootstrap of so few points is coarse.", icon="⚠️")
    st.dataframe(corr, hide_index=True, key="ex-corr")
    ui.downloads(f"correlation-{run}", "dl-corr", frame=corr)
