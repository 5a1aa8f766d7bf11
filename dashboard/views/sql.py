"""SQL: one read-only SELECT over the warehouse views, with the schema beside it."""

from __future__ import annotations

import streamlit as st

from dashboard import cached, sql_state, ui
from warehouse.sandbox import MAX_RESULT_BYTES, MAX_ROWS, TIME_LIMIT_S, SandboxError
from warehouse.schema import TABLES
from warehouse.text import md

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
    st.caption(f"One SELECT (or WITH ... SELECT) statement over the views; at most {MAX_ROWS:,} rows and "
               f"{MAX_RESULT_BYTES >> 20} MB, stopped after {TIME_LIMIT_S:g} s. It runs in a database of its own: "
               f"files, settings and writes are off. Binary columns (png) show their size.")
    sql_state.restore(EXAMPLE)
    query = st.text_area("Query", height=180, key="sql-query")
    ran = st.button("Run", type="primary", key="sql-run") or st.session_state.get("sql-last") == query
    if ran:
        st.session_state["sql-last"] = query
    sql_state.remember(query)
    if ran:
        try:
            result = cached.sql(root, fp, query)
        except SandboxError as e:
            st.error(md(str(e)))
        else:
            cap = {"rows": f"; capped at {MAX_ROWS:,} rows",
                   "bytes": f"; cut at {MAX_RESULT_BYTES >> 20} MB (select fewer or smaller columns)"}
            st.caption(f"{len(result.rows):,} row(s)" + cap.get(result.reason, ""))
            shown, links = sql_state.with_links(result.rows)
            st.dataframe(shown, hide_index=True, key="sql-result", column_config={**ui.number_formats(shown), **links})
            ui.downloads("query", "dl-sql", frame=result.rows)
