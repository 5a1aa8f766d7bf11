"""Layer gallery: every unit of a layer as a tile (image, selectivity, importance, badges), sorted by
any metric, filtered by the explorer's filter, paged; a tile opens its unit page."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cached, nav, ui
from dashboard.image_panels import UNREADABLE, decoded, upscale
from dashboard.state import ExplorerState, encode, for_run, one, parse, unit_params
from warehouse.filters import FIELDS, UNIT_METRICS, QueryError, UnitFilter, describe, parse_int
from warehouse.queries import MIN_SPECIALIZATION
from warehouse.schema import IMAGE_KINDS
from warehouse.text import md, md_code

PAGE = "gallery"
PER_PAGE = 48
COLUMNS = 6
TILE = 224  # pixels of a tile's image: stored images are at the input's own size, upscaled here
KINDS = ("top", "top_crop", "happy", "gbp", "act_avg")  # the kinds a tile can show (one image per unit)
VIEWS = Path(__file__).parent
S = st.session_state


def read_url(run_ids: list[str]) -> list[str]:
    """Put a new URL's gallery settings into the widgets, or the URL the page wrote last when its widgets were
    cleared by a visit to another page (Back from a tile's unit page); the notices for values ignored."""
    if not ui.url_is_new(PAGE) and "gal-layer" in S:
        return []
    params = st.query_params
    state, notices = parse(params)
    if state is not None:  # a link without filter values shows the whole layer
        filtered = state.preset is not None or any(one(params, f.url) is not None for f in FIELDS)
        S["gal-filter"] = state if filtered else None
        S["gal-run-url"] = state.filter.run_id
    for key, url, allowed in (("gal-layer", "layer", None), ("gal-sort", "gsort", UNIT_METRICS),
                              ("gal-kind", "img", KINDS)):
        value = one(params, url)
        if value is None:
            continue
        if allowed is not None and value not in allowed:
            notices.append(f"{md_code(f'{url}={value[:40]}')} is ignored: choose one of {md(', '.join(allowed))}.")
            continue
        S[key] = value
    if one(params, "gdesc") is not None:
        S["gal-desc"] = one(params, "gdesc") != "0"
    page = one(params, "page")
    if page is not None:
        try:
            S["gal-page"] = parse_int(page, "page", 1, 10**9)
        except QueryError as e:
            notices.append(f"{md_code('page=' + page[:20])} is ignored: {md(e)}")
    return notices


def tile(col, row: pd.Series, run: str, sort: str, state: ExplorerState) -> None:
    """One unit: its image, its numbers and badges, and a link to its page (in this tab: a linked
    st.image would open a new one)."""
    layer, unit = str(row["layer"]), int(row["unit"])
    if isinstance(row["png"], (bytes, bytearray, memoryview)):  # null (no images) reads as None, NaN or NA
        img = decoded(row["png"])
        col.image(upscale(img, TILE), width="stretch", output_format="PNG")
        if img is None:
            col.caption(UNREADABLE)
    else:
        col.caption("no image")
    badges = []
    if bool(row["dead"]):
        badges.append(":red-badge[dead]")
    elif row["selectivity"] >= 0.5:
        badges.append(":blue-badge[selective]")
    if row["specialization_max"] >= MIN_SPECIALIZATION:
        badges.append(":orange-badge[specialized]")
    col.page_link(str(VIEWS / "unit.py"), label=f"{md(layer)}:{unit}", query_params=unit_params(run, layer, unit, state))
    lines = [f"sel {row['selectivity']:.2f} · imp {row['abl_loss_delta']:+.3f}"]
    if sort not in ("selectivity", "abl_loss_delta", "unit", "layer_index"):
        lines.append(f"{sort} {row[sort]:.3g}")
    col.caption(" · ".join(lines) + ("  \n" + " ".join(badges) if badges else ""))


def main() -> None:
    st.title("Layer gallery")
    root, fp, runs = ui.page_runs()
    run_ids = [r.run_id for r in runs]
    notices = read_url(run_ids)
    run = ui.pick_run(run_ids, S.pop("gal-run-url", None), "gal-run")
    layers = cached.layer_names(root, fp, run)
    classes = cached.class_names(root, fp, run)
    base: ExplorerState | None = S.get("gal-filter")
    if base is None and S.get("ex-state") is not None and S["ex-state"].filter.run_id == run:
        base = S["ex-state"]
    if base is not None and base.filter.run_id != run:
        base = None
    if base is not None:
        base, more = for_run(base, layers, classes)
        notices += more
    if S.get("gal-layer") not in layers:
        if S.get("gal-layer") is not None:
            notices.append(f"Run {md_code(run)} has no layer {md_code(S['gal-layer'])}; showing {md_code(layers[0])}.")
        pick = [x for x in (base.filter.layers if base else ()) if x in layers]
        S["gal-layer"] = pick[0] if pick else layers[0]
    S.setdefault("gal-sort", "selectivity")
    S.setdefault("gal-desc", True)
    S.setdefault("gal-kind", "top")
    nav.notices(notices)

    c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
    layer = c1.selectbox("Layer", layers, key="gal-layer")
    sort = c2.selectbox("Sort by", UNIT_METRICS, key="gal-sort")
    desc = c3.checkbox("Descending", key="gal-desc")
    kind = c4.selectbox("Image", [k for k in KINDS if k in IMAGE_KINDS], key="gal-kind",
                        format_func=lambda k: {"top": "top example", "top_crop": "top example, receptive field",
                                               "happy": "HappyMap", "gbp": "guided backprop",
                                               "act_avg": "activation-weighted average"}[k])
    f = replace(base.filter, layers=(layer,), order_by=sort, descending=desc) if base is not None \
        else UnitFilter(run, layers=(layer,), order_by=sort, descending=desc)
    if base is not None and describe(base.filter):
        st.caption(f"Filtered by the explorer's filter: {md(describe(replace(base.filter, layers=())))}")
    try:
        total = cached.count(root, fp, f)
    except QueryError as e:
        st.error(md(str(e)))
        st.stop()
    pages = max(1, -(-total // PER_PAGE))
    if not 1 <= S.get("gal-page", 1) <= pages:  # a link's page, or the page of a longer layer or filter
        st.caption(f"Page {S['gal-page']:,} does not exist here ({pages:,} page(s) of {PER_PAGE}); showing page 1.")
        S["gal-page"] = 1
    c1, c2 = st.columns([1, 3])
    page = int(c1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key="gal-page"))
    c2.markdown(f"**{total:,} unit(s)** of {md_code(layer)}" + (f"; units {(page - 1) * PER_PAGE + 1:,} to "
                                                         f"{min(page * PER_PAGE, total):,}" if total else ""))
    view = ExplorerState(f, base.preset if base else None)
    params = {**encode(view), "layer": layer, "gsort": sort, "gdesc": "1" if desc else "0", "img": kind,
              "page": str(page)}
    for fld in FIELDS:  # the gallery's own layer, sort and direction are not the filter's
        if fld.name in ("layers", "order_by", "descending"):
            params.pop(fld.url, None)
    ui.write_url(PAGE, params)
    if total == 0:
        st.info("No unit of this layer matches the filter.")
        return
    tiles, _ = cached.gallery_page(root, fp, f, layer, sort, desc, page - 1, PER_PAGE, kind)
    if tiles["png"].isna().all():
        st.info(f"No {md_code(kind)} images for this layer: the run was computed with --no-images, or this kind does not "
                "apply (receptive-field crops exist for conv units only).")
    cols = st.columns(COLUMNS)
    for i, (_, row) in enumerate(tiles.iterrows()):
        if i and i % COLUMNS == 0:
            cols = st.columns(COLUMNS)
        tile(cols[i % COLUMNS], row, run, sort, view)


main()
