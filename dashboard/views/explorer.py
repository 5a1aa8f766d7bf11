"""Unit explorer: filter units by metric ranges, classes and presets; table, scatter, correlation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import plotly.express as px
import streamlit as st

from dashboard import cached, ui, whatif_panel
from dashboard.image_panels import with_thumbnails
from dashboard.state import COLORS, ExplorerState, decode, encode
from warehouse.export import FORMATS
from warehouse.queries import CLASS_METRICS, PRESETS, UNIT_METRICS, QueryError, Range, UnitFilter

MAX_ROWS = 5_000  # table rows shown; downloads hold every matching row
WEBGL_FROM = 1_000  # points from which the scatter renders with WebGL
CUSTOM = "(custom filter)"
ANY_CLASS = "any class"
DEAD = {"any": None, "dead only": True, "live only": False}

st.title("Unit explorer")
root, fp, runs = ui.page_runs()
run_ids = [r.run_id for r in runs]
S = st.session_state


def to_widgets(state: ExplorerState, classes: list[str]) -> None:
    """Put ``state`` into the widgets' session state (before the widgets are drawn)."""
    f = state.filter
    S["ex-layers"] = list(f.layers)
    S["ex-preset"] = state.preset if state.preset in PRESETS else CUSTOM
    S["ex-metrics"] = [r.column for r in f.ranges]
    for r in f.ranges:
        S[f"ex-lo-{r.column}"], S[f"ex-hi-{r.column}"] = r.lo, r.hi
    S["ex-pref"] = [classes[c] for c in f.pref_classes if 0 <= c < len(classes)]
    S["ex-dead"] = next(k for k, v in DEAD.items() if v == f.dead)
    c = f.condition_class
    S["ex-cls"] = classes[c] if c is not None and 0 <= c < len(classes) else ANY_CLASS
    S["ex-cmetrics"] = [r.column for r in f.class_conditions]
    for r in f.class_conditions:
        S[f"ex-clo-{r.column}"], S[f"ex-chi-{r.column}"] = r.lo, r.hi
    S["ex-sort"], S["ex-desc"], S["ex-limit"] = f.order_by, f.descending, f.limit
    S["ex-x"], S["ex-y"], S["ex-color"] = state.x, state.y, state.color


def from_widgets(run: str, classes: list[str]) -> ExplorerState:
    def ranges(prefix: str, metrics: list[str]) -> tuple[Range, ...]:
        out = []
        for m in metrics:
            lo, hi = S.get(f"ex-{prefix}lo-{m}"), S.get(f"ex-{prefix}hi-{m}")
            if lo is not None or hi is not None:
                out.append(Range(m, lo, hi))
        return tuple(out)

    f = UnitFilter(
        run_id=run, layers=tuple(S["ex-layers"]), ranges=ranges("", S["ex-metrics"]),
        pref_classes=tuple(classes.index(c) for c in S["ex-pref"]),
        class_conditions=ranges("c", S["ex-cmetrics"]),
        condition_class=None if S["ex-cls"] == ANY_CLASS else classes.index(S["ex-cls"]),
        dead=DEAD[S["ex-dead"]], order_by=S["ex-sort"], descending=S["ex-desc"],
        limit=None if S["ex-limit"] is None else int(S["ex-limit"]),
    )
    preset = S["ex-preset"] if S["ex-preset"] != CUSTOM else None
    return ExplorerState(f, preset, S["ex-x"], S["ex-y"], S["ex-color"])


def apply_preset() -> None:
    name = S["ex-preset"]
    if name == CUSTOM:
        return
    classes = S["ex-classes"]
    current = from_widgets(S["ex-run"], classes)
    to_widgets(ExplorerState(PRESETS[name].apply(current.filter), name, current.x, current.y, current.color), classes)


def mark_custom() -> None:
    S["ex-preset"] = CUSTOM


def open_unit(run: str, layer: str, unit: int) -> None:
    st.switch_page(str(ui.VIEWS / "unit.py"), query_params={"run": run, "unit": f"{layer}:{unit}"})


# --- state: from a new URL, else what the widgets hold -------------------------------------------
url_state: ExplorerState | None = None
if ui.url_is_new("explorer"):
    try:
        url_state = decode(st.query_params)
    except QueryError as e:
        st.error(f"This link's filter is not valid ({e}); showing the unfiltered run instead.")
        url_state = ExplorerState(UnitFilter(st.query_params.get("run") or run_ids[0]))
run = ui.pick_run(run_ids, url_state.filter.run_id if url_state else None, "ex-run")
classes = cached.class_names(root, fp, run)
layers = cached.layer_names(root, fp, run)
S["ex-classes"] = classes
if url_state is not None and url_state.filter.run_id == run:
    to_widgets(url_state, classes)
elif "ex-sort" not in S or S.get("ex-state-run") != run:
    to_widgets(S.get("ex-state") or ExplorerState(UnitFilter(run)), classes)
S["ex-layers"] = [layer for layer in S.get("ex-layers", []) if layer in layers]
S["ex-pref"] = [c for c in S.get("ex-pref", []) if c in classes]
if S.get("ex-cls") not in [ANY_CLASS, *classes]:
    S["ex-cls"] = ANY_CLASS

# --- filter widgets ------------------------------------------------------------------------------
with st.container(border=True):
    c1, c2 = st.columns([1, 2])
    c1.selectbox("Preset", [CUSTOM, *PRESETS], key="ex-preset", on_change=apply_preset,
                 help="\n\n".join(f"**{p.name}**: {p.description}" for p in PRESETS.values()))
    c2.multiselect("Layers (none = all)", layers, key="ex-layers", on_change=mark_custom)
    c1, c2, c3 = st.columns(3)
    c1.multiselect("Metric ranges", UNIT_METRICS, key="ex-metrics", on_change=mark_custom)
    c2.multiselect("Preferred class", classes, key="ex-pref", on_change=mark_custom)
    c3.radio("Dead units", list(DEAD), key="ex-dead", horizontal=True, on_change=mark_custom)
    for m in S["ex-metrics"]:
        a, b = st.columns(2)
        a.number_input(f"{m} at least", value=None, key=f"ex-lo-{m}", format="%.6g", on_change=mark_custom)
        b.number_input(f"{m} at most", value=None, key=f"ex-hi-{m}", format="%.6g", on_change=mark_custom)
    c1, c2 = st.columns([1, 2])
    c1.selectbox("Class-level conditions hold for", [ANY_CLASS, *classes], key="ex-cls", on_change=mark_custom)
    c2.multiselect("Class-level conditions (all on the same class)", CLASS_METRICS, key="ex-cmetrics",
                   on_change=mark_custom)
    for m in S["ex-cmetrics"]:
        a, b = st.columns(2)
        a.number_input(f"class {m} at least", value=None, key=f"ex-clo-{m}", format="%.6g", on_change=mark_custom)
        b.number_input(f"class {m} at most", value=None, key=f"ex-chi-{m}", format="%.6g", on_change=mark_custom)
    c1, c2, c3 = st.columns(3)
    c1.selectbox("Sort by", UNIT_METRICS, key="ex-sort", on_change=mark_custom)
    c2.checkbox("Descending", key="ex-desc", on_change=mark_custom)
    c3.number_input("At most this many units", value=None, min_value=1, step=1, key="ex-limit", on_change=mark_custom)

state = from_widgets(run, classes)
S["ex-state"], S["ex-state-run"] = state, run
ui.write_url("explorer", encode(state))
f = state.filter

try:
    table, total = cached.filtered(root, fp, f, MAX_ROWS)
except QueryError as e:
    st.error(str(e))
    st.stop()

if state.preset:
    st.caption(f"Preset **{state.preset}**: {PRESETS[state.preset].description}")
st.markdown(f"**{total:,} unit(s) match.**" + (f" The table shows the first {len(table):,}; the downloads hold all."
                                                 if len(table) < total else ""))
if total == 0:
    st.info("No unit matches this filter. Widen a range, pick more layers or choose another preset.")
    st.stop()
if f.dead is None and f.limit is None and (n_dead := cached.count(root, fp, replace(f, dead=True))):
    st.caption(f"{n_dead:,} of them are dead: never active on the evaluation set (the loss can still push a "
               "silent unit up). Choose *Dead units: live only* to hide them.")

# --- table ---------------------------------------------------------------------------------------
first = ["layer", "unit", *(["matched_classes"] if "matched_classes" in table else []), "selectivity",
         "pref_class_name", "abl_loss_delta", "abl_acc_delta", "anomaly_max", "anomaly_class"]
table = table[first + [c for c in table.columns if c not in first and c != "run_id"]]
column_config: dict[str, Any] = {}
if st.toggle("Show thumbnails (each unit's top evaluation example)", key="ex-thumbs"):
    table, column_config = with_thumbnails(cached.connection(root)[0], run, table)
    table = table[["thumbnail", *[c for c in table.columns if c != "thumbnail"]]]
event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row", key="ex-table",
                     column_config=column_config)
if event.selection.rows:
    row = table.iloc[event.selection.rows[0]]
    open_unit(run, str(row["layer"]), int(row["unit"]))
ui.downloads(f"units-{run}", "dl-units", payload={fmt: cached.export_on_click(root, fp, f, fmt) for fmt in FORMATS})

c1, c2 = st.columns([3, 1])
labels = [f"{layer}:{unit}" for layer, unit in zip(table["layer"], table["unit"])]
chosen = c1.selectbox("Open a unit (or select a table row or a scatter point)", labels, key="ex-open-choice")
if c2.button("Open unit page", key="ex-open", type="primary") and chosen:
    layer, _, unit = chosen.rpartition(":")
    open_unit(run, layer, int(unit))

# --- live what-if ablation ----------------------------------------------------------------------
with st.expander("What if these units were removed? (live ablation on the run's checkpoint)"):
    st.caption("Clamps the chosen units to zero together and re-evaluates the trained network on the run's "
               "evaluation set (or its training set). The first call loads the checkpoint and data.")
    picked_units = st.multiselect("Units to ablate together", labels, default=labels[:min(len(labels), 10)],
                                  key="ex-whatif-units")
    split = st.radio("Measured on", ["eval", "train"], horizontal=True, key="ex-whatif-split")
    if st.button("Ablate the selected units", key="ex-whatif", disabled=not picked_units):
        result = whatif_panel.run(root, run, picked_units, split)
        if isinstance(result, str):
            st.error(result)
        else:
            summary, per_class = result
            m1, m2, m3 = st.columns(3)
            m1.metric("accuracy", f"{summary['accuracy']:.4f}", f"{summary['acc_delta']:+.4f}")
            m2.metric("loss", f"{summary['loss']:.4f}", f"{summary['loss_delta']:+.4f}", delta_color="inverse")
            m3.metric("units ablated", summary["n_units"])
            st.plotly_chart(px.bar(per_class, x="class_name", y="acc_delta", title="Accuracy change per class"),
                            key="ex-whatif-bars")
            ui.downloads(f"whatif-{run}", "dl-whatif", frame=per_class)

# --- scatter and correlation ---------------------------------------------------------------------
st.subheader("Scatter")
c1, c2, c3 = st.columns(3)
c1.selectbox("x axis", UNIT_METRICS, key="ex-x")
c2.selectbox("y axis", UNIT_METRICS, key="ex-y")
c3.radio("Colour by", COLORS, key="ex-color", horizontal=True,
         format_func=lambda c: {"layer": "layer", "pref_class_name": "preferred class"}[c])
points, n_points = cached.scatter(root, fp, f, state.x, state.y)
if len(points) < n_points:
    st.caption(f"Plotting a fixed sample of {len(points):,} of {n_points:,} units.")
hover: dict[str, Any] = {"layer": True, "unit": True, "pref_class_name": True}
fig = px.scatter(points, x=state.x, y=state.y, color=state.color, hover_data=hover, custom_data=["layer", "unit"],
                 render_mode="webgl" if len(points) >= WEBGL_FROM else "svg",
                 title=f"{state.y} against {state.x}")
picked = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="ex-scatter")
if picked.selection.points:
    layer, unit = picked.selection.points[0]["customdata"][:2]
    open_unit(run, str(layer), int(unit))

st.markdown(f"**Spearman correlation of {state.x} and {state.y} per layer** (95% confidence interval)")
corr = cached.correlations(points[["layer", state.x, state.y]], state.x, state.y)
st.dataframe(corr, hide_index=True, key="ex-corr")
ui.downloads(f"correlation-{run}", "dl-corr", frame=corr)
