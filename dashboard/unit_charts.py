"""Charts of the unit page and the what-if page: one colour per quantity on every chart, every class
named on class axes, axis titles with their units; two quantities of different scale get an axis each.
Class names are shown as typed (``warehouse.text.chart``), never as Plotly's HTML.

The unit page's figures are cached by their data (``st.cache_resource``: a figure takes Plotly 0.05-0.15 s,
and the page reruns on every click); ``st.plotly_chart`` only reads them, and a cached figure must never be
changed after it is returned."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from warehouse.text import chart

#: The colour of each quantity, the same on every chart of the page.
COLORS: dict[str, str] = {
    "pre-activation": "#1f77b4",
    "response": "#9ecae1",
    "output-side gradient": "#d62728",
    "training signal": "#ff7f0e",
    "accuracy change": "#2ca02c",
    "loss change": "#9467bd",
}


def class_names(classes: Sequence[object] | pd.Series) -> list[str]:
    """Class names as Plotly text: shown as typed (a name holding ``<b>`` is not bold)."""
    return [chart(c) for c in classes]


def class_axis(fig: go.Figure, classes: Sequence[object], **where: int) -> None:
    """Every class named on a category x axis (plotly drops every other label when they are crowded);
    ``classes`` as they appear on the axis (``class_names``)."""
    names = [str(c) for c in classes]
    fig.update_xaxes(type="category", tickmode="array", tickvals=names, ticktext=names, title_text="class",
                     **where)


@st.cache_resource(show_spinner=False, max_entries=256)
def act_vs_grad(df: pd.DataFrame, title: str, rectified: bool = False) -> go.Figure:
    """Per class: activation (left panel) beside the gradient signals (right panel, its own scale: a
    gradient near 0.01 stays visible beside activations near 7)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{title}activation (mean per class)",
                                                       f"{title}gradient signals (mean per class)"))
    x = pd.Series(class_names(df["class_name"]), index=df.index)

    def bar(y: str, quantity: str, name: str, col: int) -> None:
        fig.add_trace(go.Bar(x=x, y=df[y], name=name, marker_color=COLORS[quantity], legendgroup=quantity),
                      row=1, col=col)

    bar("mean_act", "pre-activation", "pre-activation z", 1)
    if rectified:
        bar("mean_rect", "response", "response max(f(z) - f(0), 0)", 1)
    bar("grad_mean", "output-side gradient", "output side: what the loss asks (+ = higher)", 2)
    if "train_grad_mean" in df:
        bar("train_grad_mean", "training signal", "training signal: what updates the unit", 2)
    for col in (1, 2):
        class_axis(fig, x.unique(), row=1, col=col)
    fig.update_yaxes(title_text="activation (pre-activation z, response r)", row=1, col=1)
    fig.update_yaxes(title_text="gradient (-dLoss/d unit)", row=1, col=2)
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.25})
    return fig


@st.cache_resource(show_spinner=False, max_entries=256)
def ablation_bars(cls: pd.DataFrame) -> go.Figure:
    """Per class: accuracy and loss change when the unit is zeroed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy change when zeroed (removed - intact)",
                                                       "loss change when zeroed (removed - intact)"))
    x = class_names(cls["class_name"])
    fig.add_trace(go.Bar(x=x, y=cls["abl_acc_delta"], name="accuracy change",
                         marker_color=COLORS["accuracy change"]), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=cls["abl_loss_delta"], name="loss change", marker_color=COLORS["loss change"]),
                  row=1, col=2)
    for col in (1, 2):
        class_axis(fig, x, row=1, col=col)
    fig.update_yaxes(title_text="accuracy change (fraction)", row=1, col=1)
    fig.update_yaxes(title_text="loss change (nats)", row=1, col=2)
    fig.update_layout(showlegend=False)
    return fig


@st.cache_resource(show_spinner=False, max_entries=256)
def trace_lines(trace: pd.DataFrame, y: str, quantity: str, classes: list[str]) -> go.Figure:
    """One quantity per epoch, a line per class (class colours), titled by the quantity."""
    import plotly.express as px

    trace = trace.assign(class_name=class_names(trace["class_name"]))
    fig = px.line(trace, x="epoch", y=y, color="class_name", markers=True, title=f"{quantity} per class, by epoch",
                  category_orders={"class_name": class_names(classes)})
    fig.update_layout(legend_title_text="class")
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text=quantity)
    return fig
