"""Runs overview: every run with provenance and accuracies; per layer, unit counts and distributions."""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard import cached, findings, overview_charts, ui
from dashboard.compute_job import DEFAULT_RUN_ID, default_command, run_with_progress
from warehouse.queries import DISTRIBUTIONS
from warehouse.text import md_code

st.title("Runs overview")
root, fp, runs = ui.page_runs(need_run=False)

if not runs:
    broken = [r for r in cached.runs(root, fp) if not r.ok]
    st.subheader("This warehouse has no readable runs" if broken else "This warehouse is empty")
    if broken:
        st.markdown(f"{len(broken)} run folder(s) in {md_code(root)} are broken (reasons above); `python -m compute list` "
                    "lists them too. Fix or remove them, or compute a new run.")
    cmd = default_command(root)
    st.markdown(f"No readable runs in {md_code(root)} yet. Compute the default run (LeNet-5 on the bundled 5,000 MNIST "
                "digits, about a minute on 2 CPU cores) from a terminal in the repository:")
    st.code(" ".join(shlex.quote(c) for c in [".venv/bin/python", *cmd[1:]]), language="bash")
    st.markdown("or here:")
    if st.button(f"Compute the default run ({DEFAULT_RUN_ID})", type="primary", key="compute-default"):
        progress = st.progress(0.0, text="starting the compute step")
        code, output = run_with_progress(cmd, lambda frac, text: progress.progress(frac, text=text))
        if code == 0:
            progress.progress(1.0, text="published")
            st.success(output)
            st.rerun()
        else:
            st.error(f"The compute step failed (exit code {code}):")
            st.code(output, language=None)
    st.stop()

findings.intro()
run_ids = [r.run_id for r in runs]
run = ui.pick_run(run_ids, st.query_params.get("run") if ui.url_is_new("overview") else None, "overview-run")
ui.write_url("overview", {"run": run})
st.subheader(f"Findings in {md_code(run)}")
findings.findings(root, fp, run, cached.layer_names(root, fp, run))
findings.memorization(root, fp)

overview = cached.runs_overview(root, fp)
st.subheader("Runs")
st.dataframe(overview, hide_index=True, key="overview-runs", column_config={
    c: st.column_config.NumberColumn(format="percent") for c in ("train_acc", "test_acc", "eval_acc")})
ui.downloads("runs", "dl-runs", frame=overview)

st.subheader(f"Layers of {md_code(run)}")
layers = cached.layer_summary(root, fp, run)
st.dataframe(layers, hide_index=True, key="overview-layers")
ui.downloads(f"layers-{run}", "dl-layers", frame=layers)

accuracy = overview_charts.accuracy_per_epoch(root, fp, run)
if accuracy is not None:
    st.plotly_chart(accuracy)

st.subheader("Distributions per layer")
cols = st.columns(2)
for i, metric in enumerate(DISTRIBUTIONS):
    cols[i % 2].plotly_chart(overview_charts.distribution(root, fp, run, metric), key=f"hist-{metric}")
