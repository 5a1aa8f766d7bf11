"""SQL: one read-only SELECT over the warehouse views, with the schema beside it."""

from __future__ import annotations

import streamlit as st

from dashboard import cached, ui
from warehouse.sandbox import MAX_ROWS, TIME_LIMIT_S, SandboxError
from warehouse.schema import TABLES

EXAMPLE = """SELECT layer, unit, class_name, anomaly, grad_mean, mean_act
FROM unit_classes
ORDER BY anomaly DESC
LIMIT 20"""

st.title("SQL")
root, fp, runs = ui.page_runs(need_run=False)
left, right = st.columns([3, 2])
with right:
    st.markdown("**Views**")
    for t in TABLES.values():
        with st.expander(f"`{t.name}`: {t.doc}"):
            st.markdown("\n".join(f"- `{c.name}` ({c.type}): {c.doc}" for c in t.columns))
with left:
    st.caption(f"One SELECT (or WITH ... SELECT) statement; at most {MAX_ROWS:,} rows, stopped after "
               f"{TIME_LIMIT_S:g} s. Files, settings and writes are off.")
    query = st.text_area("Query", EXAMPLE, height=180, key="sql-query")
    if st.button("Run", type="primary", key="sql-run") or st.session_state.get("sql-last") == query:
        st.session_state["sql-last"] = query
        try:
            result = cached.sql(root, query)
        except SandboxError as e:
            st.error(str(e))
        else:
            st.caption(f"{len(result.rows):,} row(s)" + (f"; capped at {MAX_ROWS:,}" if result.truncated else ""))
            st.dataframe(result.rows, hide_index=True, key="sql-result")
            ui.downloads("query", "dl-sql", frame=result.rows)
