"""The visual evidence of one unit, as image grids for the unit page, and thumbnails for the explorer.

Everything is read from the warehouse table ``unit_images`` (computed offline by the images stage,
see docs/metrics.md "Visual evidence"); nothing here loads torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import streamlit as st

from warehouse.bundle import export_bundle
from warehouse.images import thumbnails, unit_images

THUMB = 84  # pixels per image in the grids


def _caption(row: pd.Series, names: list[str]) -> str:
    def name(i: object) -> str:
        return names[int(i)] if names and 0 <= int(i) < len(names) else str(int(i))

    if row["kind"] in ("top", "bottom", "top_crop", "gbp", "grad"):
        text = f"#{int(row['rank']) + 1} act {row['value']:.2f}"
        if pd.notna(row["label"]):
            text += f" · {name(row['label'])}→{name(row['pred'])}"
        return text
    if row["kind"] in ("act_avg", "grad_avg"):
        return f"{name(row['class'])} · w {row['value']:.3g}"
    if row["kind"] in ("happy", "sad"):
        return f"restart {int(row['rank']) + 1} · mean act {row['value']:.2f}"
    return f"filter {int(row['unit'])}"


def _grid(rows: pd.DataFrame, names: list[str], width: int = THUMB) -> None:
    st.image([bytes(p) for p in rows["png"]], caption=[_caption(r, names) for _, r in rows.iterrows()], width=width,
             output_format="PNG")  # "auto" would re-encode as JPEG and smear the pixels


def _class_names(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    found = con.execute("SELECT class_names FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return list(found[0][0]) if found else []


def render_unit_evidence(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int) -> None:
    """All image grids of one unit: top/bottom examples (with receptive-field boxes and crops for
    conv units), guided backprop and gradient of the top examples, weighted class averages,
    Happy/SadMaps with their consistency, the filter of a first-layer conv unit, and a zip download."""
    df = unit_images(con, run_id, layer, unit)
    if df.empty:
        st.info(f"No images for {layer} unit {unit} of run {run_id}: it was computed with --no-images "
                "(or has no such unit). Recompute the run to see its visual evidence.")
        return
    names = _class_names(con, run_id)
    by_kind = {k: g for k, g in df.groupby("kind", sort=False)}

    def show(kind: str, title: str, help_text: str) -> None:
        if kind in by_kind:
            st.markdown(f"**{title}**", help=help_text)
            _grid(by_kind[kind], names)

    st.subheader("Top examples")
    show("top", "Evaluation images that activate the unit most",
         "Ranked by the unit's largest activation over positions; caption: activation, label→prediction. "
         "Conv units: the box is the receptive field of the peak position.")
    show("top_crop", "What the peak position sees (receptive-field crops)",
         "The input patch inside the box, enlarged.")
    show("gbp", "Guided backprop of the unit at its peak, per top example",
         "Springenberg et al.; red pixels raise the unit, blue lower it (captum).")
    show("grad", "Plain gradient of the unit at its peak, per top example",
         "d(unit)/d(input); red raises, blue lowers.")
    st.subheader("Bottom examples")
    show("bottom", "Evaluation images that activate the unit least",
         "Ranked by the unit's largest pre-activation over positions, lowest first (post-ReLU values "
         "would tie at 0).")
    st.subheader("Average inputs per class (training set)")
    show("act_avg", "Weighted by the unit's rectified activation",
         "The mean training image of each class, each example weighted by the unit's mean post-ReLU "
         "activation; w = mean weight of the class.")
    show("grad_avg", "Weighted by the gradient signal (where the loss wants the unit higher)",
         "Each example weighted by max(0, -dLoss/d(unit)); black: no example of the class pushes the unit up.")
    st.subheader("Activation maximization")
    for kind, title in (("happy", "HappyMaps: inputs that maximize the unit"),
                        ("sad", "SadMaps: inputs that minimize the unit")):
        if kind in by_kind:
            rows = by_kind[kind]
            score = float(rows["consistency"].iloc[0])
            st.markdown(f"**{title}** — consistency across restarts {score:.2f}",
                        help="Mean pairwise correlation of the restarts' images: near 1 = one stable picture; "
                             "near 0 = each restart found something else, so do not trust a single map.")
            _grid(rows, names, width=THUMB + 28)
    if "weights" in by_kind:
        st.subheader("Filter weights")
        show("weights", "First-layer convolution filter", "Red positive, blue negative weights.")
    _download(con, run_id, layer, unit)


def _download(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = export_bundle(con, run_id, [(layer, unit)], Path(tmp) / "bundle.zip").read_bytes()
    st.download_button("Download this unit's images (zip: table + PNGs + manifest)", data,
                       file_name=f"{run_id}-{layer}-{unit}-images.zip", mime="application/zip")


def with_thumbnails(con: duckdb.DuckDBPyConnection, run_id: str, units: pd.DataFrame,
                    kind: str = "top") -> tuple[pd.DataFrame, dict[str, object]]:
    """``units`` (columns layer, unit) with a ``thumbnail`` column, and the column config that shows
    it as images in st.dataframe: ``st.dataframe(df, column_config=config)``."""
    thumbs = thumbnails(con, run_id, kind=kind)
    out = units.merge(thumbs, on=["layer", "unit"], how="left")
    return out, {"thumbnail": st.column_config.ImageColumn(f"{kind} image", width="small")}
