"""Ways between pages: links to unit pages, the ``layer:unit`` jump box, notices for ignored URL values."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

import pandas as pd
import streamlit as st

from dashboard import cached
from dashboard.state import ExplorerState, parse_unit, unit_params
from warehouse.filters import QueryError

S = st.session_state
VIEWS = Path(__file__).parent / "views"
#: A LinkColumn shows the unit named in the link (``unit=fc1:3``), not the whole URL.
UNIT_TEXT = r"unit=([^&]+)"


def unit_url(run: str, layer: str, unit: int, state: ExplorerState | None = None) -> str:
    """A relative link to the unit page (``unit?run=...&unit=fc1:3``), with the filter it came from."""
    return "unit?" + urlencode(unit_params(run, layer, unit, state), doseq=True, safe=":,", quote_via=quote)


def with_unit_links(df: pd.DataFrame, run: str | None, state: ExplorerState | None = None,
                    column: str = "open") -> tuple[pd.DataFrame, dict[str, object]]:
    """``df`` with a first column of links to each row's unit page (rows need ``layer`` and ``unit``,
    and ``run_id`` when ``run`` is None), and the column config that shows them."""
    if not {"layer", "unit"} <= set(df.columns) or (run is None and "run_id" not in df.columns) or df.empty:
        return df, {}
    runs = [run] * len(df) if run is not None else df["run_id"].astype(str)
    try:
        links = [unit_url(r, str(layer), int(unit), state) for r, layer, unit in zip(runs, df["layer"], df["unit"])]
    except (TypeError, ValueError):  # a unit column that holds no unit indices
        return df, {}
    out = df.copy()
    out.insert(0, column, links)
    return out, {column: st.column_config.LinkColumn("unit page", display_text=UNIT_TEXT,
                                                      help="Open the unit page")}


def open_unit(run: str, layer: str, unit: int, state: ExplorerState | None = None) -> None:
    st.switch_page(str(VIEWS / "unit.py"), query_params=unit_params(run, layer, unit, state))


def _jump_changed() -> None:
    S["_jump-target"], S["jump"] = S.get("jump", ""), ""


def jump_box(root: str) -> None:
    """The sidebar's ``layer:unit`` box: opens that unit of the current run."""
    st.sidebar.text_input("Go to unit", key="jump", placeholder="layer:unit, e.g. fc1:11", on_change=_jump_changed,
                          help="Opens the unit page of this unit in the run chosen last.")
    target = S.pop("_jump-target", "")
    if not target:
        return
    fp = cached.fingerprint(root)
    runs = [r.run_id for r in cached.runs(root, fp) if r.ok]
    if not runs:
        return
    run = S.get("run") if S.get("run") in runs else runs[0]
    try:
        wanted = parse_unit(target)
    except QueryError as e:
        st.sidebar.error(str(e))
        return
    assert wanted is not None
    layers = cached.layer_names(root, fp, run)
    if wanted[0] not in layers:
        st.sidebar.error(f"Run `{run}` has no layer `{wanted[0]}` (layers: {', '.join(layers)}).")
        return
    open_unit(run, *wanted)


def notices(items: list[str], where: str = "This link") -> None:
    """One visible notice for the URL values a page ignored."""
    if items:
        st.warning(f"{where} had values that are ignored:\n\n" + "\n".join(f"- {m}" for m in items), icon="⚠️")
