"""Compare runs: cumulative ablation curves overlaid, their areas against the generalization gap, and
selectivity / importance per run side by side (Morcos et al. 2018: memorizing networks lean on more
units, so their curves fall faster)."""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached, ui
from warehouse.text import md, md_code

PAGE = "compare"
ALL = "(all runs)"

st.title("Compare runs")
root, fp, runs = ui.page_runs()

url = ui.url_params() if ui.url_is_new(PAGE) else {}


def _from_url(key: str) -> str | None:
    values = url.get(key)
    return values[-1] if values else None


exps = cached.experiments(root, fp)
exp_options = [ALL, *exps]
exp_url = _from_url("exp")
if exp_url is None and _from_url("runs") is not None:
    exp_url = ALL  # a link that names runs but no experiment: look for them among every run
if exp_url is not None:
    if exp_url in exp_options:
        st.session_state["compare-exp"] = exp_url
    else:
        st.warning(f"Experiment {md_code(exp_url[:60])} from the link is not in this warehouse.")
if "compare-exp" not in st.session_state:  # the session's last choice, else the latest experiment, else every run
    latest = st.session_state.get("compare-exp-saved") or cached.latest_experiment(root, fp)
    st.session_state["compare-exp"] = latest if latest in exp_options else ALL
exp_choice = st.selectbox("Experiment", exp_options, key="compare-exp")
st.session_state["compare-exp-saved"] = exp_choice
experiment = None if exp_choice == ALL else exp_choice
candidates = cached.runs_of(root, fp, experiment)

runs_url = _from_url("runs")
if runs_url is not None:
    wanted = list(dict.fromkeys(r for r in runs_url.split(",") if r))
    missing = [r for r in wanted if r not in candidates]
    if missing:
        st.warning(f"Run(s) {', '.join(md_code(m[:60]) for m in missing[:5])}{' …' if len(missing) > 5 else ''} "
                   "from the link are not among these runs.")
    st.session_state["compare-runs"] = [r for r in wanted if r in candidates]
elif st.session_state.get("compare-runs-of") != experiment or "compare-runs" not in st.session_state:
    saved = st.session_state.get("compare-saved", {}).get(experiment, candidates)
    st.session_state["compare-runs"] = [r for r in saved if r in candidates]
st.session_state["compare-runs-of"] = experiment
chosen = st.multiselect("Runs", candidates, key="compare-runs")

st.session_state.setdefault("compare-saved", {})[experiment] = chosen  # kept while other pages are open
params: dict[str, str | list[str]] = {"exp": experiment or ALL, "runs": ",".join(chosen)}

if not chosen:
    ui.write_url(PAGE, params)
    st.info("No runs selected: choose one or more runs above.")
    st.stop()

choices = cached.curve_choices(root, fp, tuple(chosen))
if choices.empty:
    ui.write_url(PAGE, params)
    st.info("None of the selected runs has cumulative ablation curves (runs computed before curves existed). "
            "Compute new ones, e.g. `python -m compute sweep --model mlp --dataset mnist-5k "
            "--label-noise 0,0.5,1.0 --seeds 0,1 --experiment NAME`.")
    st.stop()

cols = st.columns(3)
picked: dict[str, str] = {}
for col, (name, column, default) in zip(cols, (("split", "split", "train"), ("layer", "layer", "last2"),
                                               ("order", "order", "random"))):
    options = sorted(choices[column].unique())
    want = _from_url(name)
    if want is not None and want not in options:
        st.warning(f"{name} {md_code(want[:60])} from the link has no curves here; showing another.")
        want = None
    key = f"compare-{name}"
    if want is not None:
        st.session_state[key] = want
    elif st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    picked[name] = col.selectbox(name.capitalize(), options, key=key)
params.update(picked)
ui.write_url(PAGE, params)
split, layer, order = picked["split"], picked["layer"], picked["order"]
key = tuple(chosen)

st.subheader("Cumulative ablation curves")
bands = cached.curve_bands(root, fp, key, split, layer, order)
without = [r for r in chosen if r not in set(bands["run_id"])]
if without:
    st.caption(f"No {md(split)}/{md(layer)}/{md(order)} curve in: {md(', '.join(without))}")
if bands.empty:
    st.info(f"No selected run has a {md(split)} curve for {md(layer)} in {md(order)} order.")
else:
    fig = go.Figure()
    palette = px.colors.qualitative.Plotly
    for i, (run_id, g) in enumerate(bands.groupby("run_id", sort=False)):
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=list(g["fraction"]) + list(g["fraction"])[::-1],
                                 y=list(g["acc_max"]) + list(g["acc_min"])[::-1], fill="toself",
                                 line={"width": 0}, fillcolor=color, opacity=0.2, hoverinfo="skip",
                                 showlegend=False, legendgroup=run_id))
        fig.add_trace(go.Scatter(x=g["fraction"], y=g["acc_mean"], mode="lines+markers", name=run_id,
                                 line={"color": color}, legendgroup=run_id))
    fig.update_layout(xaxis_title="fraction of units removed", yaxis_title=f"{split} accuracy",
                      title=f"{layer}, {order} order: mean over curves, band = min..max")
    st.plotly_chart(fig, key="compare-curves")
    ui.downloads(f"curves-{split}-{layer}-{order}", "dl-compare-curves", frame=bands)

st.subheader("Area under the curve vs generalization gap")
aucs = cached.auc_table(root, fp, key, split, layer, order)
st.dataframe(aucs, hide_index=True, key="compare-auc-table")
ui.downloads(f"auc-{split}-{layer}-{order}", "dl-compare-auc", frame=aucs)
if not aucs.empty:
    # Label noise as categories with a fixed qualitative palette and outlined markers: on a continuous
    # scale the noise-0 run is drawn in the scale's lightest colour, white on the white background.
    noise = aucs.assign(label_noise=aucs["label_noise"].map(lambda v: f"{v:g}"))
    fig = px.scatter(noise, x="gen_gap", y="auc_mean", error_y="auc_std", color="label_noise", hover_name="run_id",
                     color_discrete_sequence=px.colors.qualitative.D3,
                     category_orders={"label_noise": sorted(noise["label_noise"].unique(), key=float)},
                     labels={"gen_gap": "generalization gap (train - test accuracy, fraction)",
                             "auc_mean": "normalized AUC (fraction of intact accuracy)", "label_noise": "label noise"})
    fig.update_traces(marker={"size": 11, "line": {"width": 1.5, "color": "#333333"}})
    st.plotly_chart(fig, key="compare-auc-scatter")

st.subheader("Selectivity and ablation importance per run")
dist = cached.unit_distributions(root, fp, key, layer)
if dist.empty:
    st.info("No units for these runs and layer.")
else:
    c1, c2 = st.columns(2)
    for col, metric, label in ((c1, "selectivity", "class selectivity"),
                               (c2, "abl_loss_delta", "ablation importance (loss delta)")):
        col.plotly_chart(px.box(dist, x="run_id", y=metric, color="layer", points="outliers", title=label),
                         key=f"compare-box-{metric}")
    ui.downloads(f"units-{layer}", "dl-compare-units", frame=dist)
