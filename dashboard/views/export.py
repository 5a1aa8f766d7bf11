"""Export: the explorer's current filter as CSV or Parquet, and the same export on the command line."""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard import cached, nav, ui
from dashboard.state import ExplorerState, encode, for_run, parse
from warehouse.export import FORMATS
from warehouse.filters import QueryError, UnitFilter, to_cli
from warehouse.text import md, md_code

st.title("Export")
root, fp, runs = ui.page_runs()
run_ids = [r.run_id for r in runs]

state: ExplorerState | None = None
notices: list[str] = []
if ui.url_is_new("export"):
    state, notices = parse(st.query_params)
state = state or st.session_state.get("ex-state") or ExplorerState(UnitFilter(run_ids[0]))
if state.filter.run_id not in run_ids:
    st.warning(f"Run {md_code(state.filter.run_id)} is not in this warehouse; exporting {md_code(run_ids[0])} unfiltered.")
    state = ExplorerState(UnitFilter(run_ids[0]))
run = state.filter.run_id
state, more = for_run(state, cached.layer_names(root, fp, run), cached.class_names(root, fp, run))
nav.notices(notices + more)
ui.write_url("export", encode(state))
f = state.filter

st.markdown("The units of the **Unit explorer**'s current filter (set it there; this page follows it):")
st.json(encode(state))
try:
    total = cached.count(root, fp, f)
except QueryError as e:
    st.error(md(str(e)))
    st.stop()
st.markdown(f"**{total:,} unit(s)** of run {md_code(f.run_id)}.")
ui.downloads(f"units-{f.run_id}", "dl-export", payload={fmt: cached.export_on_click(root, fp, f, fmt) for fmt in FORMATS})

args = [".venv/bin/python", "-m", "warehouse", "export", "--warehouse", root, "--run", f.run_id, *to_cli(f)]
st.markdown("The same rows from a terminal:")
st.code(" ".join(shlex.quote(a) for a in [*args, "-o", f"units-{f.run_id}.csv"]), language="bash")
