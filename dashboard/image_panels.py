"""The visual evidence of one unit, as image grids for the unit page, and thumbnails for the explorer.

Everything is read from the warehouse table ``unit_images`` (computed offline by the images stage,
see docs/metrics.md "Visual evidence"); nothing here loads torch.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from warehouse.bundle import export_bundle
from warehouse.images import input_shape, thumbnails, unit_images
from warehouse.text import md_code

THUMB = 160  # pixels per image in the grids: a digit or a receptive-field crop can be read
LARGE = 336  # pixels per image when enlarged
FLAT = 2  # grey levels: a map whose pixels span no more is flat
MAX_PIXELS = 4096 * 4096  # a stored image larger than this is not decoded (the stage writes input-sized images)
UNREADABLE = "image unreadable"


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


def _grid(rows: pd.DataFrame, names: list[str], width: int = THUMB, key: str = "") -> None:
    """The images in a row, and an Enlarge button that shows them large in a dialog."""
    pngs = list(rows["png"])
    images = [decoded(p) for p in pngs]  # once: the caption and the picture both need it
    captions = [_caption(r, names) + ("" if img is not None else f" · {UNREADABLE}")
                for img, (_, r) in zip(images, rows.iterrows())]
    # Upscaled by whole pixels here: images are stored at their own size, and the browser would
    # blur a small image it enlarges.
    st.image([upscale(img, width) for img in images], caption=captions, width=width,
             output_format="PNG")  # "auto" would re-encode as JPEG
    if key and st.button("Enlarge", key=f"enlarge-{key}", icon=":material/zoom_in:", type="tertiary"):
        _enlarged(pngs, captions)


@st.dialog("Enlarged", width="large")
def _enlarged(pngs: list[bytes], captions: list[str]) -> None:
    st.image([upscale(p, LARGE) for p in pngs], caption=captions, width=LARGE, output_format="PNG")


def decoded(png: object) -> Image.Image | None:
    """The stored image, or None where ``png`` is missing, not an image or over ``MAX_PIXELS``: a run's
    tables can be rewritten with the manifest refreshed, and one such picture must not take a page down."""
    if not isinstance(png, bytes | bytearray | memoryview):
        return None
    try:
        img = Image.open(io.BytesIO(bytes(png)))
        if img.width * img.height > MAX_PIXELS:
            return None
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return img


def _placeholder() -> Image.Image:
    """What an unreadable image is shown as: a grey square (its caption says why)."""
    return Image.new("L", (28, 28), 128)


def upscale(png: object, size: int) -> bytes:
    """PNG bytes (or an image ``decoded`` already) upscaled by a whole factor (nearest neighbour) to about
    ``size`` pixels on the longer side (a grey square for an unreadable image, see ``decoded``)."""
    img = png if isinstance(png, Image.Image) else decoded(png)
    return _upscale_to(img or _placeholder(), size)


def is_flat(png: object) -> bool:
    """Whether an image is (nearly) one colour: an activation maximization that found nothing (an
    unreadable image is not: it says nothing of the optimisation)."""
    img = decoded(png)
    if img is None:
        return False
    pixels = np.asarray(img.convert("L"), dtype=np.int16)
    return int(pixels.max() - pixels.min()) <= FLAT


def crop_to_box(png: object, box: list[int], input_hw: tuple[int, int], size: int = 112) -> object:
    """The part of a full-input map (stored at ``input_hw`` or a whole multiple of it) inside a
    receptive-field box [y0, x0, y1, x1] in input pixels, upscaled by whole pixels to about ``size``
    (an unreadable image is passed on as it is)."""
    img = decoded(png)
    if img is None:
        return png
    scale = img.height // input_hw[0]
    y0, y1 = sorted(min(max(int(v) * scale, 0), img.height) for v in box[0::2])  # within the image: a
    x0, x1 = sorted(min(max(int(v) * scale, 0), img.width) for v in box[1::2])   # hand-edited box is no crash
    if y0 == y1 or x0 == x1:
        return png
    return _upscale_to(img.crop((x0, y0, x1, y1)), size)


def _upscale_to(img: Image.Image, size: int) -> bytes:
    """Nearest-neighbour upscale by a whole factor to about ``size`` (a browser would blur the pixels)."""
    factor = max(1, round(size / max(img.size)))
    img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless at any level; 1 is the fastest
    return buf.getvalue()


def _cropped(maps: pd.DataFrame, top: pd.DataFrame | None, input_hw: tuple[int, int] | None) -> pd.DataFrame | None:
    """Conv units' gbp / grad maps cut to the receptive field of the top example of the same rank."""
    if top is None or input_hw is None or top["box"].isna().all():
        return None
    boxes = {int(r["rank"]): r["box"] for _, r in top.iterrows() if r["box"] is not None and len(r["box"]) == 4}
    if not all(int(r) in boxes for r in maps["rank"]):
        return None
    out = maps.copy()
    out["png"] = [crop_to_box(p, list(boxes[int(r)]), input_hw) for p, r in zip(maps["png"], maps["rank"])]
    return out


def _class_names(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    found = con.execute("SELECT class_names FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return list(found[0][0]) if found else []


TOP_PART = ("top", "top_crop")  # the pictures the unit page shows first


def render_unit_evidence(con: duckdb.DuckDBPyConnection, run_id: str, layer: str, unit: int,
                         part: str = "all") -> None:
    """Image grids of one unit: top/bottom examples (with receptive-field boxes and crops for
    conv units), guided backprop and gradient of the top examples, weighted class averages,
    Happy/SadMaps with their consistency, the filter of a first-layer conv unit, and a zip download.
    ``part``: ``"top"`` the top examples and their crops only, ``"rest"`` everything else, ``"all"``."""
    df = unit_images(con, run_id, layer, unit)
    if df.empty:
        if part == "rest":
            return
        st.info(f"No images for {md_code(layer)} unit {unit} of run {md_code(run_id)}: it was computed with --no-images "
                "(or has no such unit). Recompute the run to see its visual evidence.")
        return
    names = _class_names(con, run_id)
    by_kind = {k: g for k, g in df.groupby("kind", sort=False)}
    shape = input_shape(con, run_id)
    for kind in ("gbp", "grad"):
        if kind in by_kind and (cut := _cropped(by_kind[kind], by_kind.get("top"), shape[-2:] if shape else None)) \
                is not None:
            by_kind[kind] = cut
    crop = " (cropped to the receptive field)" if "top" in by_kind and by_kind["top"]["box"].notna().any() else ""
    if part != "all":
        by_kind = {k: g for k, g in by_kind.items() if (k in TOP_PART) == (part == "top")}

    def show(kind: str, title: str, help_text: str) -> None:
        if kind in by_kind:
            st.markdown(f"**{title}**", help=help_text)
            _grid(by_kind[kind], names, key=kind)

    if part != "rest":
        st.subheader("Top examples")
    show("top", "Evaluation images that activate the unit most",
         "Ranked by the unit's largest activation over positions; caption: activation, label→prediction. "
         "Conv units: the box is the receptive field of the peak position.")
    show("top_crop", "What the peak position sees (receptive-field crops)",
         "The input patch inside the box, enlarged.")
    show("gbp", f"Guided backprop of the unit at its peak, per top example{crop}",
         "Springenberg et al.; red pixels raise the unit, blue lower it (captum). Conv units: only the "
         "receptive field of the peak position can matter, so the map is cut to it and enlarged.")
    show("grad", f"Plain gradient of the unit at its peak, per top example{crop}",
         "d(unit)/d(input); red raises, blue lowers.")
    if part == "top":
        return
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
            if all(is_flat(p) for p in rows["png"]):
                st.markdown(f"**{title}** — flat image: the optimisation found nothing",
                            help="Every restart ended on a single colour: no input pattern moved this unit "
                                 "(often a dead unit), so there is no picture to read and the consistency "
                                 "score means nothing.")
            else:
                st.markdown(f"**{title}** — consistency across restarts {score:.2f}",
                            help="Mean pairwise correlation of the restarts' images: near 1 = one stable picture; "
                                 "near 0 = each restart found something else, so do not trust a single map.")
            _grid(rows, names, width=THUMB + 28, key=kind)
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
