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
from warehouse.text import md  # noqa: E402

st.set_page_config(page_title="Neuron Atlas", layout="wide")
VIEWS = Path(__file__).parent / "views"
#: (file in views/, title, URL path); the first is the default page, also served at the app's root.
ROUTES = (("overview.py", "Runs overview", "overview"), ("explorer.py", "Unit explorer", "explorer"),
          ("gallery.py", "Layer gallery", "gallery"), ("unit.py", "Unit page", "unit"), ("whatif.py", "What if", "whatif"),
          ("compare.py", "Compare runs", "compare"), ("sql.py", "SQL", "sql"), ("export.py", "Export", "export"))
PAGES = [st.Page(VIEWS / file, title=title, url_path=path, default=i == 0) for i, (file, title, path) in enumerate(ROUTES)]
page = st.navigation(PAGES, position="hidden")  # the sidebar's own links carry each page's state
try:  # the one place a page's warehouse problem (unreadable runs/, a linked .staging, ...) is shown
    ui.track_page(next(path for _, title, path in ROUTES if title == page.title))
    ui.sidebar(PAGES)
    ui.unknown_page_notice([path for _, _, path in ROUTES], page.title)  # the default page's url_path reads ""
    page.run()
except AtlasError as e:
    st.error(md(e), icon="🚫")
