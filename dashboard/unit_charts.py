"""Charts of the unit page where two quantities of different scale meet: each gets its own axis."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def act_vs_grad(df: pd.DataFrame, title: str, rectified: bool = False) -> go.Figure:
    """Per class: activation (left axis) beside the gradient signal (right axis, its own scale: a
    gradient near 0.01 stays visible beside activations near 7)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{title}activation (mean per class)",
                                                       f"{title}gradient signals (mean per class)"))
    fig.add_trace(go.Bar(x=df["class_name"], y=df["mean_act"], name="pre-ReLU activation"), row=1, col=1)
    if rectified:
        fig.add_trace(go.Bar(x=df["class_name"], y=df["mean_rect"], name="post-ReLU activation"), row=1, col=1)
    fig.add_trace(go.Bar(x=df["class_name"], y=df["grad_mean"], name="output side: what the loss asks (+ = higher)"),
                  row=1, col=2)
    if "train_grad_mean" in df:
        fig.add_trace(go.Bar(x=df["class_name"], y=df["train_grad_mean"], name="training signal: what updates the unit"),
                      row=1, col=2)
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group", legend={"orientation": "h"})
    return fig
