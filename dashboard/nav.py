"""Ways between pages: links to unit pages, the ``layer:unit`` jump box, notices for ignored URL values."""

from __future__ import annotations

import math
from typing import Any
from pathlib import Path
from urllib.parse import quote, urlencode

import pandas as pd
import streamlit as st

from dashboard import cached
from dashboard.state import ExplorerState, parse_unit, unit_params
from warehouse.filters import QueryError
from warehouse.parse import INT32_MAX, LAYER_PATTERN
from warehouse.layout import RUN_ID_PATTERN
from warehouse.text import md, md_code

S = st.session_state
VIEWS = Path(__file__).parent / "views"
#: A LinkColumn shows the unit named in the link (``unit=fc1:3``), not the whole URL.
UNIT_TEXT = r"unit=([^&]+)"


def unit_url(run: str, layer: str, unit: int, state: ExplorerState | None = None) -> str:
    """A relative link to the unit page (``unit?run=...&unit=fc1:3``), with the filter it came from."""
    return "unit?" + urlencode(unit_params(run, layer, unit, state), doseq=True, safe=":,", quote_via=quote)


def _link_column(df: pd.DataFrame, wanted: str) -> str:
    """``wanted``, or ``wanted_2``... when the table already has a column of that name (a SQL result may)."""
    name, k = wanted, 1
    while name in df.columns:
        k += 1
        name = f"{wanted}_{k}"
    return name


def _unit_index(value: object) -> int | None:
    """``value`` as a unit index when it is one (a whole number in range), else None: no link."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return int(x) if math.isfinite(x) and x.is_integer() and 0 <= x <= INT32_MAX else None


def with_unit_links(df: pd.DataFrame, run: str | None, state: ExplorerState | None = None,
                    column: str = "open") -> tuple[pd.DataFrame, dict[str, object]]:
    """``df`` with a first column of links to each row's unit page (rows need ``layer`` and ``unit``,
    and ``run_id`` when ``run`` is None), and the column config that shows them.

    A row gets a link only when its run id, layer name and unit index are valid values (a SQL result
    may hold anything in columns of those names); the link column takes a name the table lacks.
    """
    if not {"layer", "unit"} <= set(df.columns) or (run is None and "run_id" not in df.columns) or df.empty:
        return df, {}
    if df.columns.duplicated().any():
        return df, {}
    runs = [run] * len(df) if run is not None else df["run_id"].tolist()
    links = []
    for r, layer, unit in zip(runs, df["layer"].tolist(), df["unit"].tolist()):
        index = _unit_index(unit)
        ok = (isinstance(r, str) and RUN_ID_PATTERN.fullmatch(r) and isinstance(layer, str)
              and LAYER_PATTERN.fullmatch(layer) and index is not None)
        links.append(unit_url(r, layer, index, state) if ok else None)
    if not any(links):
        return df, {}
    name = _link_column(df, column)
    out = df.copy()
    out.insert(0, name, links)
    return out, {name: st.column_config.LinkColumn("unit page", display_text=UNIT_TEXT, help="Open the unit page")}


#: Clicks the page link drawn beside it (found by its container's key): the browser then leaves the page
#: as by any link, one history entry. No value from outside is in it.
_CLICK = """<script>
(() => {{
  const find = (n) => {{
    const a = document.querySelector('.st-key-{key} a[data-testid="stPageLink-NavLink"]');
    if (a) {{ a.click(); }} else if (n > 0) {{ setTimeout(() => find(n - 1), 50); }}
  }};
  find(100);
}})();
</script>"""


def open_unit(run: str, layer: str, unit: int, state: ExplorerState | None = None, *, key: str,
              where: Any = st) -> None:
    """Open the unit page the way its link does: draw the link and a small script that clicks it.

    Streamlit's page switch with new query parameters leaves an extra history entry (this page with the new
    query string), so one Back would not return; a link click adds exactly one. ``key`` names the
    container the link is found by (a page may open units from several places)."""
    box = where.container(key=key)
    box.page_link(str(VIEWS / "unit.py"), label=f"Opening {md(layer)}:{unit} …",
                  query_params=unit_params(run, layer, unit, state))
    box.html(_CLICK.format(key=key), unsafe_allow_javascript=True)


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
        st.sidebar.error(md(str(e)))
        return
    assert wanted is not None
    layers = cached.layer_names(root, fp, run)
    if wanted[0] not in layers:
        st.sidebar.error(f"Run {md_code(run)} has no layer {md_code(wanted[0])} "
                         f"(layers: {', '.join(md_code(x) for x in layers)}).")
        return
    open_unit(run, *wanted, key="jump-open", where=st.sidebar)


def notices(items: list[str], where: str = "This link") -> None:
    """One visible notice for the URL values a page ignored (``items``: markdown whose values are escaped,
    as ``dashboard.state`` builds them); an item repeated is listed once."""
    if items:
        listed = "\n".join(f"- {m}" for m in dict.fromkeys(items))
        st.warning(f"{where} had values that are ignored:\n\n" + listed, icon="⚠️")
