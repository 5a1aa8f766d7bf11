"""The first screen's charts (accuracy per epoch, each layer's distributions, selectivity against importance),
each built once per published state of the warehouse and shared by every session.

Plotly Express takes 0.1-0.4 s per figure (validating every property); the overview reruns on each click, and
every session starts there, so its figures are cached objects. ``st.plotly_chart`` only reads them
(``Figure.to_dict``): a cached figure must never be changed after it is returned.
"""

from __future__ import annotations

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached
from warehouse.filters import UnitFilter

#: Each distribution's title on the overview (``warehouse.queries.DISTRIBUTIONS`` lists the metrics).
DISTRIBUTION_TITLES = {"selectivity": "class selectivity", "abl_loss_delta": "ablation importance (loss delta)",
                       "abl_acc_delta": "ablation accuracy delta", "taylor_norm": "Taylor importance (normalised)",
                       "sparsity": "sparsity (1 - fraction active)"}


@st.cache_resource(show_spinner=False, max_entries=32)
def accuracy_per_epoch(root: str, fp: cached.Fingerprint, run_id: str) -> go.Figure | None:
    """Training and test accuracy per epoch; None for a run without training epochs."""
    hist = cached.epochs(root, fp, run_id)
    if not len(hist):
        return None
    long = hist.melt("epoch", ["train_acc", "test_acc"], var_name="split", value_name="accuracy")
    return px.line(long, x="epoch", y="accuracy", color="split", markers=True, title="Accuracy per epoch")


@st.cache_resource(show_spinner=False, max_entries=128)
def distribution(root: str, fp: cached.Fingerprint, run_id: str, metric: str) -> go.Figure:
    """``metric``'s histogram, one small panel per layer (facets) on a shared x axis: overlaid bars of several
    layers hide each other."""
    h = cached.histogram(root, fp, run_id, metric)  # a copy: cache_data returns one per call
    h["bin"] = (h["lo"] + h["hi"]) / 2
    fig = px.bar(h, x="bin", y="count", facet_row="layer", title=DISTRIBUTION_TITLES.get(metric, metric),
                 labels={"bin": metric, "count": "units"}, height=110 + 90 * h["layer"].nunique())
    fig.update_yaxes(matches=None, showticklabels=True)
    # The layer's name inside its panel, top right: beside the panel, plotly's right margin cuts it ("fc", "c").
    fig.for_each_annotation(lambda a: a.update(text=f"<b>{a.text.split('=')[-1]}</b>", textangle=0, x=0.995,
                                               xanchor="right", bgcolor="rgba(255,255,255,0.8)"))
    fig.update_traces(marker_line_width=0)
    fig.update_layout(bargap=0.05)
    return fig


@st.cache_resource(show_spinner=False, max_entries=32)
def selectivity_vs_importance(root: str, fp: cached.Fingerprint, run_id: str, layers: tuple[str, ...]) -> go.Figure:
    """Every unit of the run: class selectivity against ablation importance, coloured by layer."""
    points, _ = cached.scatter(root, fp, UnitFilter(run_id), "selectivity", "abl_loss_delta")
    fig = px.scatter(points, x="selectivity", y="abl_loss_delta", color="layer", height=300,
                     category_orders={"layer": list(layers)}, title="Selectivity against importance",
                     render_mode="webgl" if len(points) >= 1000 else "svg")
    fig.update_layout(margin={"l": 0, "r": 0, "t": 40, "b": 0},
                      legend={"orientation": "h", "y": -0.3, "title": {"text": ""}})
    return fig
