"""The unit page's navigation: the unit and epoch from the URL, back to the result list, previous /
next unit in the filter it was opened from, and the page's URL."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import cached, nav, ui
from dashboard.state import VIEW_FIELDS, ExplorerState, encode, for_run, one, parse, parse_unit, unit_params
from warehouse.filters import FIELDS, QueryError, parse_int
from warehouse.text import md, md_code

S = st.session_state
VIEWS = Path(__file__).parent / "views"
PAGE = "unit"
EPOCH_MAX = 1_000_000


def unit_from_url() -> tuple[str, int] | None:
    try:
        return parse_unit(st.query_params.get("unit"))
    except QueryError as e:
        st.error(f"This link's unit is not valid: {md(e)}")
        return None


def remembered() -> tuple[str, int] | None:
    """The unit shown last, when the widgets were cleared by a run of another page (Streamlit drops
    the state of widgets a run does not draw)."""
    return S.get("unit-sel") if "unit-layer" not in S else None


def remember(layer: str, unit: int) -> None:
    S["unit-sel"] = (layer, unit)


def origin(root: str, fp: cached.Fingerprint, run: str, from_url: bool) -> ExplorerState | None:
    """The explorer filter the unit was opened from (kept in the unit page's URL), if any, without the
    layers and classes the run lacks."""
    if from_url:
        keys = [f.url for f in (*FIELDS, *VIEW_FIELDS)]
        state, notices = parse(st.query_params) if any(one(st.query_params, k) is not None for k in keys) \
            else (None, [])
        if state is not None and state.filter.run_id == run:
            state, more = for_run(state, cached.layer_names(root, fp, run), cached.class_names(root, fp, run))
            notices += more
        nav.notices(notices)
        S["unit-origin"] = state
        epoch = one(st.query_params, "epoch")
        S["unit-epoch-url"] = None
        if epoch is not None:
            try:
                S["unit-epoch-url"] = S["unit-epoch"] = parse_int(epoch, "epoch", 0, EPOCH_MAX)
            except QueryError as e:
                nav.notices([f"{md_code('epoch=' + epoch[:20])} is ignored: {md(e)}"])
    state = S.get("unit-origin")
    return state if state is not None and state.filter.run_id == run else None


def navigation_bar(root: str, fp: cached.Fingerprint, run: str, layer: str, unit: int,
                   state: ExplorerState | None) -> None:
    """Back to the results, previous / next in their order, the layer's gallery; writes the page's URL."""
    params = unit_params(run, layer, unit, state)
    epoch = S.get("unit-epoch")
    if epoch is not None and (epoch != S.get("unit-epoch-last") or epoch == S.get("unit-epoch-url")):
        params["epoch"] = str(epoch)  # the last epoch is the default: written only when the link named it
    ui.write_url(PAGE, params)
    cols = st.columns([3, 3, 3, 3, 2])
    back = encode(state) if state is not None else {"run": run}
    cols[0].page_link(str(VIEWS / "explorer.py"), label="← Back to results" if state else "Unit explorer",
                      query_params=back)
    gallery = {**back, "layer": layer}
    cols[4].page_link(str(VIEWS / "gallery.py"), label=f"Gallery of {md(layer)}", query_params=gallery)
    if state is None:
        return
    try:
        where = cached.neighbours(root, fp, state.filter, layer, unit)
    except QueryError as e:
        cols[2].caption(f"Cannot place the unit in the filter: {md(e)}")
        return
    for col, target, label in ((cols[1], where.previous, "← Previous"), (cols[3], where.next, "Next →")):
        if target is None:
            col.button(label, disabled=True, key=f"unit-{label}")
        else:
            col.page_link(str(VIEWS / "unit.py"), label=f"{label} ({md(target[0])}:{target[1]})",
                          query_params=unit_params(run, target[0], target[1], state))
    cols[2].caption(f"Unit {where.position:,} of {where.total:,} in the results" if where.position
                    else f"Not among the {where.total:,} results of the filter")


def epoch_slider(epochs: list[int], from_url: bool) -> int:
    """The epoch shown (slider, in the URL as ``epoch`` unless it is the default, the last)."""
    wanted = S.get("unit-epoch-url") if from_url else None
    if wanted is not None:
        if wanted in epochs:
            S["unit-epoch"] = wanted
        else:
            nav.notices([f"`epoch={wanted}` is ignored: the run recorded epochs {epochs[0]} to {epochs[-1]}."])
    S["unit-epoch-last"] = epochs[-1]
    if S.get("unit-epoch") not in epochs:
        S["unit-epoch"] = epochs[-1]
    if len(epochs) == 1:
        return epochs[0]
    return int(st.select_slider("Epoch", epochs, key="unit-epoch"))
