"""Unit page sections on what a unit's removal does: whether the effect is real (paired interval,
McNemar), which examples need the unit, and, live on the run's checkpoint, their images and the
split of a class into the examples where the unit fires and where it does not."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import ui
from warehouse import queries
from warehouse.layout import run_dir as run_folder
from warehouse.text import chart, md

GALLERY = 12  # example images shown
SCALE = 3  # pixels per input pixel in the gallery


def _fmt_p(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def render_significance(u: dict[str, Any], n_eval: int) -> None:
    """Is the removal effect larger than its noise? Loss interval and tests, flips and McNemar."""
    st.subheader("Is the removal effect real?")
    c = st.columns(4)
    c[0].metric("Loss change, 95% interval", f"{u['abl_loss_delta']:+.4f}",
                help="Paired t interval over the evaluation examples' own loss changes.")
    c[0].caption(f"[{u['abl_loss_lo']:+.4f}, {u['abl_loss_hi']:+.4f}]")
    c[1].metric("p (loss)", _fmt_p(u["abl_loss_p"]), help="Paired t-test; q is Benjamini-Hochberg within the layer.")
    c[1].caption(f"q = {_fmt_p(u['abl_loss_q'])}")
    c[2].metric("Flips right→wrong / wrong→right", f"{int(u['abl_n_hurt'])} / {int(u['abl_n_helped'])}")
    c[3].metric("p (accuracy, exact McNemar)", _fmt_p(u["abl_acc_p"]))
    if u["abl_loss_q"] <= queries.ALPHA and u["abl_loss_lo"] > 0:
        verdict = "Removing this unit **significantly raises the loss** (q <= 0.05)."
    elif u["abl_loss_q"] <= queries.ALPHA and u["abl_loss_hi"] < 0:
        verdict = "Removing this unit **significantly lowers the loss**: the network does better without it."
    else:
        verdict = "The loss change is **within the noise** of this evaluation set."
    st.caption(f"{verdict} Accuracy moves in steps of {1 / max(n_eval, 1):.4f} on these {n_eval:,} examples.")


def _gallery(images: np.ndarray, captions: list[str], key: str) -> None:
    if not len(images):
        return
    big = [np.kron(im.squeeze(-1) if im.shape[-1] == 1 else im,
                   np.ones((SCALE, SCALE) if im.shape[-1] == 1 else (SCALE, SCALE, 1), dtype=np.uint8)) for im in images]
    st.image(big, caption=captions, width=28 * SCALE)


def _mean(img: np.ndarray | None) -> np.ndarray | None:
    if img is None:
        return None
    return img.squeeze(-1) if img.shape[-1] == 1 else img


def render_examples(root: str, con: Any, run: str, layer: str, unit: int, u: dict[str, Any],
                    class_names: list[str]) -> None:
    """The examples whose prediction flips or whose loss rises most without the unit, each with its
    prediction intact and without the unit; right -> wrong first; filterable by class. Images and the
    firing split on demand (the only part of the unit page that loads torch)."""
    st.subheader("Which examples need this unit?")
    c1, c2 = st.columns([1, 3])
    pick = c1.selectbox("Examples of class", ["all classes", *class_names], key="unit-examples-class")
    label = None if pick == "all classes" else class_names.index(pick)
    rows = queries.unit_examples(con, run, layer, unit, label)
    if rows.empty:
        st.info("Removing this unit flips no prediction and raises no example's loss" +
                ("." if label is None else f" among the examples of class {ui.text(pick)}."))
    else:
        def named(s: pd.Series) -> pd.Series:
            return s.map(lambda c: class_names[int(c)] if pd.notna(c) and 0 <= int(c) < len(class_names) else None)

        shown = rows.assign(label=named(rows["label"]), pred=named(rows["pred"]),
                            pred_ablated=named(rows["pred_ablated"]))
        shown = shown.rename(columns={"pred": "prediction intact", "pred_ablated": "prediction without the unit"})
        counts = rows.groupby("kind").size().to_dict()
        c2.caption(f"Right→wrong: {int(u['abl_n_hurt'])} in all (up to 100 listed), wrong→right: "
                   f"{int(u['abl_n_helped'])}, and the {counts.get('loss_rise', 0)} largest loss rises; right→wrong "
                   "first. `loss_delta` is the example's loss change when the unit is clamped to zero.")
        if shown["subgroup"].notna().any():
            by = shown[shown.kind != "helped"].groupby(shown["subgroup"].fillna("(none)")).size()
            st.caption("Subgroups of the hurt and loss-rise examples: " +
                       ", ".join(f"{ui.text(g)}: {n}" for g, n in by.items()))
        st.dataframe(shown, hide_index=True, key="unit-examples", column_config={
            "loss_delta": st.column_config.NumberColumn("loss change", format="%+.4f"),
            "loss": st.column_config.NumberColumn("loss intact", format="%.4f")})
        ui.downloads(f"unit-{run}-{layer}-{unit}-examples", "dl-unit-examples", frame=shown)
    default = next((u[c] for c in ("specialization_class", "anomaly_class", "pref_class")
                    if u.get(c) is not None and not pd.isna(u[c])), 0)
    cls = st.selectbox("Class to split by firing (default: the unit's specialization class)", class_names,
                       index=int(default), key="unit-split-class")
    if st.button("Show the examples and split the class (loads the run's checkpoint and data)", key="unit-live"):
        _live(root, run, layer, unit, queries.unit_examples(con, run, layer, unit), class_names.index(cls),
              class_names)


def _live(root: str, run: str, layer: str, unit: int, rows: pd.DataFrame, cls: int, class_names: list[str]) -> None:
    from compute.errors import AtlasError  # torch loads here, when a person asks
    from compute.run.unit_evidence import example_images, firing_split, mean_image

    run_dir = run_folder(root, run)
    try:
        need = rows[rows.kind != "helped"].drop_duplicates("example")
        images = example_images(run_dir, need["example"].head(GALLERY).tolist())
        caps = [f"#{r.example} label {class_names[int(r.label)]}: {class_names[int(r.pred)]}→"
                f"{class_names[int(r.pred_ablated)]} Δloss {r.loss_delta:+.3f}" for r in need.head(GALLERY).itertuples()]
        split = firing_split(run_dir, layer, unit, cls)
        need_mean = mean_image(run_dir, need["example"].tolist())
    except AtlasError as e:
        st.error(f"Cannot read this run's data: {md(e)}")
        return
    st.markdown("**Examples that need this unit** (hurt, then largest loss rises)")
    _gallery(images, caps, "unit-gallery")
    c = st.columns(2)
    if need_mean is not None:
        c[0].image(_mean(need_mean), caption="mean of the examples that need the unit", width=28 * SCALE, clamp=True)
    c[1].image(_mean(split.mean_class), caption=f"mean of class {class_names[cls]}", width=28 * SCALE, clamp=True)
    st.markdown(f"**Class {md(class_names[cls])}: where the unit fires vs where it does not**")
    c = st.columns(2)
    for col, name, eff, img, groups in ((c[0], "fires", split.fires, split.mean_fires, split.groups_fires),
                                        (c[1], "silent", split.silent, split.mean_silent, split.groups_silent)):
        if img is not None:
            col.image(_mean(img), caption=f"mean where the unit is {name}", width=28 * SCALE, clamp=True)
        col.metric(f"{name}: examples", eff.n)
        col.metric(f"{name}: loss change when removed", f"{eff.loss_delta:+.4f}" if eff.n else "n/a")
        col.metric(f"{name}: accuracy change when removed", f"{eff.acc_delta:+.3f}" if eff.n else "n/a")
        if groups:
            col.caption("subgroups: " + ", ".join(f"{md(g)}: {n}" for g, n in groups.items()))
    _specificity(split.specificity, class_names)


def _specificity(t: Any, class_names: list[str]) -> None:
    """The specificity test (``compute.measure.subsets.specificity``): within the class, the examples it fires
    on against the other examples it is active on, per unit of activation removed (silent examples are no
    comparison: removal never changes them; raw changes are none either: removal takes more where it is stronger)."""
    st.markdown("**Do the examples it fires on rely on it more?**")
    c = st.columns(2)
    c[0].metric(f"loss change per unit of activation, fires ({t.n_fire})",
                f"{t.per_mass_fire:+.4f}" if t.n_fire else "n/a")
    c[1].metric(f"the same, active but not firing ({t.n_rest})", f"{t.per_mass_rest:+.4f}" if t.n_rest else "n/a")
    st.caption(f"Among class {md(class_names[t.cls])}'s examples on which the unit is active, does removing it cost "
               "the examples it fires on more, per unit of the activation it takes away, than the others? (Medians "
               "above.) One-sided Mann-Whitney U test that they lose more by at least a margin of "
               f"{t.margin:.2g} (a set share of the unit's typical loss change per unit of activation: less is what a "
               f"nonlinear network gives any unit): p = {_fmt_p(t.p)}. "
               "Firing against silent examples would be no test (removal never changes an "
               "example on which the unit is silent), nor would raw loss changes (removal takes more away where "
               "the unit is stronger). docs/metrics.md, Specificity.")


def render_class_removal(con: Any, run: str, class_names: list[str]) -> None:
    """Per class: the fewest units, removed most-important-for-the-class first, that halve its accuracy while
    the other classes keep 90% of theirs, named with links and a one-click what-if; the class's curve
    beside the other classes' curves."""
    import plotly.graph_objects as go

    from dashboard import nav, whatif_panel

    table = queries.class_removal(con, run)
    if table.empty:
        st.info("This run has no per-class removal curves.")
        return
    st.caption("Units of a layer (or the last two pooled) removed in the order of their single-unit ablation "
               "loss change for the class, live units only. `n_to_halve`: the fewest that halve the class's "
               "accuracy while the other classes keep at least 90% of theirs (every count up to 16, then 5% "
               "steps); empty where no count does.")
    c1, c2 = st.columns(2)
    layer = c1.selectbox("Layer", list(dict.fromkeys(table["layer"])), key="ex-cr-layer")
    cls = c2.selectbox("Class", class_names, key="ex-cr-class")
    k = class_names.index(cls)
    units, row = queries.halving_set(con, run, layer, k)
    labels = [f"{a}:{b}" for a, b in zip(units["layer"], units["unit"])]
    with st.container(border=True):
        if row is None:
            st.info(f"No removal curve for {ui.text(layer)}, class {ui.text(cls)}.")
        elif not labels:
            st.markdown(f"**{ui.text(layer)}, class {ui.text(cls)}**: no number of units on the curve's grid halves "
                        f"the class (accuracy {row['class_acc_intact']:.2f} intact) while the others keep 90%.")
        else:
            st.markdown(
                f"**{ui.text(layer)}, class {ui.text(cls)}: the fewest units that halve it ({len(labels)})**, from "
                f"{row['class_acc_intact']:.2f} to {row['class_acc_then']:.2f}, while the other classes go from "
                f"{row['other_acc_intact']:.2f} to {row['other_acc_then']:.2f}: "
                + ", ".join(f"[{lab}]({nav.unit_url(run, *lab.rsplit(':', 1))})" for lab in labels))
            whatif_panel.link(st, run, labels, f"Remove these units in what-if ({len(labels)})")
    curves = queries.class_curves_of(con, run, layer)
    fig = go.Figure()
    for other, g in curves[curves["class"] != k].groupby("class"):
        fig.add_trace(go.Scatter(x=g["n_ablated"], y=g["class_acc"], mode="lines", line={"color": "#cccccc", "width": 1},
                                 name=f"class {chart(class_names[int(other)])}", legendgroup="classes",
                                 showlegend=bool(other == (0 if k else 1))))
    mine = curves[curves["class"] == k]
    fig.add_trace(go.Scatter(x=mine["n_ablated"], y=mine["class_acc"], name=f"class {chart(cls)}", mode="lines+markers",
                             line={"color": "#d62728", "width": 3}))
    fig.add_trace(go.Scatter(x=mine["n_ablated"], y=mine["other_acc"], name="other classes' examples (together)",
                             mode="lines+markers", line={"color": "#1f77b4"}))
    if labels:
        fig.add_vline(x=len(labels), line_dash="dot", annotation_text=f"{len(labels)} units: halved")
    fig.update_layout(xaxis_title="units removed (most important for the class first)",
                      yaxis_title="accuracy (fraction of the class's examples)",
                      title=f"{chart(layer)}: removing class {chart(cls)}'s units (grey: each other class's own curve)")
    st.plotly_chart(fig, key="ex-cr-plot")
    shown = st.selectbox("Table: classes", ["all classes", *class_names], key="ex-cr-table-class")
    view = table if shown == "all classes" else table[table["class"] == class_names.index(shown)]
    st.dataframe(view, hide_index=True, key="ex-class-removal")
    ui.downloads(f"class-removal-{run}", "dl-class-removal", frame=view)
