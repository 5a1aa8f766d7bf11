"""Pieces shared by the pages: the sidebar, run choice, download buttons, error display."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cached, nav
from warehouse import RunInfo
from warehouse.export import FORMATS, MIME
from warehouse.text import md, md_code

VIEWS = Path(__file__).parent / "views"
#: Pages whose state starts from a run: a first visit from the sidebar opens them on the run chosen last.
RUN_PAGES = ("overview", "explorer", "gallery", "unit", "whatif")


def sidebar(pages: list[st.Page]) -> None:
    """The page list, each link carrying the state its page showed last (Back then returns to the view
    left, and a page comes back as it was), the warehouse read and the ``layer:unit`` box."""
    root = cached.warehouse_root()
    runs = cached.runs(root, cached.fingerprint(root))
    ok = [r for r in runs if r.ok]
    # Never a bare link: a page opened without parameters writes its state in its first run, and
    # Streamlit pushes that query string onto the old page's path before the new one (two entries).
    run = st.session_state.get("run") or st.query_params.get("run") or (ok[0].run_id if ok else None)
    for p in pages:
        state = page_state(p.url_path) or ({"run": run} if run and p.url_path in RUN_PAGES else {})
        st.sidebar.page_link(p, label=p.title, query_params=state)
    st.sidebar.caption(f"Warehouse: {md_code(root)}")
    st.sidebar.caption(f"{len(ok)} run(s)" + (f", {len(runs) - len(ok)} broken" if len(ok) < len(runs) else ""))
    nav.jump_box(root)


def unknown_page_notice(known: list[str], shown: str) -> None:
    """Say so when the URL names a page that does not exist (Streamlit then runs the default page)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    asked = getattr(getattr(ctx, "pages_manager", None), "intended_page_name", None) or ""
    asked = asked.strip("/")
    if asked and asked not in known:
        st.warning(f"There is no page {md_code('/' + asked[:60])}; showing the {shown} instead. Pages: "
                   + ", ".join(md_code(f"/{k}") for k in known) + ".", icon="⚠️")


def page_runs(need_run: bool = True) -> tuple[str, cached.Fingerprint, list[RunInfo]]:
    """Every page's start: the warehouse path, its fingerprint and its readable runs.

    Broken runs are listed as warnings. A page that ``need_run`` stops when there is no readable
    run, pointing to the overview, where the first one can be computed.
    """
    root = cached.warehouse_root()
    fp = cached.fingerprint(root)
    runs = cached.runs(root, fp)
    for r in runs:
        if not r.ok:
            st.warning(f"Run {md_code(r.run_id)} is broken and left out: {md(r.error)}")
    ok = [r for r in runs if r.ok]
    if need_run and not ok:
        st.info(f"The warehouse {md_code(root)} has no readable runs yet. Compute one on the Runs overview page.")
        st.page_link(str(VIEWS / "overview.py"), label="Go to Runs overview")
        st.stop()
    return root, fp, ok


def url_params() -> dict[str, list[str]]:
    return {k: st.query_params.get_all(k) for k in st.query_params}


def url_is_new(page: str) -> bool:
    """True when the URL is not the one this page wrote last: a shared link, a bookmark, a jump from
    another page. Only then does the URL override the page's widgets."""
    return st.session_state.get(f"_url_{page}") != url_params()


def track_page(page: str) -> None:
    """Note the page this run shows (``write_url`` tells a link within a page from a page opened anew)."""
    S = st.session_state
    S["_page_before"], S["_page_now"] = S.get("_page_now"), page


def history_navigation() -> bool:
    """True when this run answers the browser's Back or Forward."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(getattr(ctx, "is_history_navigation", False))


def _link_within(page: str) -> bool:
    """The URL is new because a link of this page to itself was followed (a facet, previous / next): the
    browser does not show such a link's query string, so the page writes it (one history entry)."""
    return st.session_state.get("_page_before") == page and not history_navigation()


def write_url(page: str, params: dict[str, str | list[str]]) -> None:
    """Put the page's state into the URL when the person changed it, or followed a link within the page.

    Streamlit's browser side pushes a history entry for every change of the query string (outside
    Back/Forward, where it replaces), so a page that rewrote the link it was opened with into its
    normalized form (defaults filled in) would leave two entries for one view, and the first Back would
    stay on it. A page opened on a URL whose parameters are all its own (a shared link, a link from
    another page, Back/Forward) therefore keeps that URL as it is and only records the state it shows.
    A link from the page to itself is different: the browser keeps showing the old query string, so
    the state is written, except during Back/Forward. A bare URL (``/explorer``) gets the state
    written, and so does a URL with parameters the page does not hold (ignored values). The state is
    kept per page, so the sidebar's links return to it."""
    S = st.session_state
    if url_is_new(page) and url_params() and set(url_params()) <= set(params) and not _link_within(page):
        S[f"_state_{page}"], S[f"_url_{page}"] = params, url_params()
        return
    if S.get(f"_state_{page}") == params and S.get(f"_url_{page}") == url_params():
        return
    st.query_params.from_dict(params)
    S[f"_state_{page}"], S[f"_url_{page}"] = params, url_params()


def page_state(page: str) -> dict[str, str | list[str]]:
    """The state a page showed last in this session (its URL parameters), for links back to it."""
    return dict(st.session_state.get(f"_state_{page}") or {})


def pick_run(run_ids: list[str], from_url: str | None, key: str) -> str:
    """A run selectbox: ``from_url`` when given and present, else the session's last run, else the first."""
    if from_url and from_url not in run_ids:
        st.warning(f"Run {md_code(from_url[:60])} from the link is not in this warehouse; showing another run instead.")
        from_url = None
    if from_url:
        st.session_state[key] = from_url
    elif st.session_state.get(key) not in run_ids:
        remembered = st.session_state.get("run")
        st.session_state[key] = remembered if remembered in run_ids else run_ids[0]
    run = st.selectbox("Run", run_ids, key=key)
    st.session_state["run"] = run
    return run


#: Floats whose smallest non-zero magnitude is below this are shown with significant digits ("1.000e-12"):
#: a grid's fixed decimals would show a q-value of 1e-12 as a row of zeros.
SMALL = 1e-3


def number_formats(df: pd.DataFrame) -> dict[str, object]:
    """Column configs showing the float columns that hold small values in significant digits."""
    config: dict[str, object] = {}
    for name in df.columns[~df.columns.duplicated()]:
        column = df[name]
        if not pd.api.types.is_float_dtype(column):
            continue
        magnitude = column.abs()
        small = magnitude[(magnitude > 0) & (magnitude < SMALL)]
        if len(small):
            config[name] = st.column_config.NumberColumn(format="%.4g")
    return config


def text(value: object) -> str:
    """Text that comes from data (class, layer, run names) as it goes into Markdown: escaped, never markup."""
    return md(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "table"


def downloads(name: str, key: str, *, frame: pd.DataFrame | None = None,
              payload: dict[str, bytes | Callable[[], bytes]] | None = None) -> None:
    """CSV and Parquet download buttons for exactly the rows of a table view (``payload``: the
    bytes per format, or callables that make them when clicked)."""
    cols = st.columns(len(FORMATS))
    for col, fmt in zip(cols, FORMATS):
        blob = payload[fmt] if payload is not None else cached.frame_bytes(frame, fmt)
        col.download_button(f"Download {fmt.upper()}", blob, file_name=f"{slug(name)}.{fmt}", mime=MIME[fmt],
                            key=f"{key}-{fmt}", on_click="ignore")
