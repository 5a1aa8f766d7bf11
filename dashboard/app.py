"""Neuron Atlas dashboard: ``streamlit run dashboard/app.py`` (binds to 127.0.0.1, see .streamlit/config.toml).

Reads the warehouse at ``$NEURON_ATLAS_WAREHOUSE`` (default ``warehouse/data``) through DuckDB.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import ui  # noqa: E402
from warehouse.errors import AtlasError  # noqa: E402

st.set_page_config(page_title="Neuron Atlas", layout="wide")
VIEWS = Path(__file__).parent / "views"
PAGES = [
    st.Page(VIEWS / "overview.py", title="Runs overview", url_path="overview", default=True),
    st.Page(VIEWS / "explorer.py", title="Unit explorer", url_path="explorer"),
    st.Page(VIEWS / "gallery.py", title="Layer gallery", url_path="gallery"),
    st.Page(VIEWS / "unit.py", title="Unit page", url_path="unit"),
    st.Page(VIEWS / "compare.py", title="Compare runs", url_path="compare"),
    st.Page(VIEWS / "sql.py", title="SQL", url_path="sql"),
    st.Page(VIEWS / "export.py", title="Export", url_path="export"),
]
page = st.navigation(PAGES)
try:  # the one place a page's warehouse problem (unreadable runs/, a linked .staging, ...) is shown
    ui.sidebar()
    ui.unknown_page_notice([p.url_path for p in PAGES], page.title)
    page.run()
except AtlasError as e:
    st.error(str(e), icon="🚫")
