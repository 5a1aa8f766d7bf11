"""Unit page: what one unit does (activation vs gradient per class, training trace) and whether it matters."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import cached, ui, unit_charts, unit_nav
from dashboard.image_panels import render_unit_evidence
from dashboard.knowledge import render_examples, render_significance
from warehouse.queries import MIN_ACTIVE, PERCENTILE_METRICS, runs_overview
from warehouse.schema import TABLES

S = st.session_state
st.title("Unit page")
root, fp, runs = ui.page_runs()
run_ids = [r.run_id for r in runs]

# --- which unit: from a new URL, else the widgets ------------------------------------------------
from_url = ui.url_is_new("unit")
wanted: tuple[str, int] | None = unit_nav.unit_from_url() if from_url else unit_nav.remembered()
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
unit_nav.remember(layer, unit)
origin = unit_nav.origin(run, from_url)
unit_nav.navigation_bar(root, fp, run, layer, unit, origin)

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
m[0].caption(f"on {int(u['n_active']):,} active examples" + (
    f" (fewer than {MIN_ACTIVE}: not reliable)" if 0 < u["n_active"] < MIN_ACTIVE else ""))
m[1].metric("Preferred class", "none (dead)" if u["dead"] else str(u["pref_class_name"]))
m[2].metric("Ablation loss delta", f"{u['abl_loss_delta']:+.4f}")
m[3].metric("Ablation accuracy delta", f"{u['abl_acc_delta']:+.2%}")

# --- per-class activation vs gradient signal -----------------------------------------------------
cls = page.classes
st.subheader("Per class: activation and gradient signal")
st.plotly_chart(unit_charts.act_vs_grad(cls, "", rectified=True), key="unit-classes")
top = cls.dropna(subset=["anomaly"]).sort_values("anomaly", ascending=False).head(3)
special = cls.dropna(subset=["specialization"]).sort_values("specialization", ascending=False).head(3)
st.caption("The output-side signal is what the loss asks of the unit; where the unit is silent the ReLU blocks "
           "it, and only the training signal (gradient at the pre-activation) updates the unit (docs/metrics.md).")
st.caption("Dead unit: no training signal reaches it, so it has no anomaly score." if top.empty else
           "Classes with the highest training-signal-vs-activation anomaly (high gradient, low activation; "
           "docs/metrics.md): " + ", ".join(f"{r.class_name} ({r.anomaly:.2f})" for r in top.itertuples()))
if not special.empty:
    st.caption("Classes it is most specialized on (subset specialization: what removing it costs the class, all on "
               "the examples it fires on, discounted by the share it fires on; docs/metrics.md): " + ", ".join(
                   f"{r.class_name} ({r.specialization:.4f}, fires on {r.frac_fire:.0%})" for r in special.itertuples()))

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
    if "train_grad_mean" in trace:
        st.plotly_chart(px.line(trace, x="epoch", y="train_grad_mean", color="class_name", markers=True,
                                title="training signal (gradient at the pre-activation) per class, by epoch"),
                        key="trace-tgrad")
    epoch = unit_nav.epoch_slider(sorted(trace["epoch"].unique().tolist()), from_url)
    st.plotly_chart(unit_charts.act_vs_grad(trace[trace["epoch"] == epoch], f"epoch {epoch}: "), key="trace-epoch")

# --- ablation ------------------------------------------------------------------------------------
st.subheader("Ablation effect per class")
fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy change when zeroed", "loss change when zeroed"))
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["abl_acc_delta"], name="accuracy delta"), row=1, col=1)
fig.add_trace(go.Bar(x=cls["class_name"], y=cls["abl_loss_delta"], name="loss delta"), row=1, col=2)
fig.update_layout(showlegend=False)
st.plotly_chart(fig, key="unit-ablation")

con = cached.connection(root)[0]
n_eval = runs_overview(con).set_index("run_id")["n_eval"].get(run, 0)
render_significance(u, int(n_eval))
render_examples(root, con, run, layer, unit, u, cached.class_names(root, fp, run))

# --- all metrics with layer percentiles ----------------------------------------------------------
st.subheader("All metrics, with percentile within the layer")
docs = {c.name: c.doc for c in TABLES["units"].columns}
metrics = pd.DataFrame({
    "metric": list(PERCENTILE_METRICS),
    "value": [float("nan") if u[c] is None else float(u[c]) for c in PERCENTILE_METRICS],
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
