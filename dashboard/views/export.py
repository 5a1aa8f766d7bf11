"""Export: the explorer's current filter as CSV or Parquet, and the same export on the command line."""

from __future__ import annotations

import shlex

import streamlit as st

from dashboard import cached, ui
from dashboard.state import ExplorerState, decode, encode
from warehouse.export import FORMATS
from warehouse.queries import QueryError, UnitFilter, format_range

st.title("Export")
root, fp, runs = ui.page_runs()
run_ids = [r.run_id for r in runs]

state: ExplorerState | None = None
try:
    state = decode(st.query_params) if ui.url_is_new("export") else None
except QueryError as e:
    st.error(f"This link's filter is not valid: {e}")
state = state or st.session_state.get("ex-state") or ExplorerState(UnitFilter(run_ids[0]))
if state.filter.run_id not in run_ids:
    st.warning(f"Run `{state.filter.run_id}` is not in this warehouse; exporting `{run_ids[0]}` unfiltered.")
    state = ExplorerState(UnitFilter(run_ids[0]))
ui.write_url("export", encode(state))
f = state.filter

st.markdown("The units of the **Unit explorer**'s current filter (set it there; this page follows it):")
st.json(encode(state))
try:
    total = cached.count(root, fp, f)
except QueryError as e:
    st.error(str(e))
    st.stop()
st.markdown(f"**{total:,} unit(s)** of run `{f.run_id}`.")
ui.downloads(f"units-{f.run_id}", "dl-export", payload={fmt: cached.export_on_click(root, fp, f, fmt) for fmt in FORMATS})

args = [".venv/bin/python", "-m", "warehouse", "export", "--warehouse", root, "--run", f.run_id]
for layer in f.layers:
    args += ["--layer", layer]
for r in f.ranges:
    args += ["--range", format_range(r)]
for c in f.pref_classes:
    args += ["--pref-class", str(c)]
for r in f.class_conditions:
    args += ["--class-condition", format_range(r)]
if f.condition_class is not None:
    args += ["--class", str(f.condition_class)]
if f.dead is not None:
    args += ["--dead", "yes" if f.dead else "no"]
args += ["--sort", f.order_by] + (["--desc"] if f.descending else [])
if f.limit is not None:
    args += ["--limit", str(f.limit)]
st.markdown("The same rows from a terminal:")
st.code(" ".join(shlex.quote(a) for a in [*args, "-o", f"units-{f.run_id}.csv"]), language="bash")
