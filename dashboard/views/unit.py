"""Unit page: what one unit does (activation vs gradient per class, training trace) and whether it matters."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import cached, ui, unit_card, unit_charts, unit_nav, whatif_panel
from dashboard.image_panels import render_unit_evidence
from dashboard.knowledge import render_examples, render_significance
from warehouse.queries import MIN_ACTIVE, PERCENTILE_METRICS, runs_overview
from warehouse.schema import TABLES
from warehouse.text import md, md_code

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
        st.error(f"Run {md_code(run)} has no layer {md_code(wanted[0])} (layers: {', '.join(map(md_code, layers))}).")
if S.get("unit-layer") not in layers:
    S["unit-layer"] = layers[0]
summary = cached.layer_summary(root, fp, run).set_index("layer")
c1, c2 = st.columns(2)
layer = c1.selectbox("Layer", layers, key="unit-layer")
n_units = int(summary.loc[layer, "n_units"])
if S.get("unit-index") is None or not 0 <= S["unit-index"] < n_units:
    if S.get("unit-index") is not None:
        st.error(f"Layer {md_code(layer)} has units 0 to {n_units - 1}; unit {S['unit-index']} does not exist.")
    S["unit-index"] = 0
unit = int(c2.number_input(f"Unit (0 to {n_units - 1})", min_value=0, max_value=n_units - 1, step=1, key="unit-index"))
unit_nav.remember(layer, unit)
origin = unit_nav.origin(root, fp, run, from_url)
unit_nav.navigation_bar(root, fp, run, layer, unit, origin)

page = cached.unit_page(root, fp, run, layer, unit)
if page is None:
    st.error(f"Unit {md_code(f'{layer}:{unit}')} has no statistics in run {md_code(run)}; the run may be incomplete.")
    st.stop()
u = page.unit
cls = page.classes
names = [str(c) for c in cls["class_name"]]
st.header(f"Unit {md(layer)}:{unit}")
con = cached.connection(root)[0]
n_eval = int(runs_overview(con).set_index("run_id")["n_eval"].get(run, 0))

# --- the answer first: what the unit does and whether it matters ------------------------------
with st.container(border=True):
    st.markdown(unit_card.sentence(u, page.layer.get("kind", "?"), n_units))
    m = st.columns(5)
    m[0].metric("Preferred class", "none (dead)" if u["dead"] else str(u["pref_class_name"]))
    m[1].metric("Class selectivity", f"{u['selectivity']:.3f}",
                help="0 = responds to every class alike, 1 = one class only (Morcos et al. 2018).")
    m[1].caption(f"on {int(u['n_active']):,} active examples" + (
        f" (fewer than {MIN_ACTIVE}: not reliable)" if 0 < u["n_active"] < MIN_ACTIVE else ""))
    m[2].metric("Loss change", f"{u['abl_loss_delta']:+.4f}",
                help="When the unit is removed: mean over the evaluation examples of their own loss change; "
                     "95% paired t interval below.")
    m[2].caption(f"95% interval [{u['abl_loss_lo']:+.4f}, {u['abl_loss_hi']:+.4f}]")
    m[3].metric("Accuracy change", f"{u['abl_acc_delta']:+.2%}", help="When the unit is removed.")
    m[3].caption(f"{int(u['abl_n_hurt'])} right→wrong, {int(u['abl_n_helped'])} wrong→right")
    score, score_label, score_help = unit_card.specialization(u, names)
    m[4].metric("Specialization score", score, help=score_help)
    m[4].caption(score_label)
    in_set = whatif_panel.current(run)
    label = f"{layer}:{unit}"
    whatif_panel.link(st, run, list(dict.fromkeys([*in_set, label])),
                      "Remove it in what-if" if not in_set else
                      f"Open the what-if set ({len(in_set)} units, this one among them)" if label in in_set else
                      f"Add to what-if ({len(in_set)} unit{'s' if len(in_set) != 1 else ''} there)")

# --- the pictures ---------------------------------------------------------------------------------
render_unit_evidence(con, run, layer, unit, part="top")

# --- the evidence ---------------------------------------------------------------------------------
render_significance(u, n_eval)
render_examples(root, con, run, layer, unit, u, cached.class_names(root, fp, run))

st.subheader("Per class: activation, gradient signal and removal effect")
st.plotly_chart(unit_charts.act_vs_grad(cls, "", rectified=True), key="unit-classes")
top = cls.dropna(subset=["anomaly"]).sort_values("anomaly", ascending=False).head(3)
special = cls.dropna(subset=["specialization"]).sort_values("specialization", ascending=False).head(3)
st.caption("Pre-activation z: the activation's input; response r = max(f(z) - f(0), 0): its output above "
           "its value at 0 (for ReLU, the output). The output-side signal is what the loss asks of the unit; only "
           "the training signal (gradient at the pre-activation, times f'(z)) updates the unit: where the unit is "
           "silent a ReLU blocks it entirely, a smooth activation (GELU, SiLU) passes a weak part (docs/metrics.md).")
st.caption("Dead unit: no training signal reaches it, so it has no anomaly score." if top.empty else
           "Classes with the highest training-signal-vs-activation anomaly (high gradient, low activation; "
           "docs/metrics.md): " + ", ".join(f"{ui.text(r.class_name)} ({r.anomaly:.2f})" for r in top.itertuples()))
if not special.empty:
    st.caption("Classes it is most specialized on (subset specialization: what removing it costs the class, all on "
               "the examples it fires on, discounted by the share it fires on; docs/metrics.md): " + ", ".join(
                   f"{ui.text(r.class_name)} ({r.specialization:.4f}, fires on {r.frac_fire:.0%})"
                   for r in special.itertuples()))
st.plotly_chart(unit_charts.ablation_bars(cls), key="unit-ablation")

with st.expander("Training trace: the same signals per epoch", expanded=False):
    trace = page.trace
    if trace.empty:
        st.info("This run recorded no training trace for the unit.")
    else:
        trace = trace.assign(class_name=trace["class_name"].astype(str))
        c1, c2 = st.columns(2)
        c1.plotly_chart(unit_charts.trace_lines(trace, "grad_mean", "output-side gradient", names), key="trace-grad")
        c2.plotly_chart(unit_charts.trace_lines(trace, "mean_act", "pre-activation", names), key="trace-act")
        if "train_grad_mean" in trace:
            st.plotly_chart(unit_charts.trace_lines(trace, "train_grad_mean", "training signal", names),
                            key="trace-tgrad")
        epoch = unit_nav.epoch_slider(sorted(trace["epoch"].unique().tolist()), from_url)
        st.plotly_chart(unit_charts.act_vs_grad(trace[trace["epoch"] == epoch], f"epoch {epoch}: "),
                        key="trace-epoch")

with st.expander("All metrics, with percentile within the layer", expanded=False):
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

st.subheader("Image evidence")
render_unit_evidence(con, run, layer, unit, part="rest")
