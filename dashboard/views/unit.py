"""Unit page: what one unit does (activation vs gradient per class, training trace) and whether it matters."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import cached, ui
from dashboard.image_panels import render_unit_evidence
from dashboard.state import parse_unit
from warehouse.queries import PERCENTILE_METRICS, QueryError
from warehouse.schema import TABLES

S = st.session_state
st.title("Unit page")
root, fp, runs = ui.page_runs()
run_ids = [r.run_id for r in runs]

# --- which unit: from a new URL, else the widgets ------------------------------------------------
from_url = ui.url_is_new("unit")
wanted: tuple[str, int] | None = None
if from_url:
    try:
        wanted = parse_unit(st.query_params.get("unit"))
    except QueryError as e:
        st.error(f"This link's unit is not valid: {e}")
run = ui.pick_run(run_ids, st.query_params.get("run") if from_url else None, "unit-run")
layers = cached.layer_names(root, fp, run)
if wanted:
    if wanted[0] in layers:
        S["unit-layer"], S["unit-index"] = wanted
    else:
        st.error(f"Run `{run}` has no layer `{wanted[0]}` (layers: {', '.join(layers)}).")
if S.get("unit-layer") not in layers:
    S["unit-layer"] = layers[0]
summary = cached.layer_summary(root, fp, run).set_index("layer")
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", layers, key="unit-layer")
n_units = int(summary.loc[layer, "n_units"])
if S.get("unit-index") is None or not 0 <= S["unit-index"] < n_units:
    if S.get("unit-index") is not None:
        st.error(f"Layer `{layer}` has units 0 to {n_units - 1}; unit {S['unit-index']} does not exist.")
    S["unit-index"] = 0
unit = int(c2.number_input(f"Unit (0 to {n_units - 1})", min_value=0, max_value=n_units - 1, step=1, key="unit-index"))
ui.write_url("unit", {"run": run, "unit": f"{layer}:{unit}"})

page = cached.unit_page(root, fp, run, layer, unit)
if page is None:
    st.error(f"Unit `{layer}:{unit}` has no statistics in run `{run}`; the run may be incomplete.")
    st.stop()
u = page.unit
st.header(f"Unit {layer}:{unit}")
st.caption(f"Run `{run}` · {page.layer.get('kind', '?')} layer `{layer}` of {n_units} units · "
           f"{'never active (dead)' if u['dead'] else 'active on ' + format(u['frac_active'], '.1%') + ' of examples'}")
m = st.columns(4)
m[0].metric("Class selectivity", f"{u['selectivity']:.3f}", help="Preferred class: " + str(u["pref_class_name"]))
m[1].metric("Preferred class", "none (dead)" if u["dead"] else str(u["pref_class_name"]))
m[2].metric("Ablation loss delta", f"{u['abl_loss_delta']:+.4f}")
m[3].metric("Ablation accuracy delta", f"{u['abl_acc_delta']:+.2%}")

# --- per-class activation vs gradient signal -----------------------------------------------------
cls = page.classes
st.subheader("Per class: activation and gradient signal")
fig = make_subplots(rows=1, cols=2, subplot_titles=("activation (mean per class)", "gradient signal (mean per class)"))
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["mean_act"], name="pre-ReLU activation"), row=1, col=1)
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["mean_rect"], name="post-ReLU activation"), row=1, col=1)
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["grad_mean"], name="gradient signal (+ = loss wants it higher)"),
              row=1, col=2)
fig.update_layout(barmode="group", legend={"orientation": "h"})
st.plotly_chart(fig, key="unit-classes")
top = cls.sort_values("anomaly", ascending=False).head(3)
st.caption("Classes with the highest gradient-vs-activation anomaly (high gradient, low activation; "
           "docs/metrics.md): " + ", ".join(f"{r.class_name} ({r.anomaly:.2f})" for r in top.itertuples()))

# --- training trace ------------------------------------------------------------------------------
st.subheader("Training trace")
trace = page.trace
if trace.empty:
    st.info("This run recorded no training trace for the unit.")
else:
    trace = trace.assign(class_name=trace["class_name"].astype(str))
    c1, c2 = st.columns(2)
    c1.plotly_chart(px.line(trace, x="epoch", y="grad_mean", color="class_name", markers=True,
                            title="gradient signal per class, by epoch"), key="trace-grad")
    c2.plotly_chart(px.line(trace, x="epoch", y="mean_act", color="class_name", markers=True,
                            title="pre-ReLU activation per class, by epoch"), key="trace-act")
    epochs = sorted(trace["epoch"].unique().tolist())
    epoch = st.select_slider("Epoch", epochs, value=epochs[-1], key="unit-epoch") if len(epochs) > 1 else epochs[0]
    at = trace[trace["epoch"] == epoch].melt("class_name", ["mean_act", "grad_mean"], var_name="signal")
    st.plotly_chart(px.bar(at, x="class_name", y="value", color="signal", barmode="group",
                           title=f"epoch {epoch}: activation vs gradient signal per class"), key="trace-epoch")

# --- ablation ------------------------------------------------------------------------------------
st.subheader("Ablation effect per class")
fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy change when zeroed", "loss change when zeroed"))
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["abl_acc_delta"], name="accuracy delta"), row=1, col=1)
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["abl_loss_delta"], name="loss delta"), row=1, col=2)
fig.update_layout(showlegend=False)
st.plotly_chart(fig, key="unit-ablation")

# --- all metrics with layer percentiles ----------------------------------------------------------
st.subheader("All metrics, with percentile within the layer")
docs = {c.name: c.doc for c in TABLES["units"].columns}
metrics = pd.DataFrame({
    "metric": list(PERCENTILE_METRICS),
    "value": [float(u[c]) for c in PERCENTILE_METRICS],
    "layer percentile": [page.percentiles[c] for c in PERCENTILE_METRICS],
    "meaning": [docs[c] for c in PERCENTILE_METRICS],
})
st.dataframe(metrics, hide_index=True, key="unit-metrics", column_config={
    "layer percentile": st.column_config.ProgressColumn(min_value=0, max_value=100, format="%.0f%%")})
ui.downloads(f"unit-{run}-{layer}-{unit}-metrics", "dl-unit-metrics", frame=metrics)
st.markdown("**Per-class statistics**")
st.dataframe(cls, hide_index=True, key="unit-class-table")
ui.downloads(f"unit-{run}-{layer}-{unit}-classes", "dl-unit-classes", frame=cls)

# --- image evidence ------------------------------------------------------------------------------
st.subheader("Image evidence")
render_unit_evidence(cached.connection(root)[0], run, layer, unit)
