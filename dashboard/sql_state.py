"""The SQL page's state: the query text in the URL (``q``) and kept across pages; unit links in results."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import nav, ui

PAGE = "sql"
MAX_URL_QUERY = 8_000  # characters of query text carried in a URL
S = st.session_state


def restore(example: str) -> None:
    """Before the text area: a new URL's query (run at once), else the session's last text, else ``example``."""
    q = st.query_params.get("q") if ui.url_is_new(PAGE) else None
    if q is not None and len(q) > MAX_URL_QUERY:
        nav.notices([f"`q` is ignored: a query of {len(q):,} characters is longer than {MAX_URL_QUERY:,}."])
        q = None
    if q:
        S["sql-query"] = S["sql-last"] = q
    elif "sql-query" not in S:
        S["sql-query"] = S.get("sql-saved", example)


def remember(query: str) -> None:
    """After the text area: keep the text, and put the query last run into the URL."""
    S["sql-saved"] = query
    last = S.get("sql-last")
    ui.write_url(PAGE, {"q": last} if last and len(last) <= MAX_URL_QUERY else {})


def with_links(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, object]]:
    """Result rows with a link to each row's unit page when they name units (``layer`` and ``unit``;
    the run from ``run_id``, else the run chosen last)."""
    run = None if "run_id" in rows.columns else S.get("run")
    if run is None and "run_id" not in rows.columns:
        return rows, {}
    return nav.with_unit_links(rows, run)
