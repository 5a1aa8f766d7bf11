"""The first screen's findings for one run: the units most specialized on part of a class, the most important units,
selectivity against importance at a glance, and the memorization comparison when an experiment exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import streamlit as st

from dashboard import cached, nav, overview_charts
from dashboard.state import ExplorerState, encode
from warehouse.filters import UnitFilter
from warehouse.queries import PRESETS, SPECIALIZED
from warehouse.text import md_code

VIEWS = Path(__file__).parent / "views"
TOP = 5


def intro() -> None:
    st.markdown(
        "**What does each unit of a trained network respond to, and does the network need it?** Every unit "
        "(a neuron, or a conv channel) is probed on the evaluation set: its activation and the gradient signal per "
        "class, its class selectivity, what removing it costs (ablation), its training trace and the images that "
        "drive it. Start with the findings below, or browse a layer in the **Layer gallery**.")


def _top(root: str, fp: cached.Fingerprint, f: UnitFilter, title: str, columns: list[str], key: str,
         preset: str | None) -> None:
    table, total = cached.filtered(root, fp, f, TOP)  # the first TOP rows, and how many match in all
    st.markdown(f"**{title}**")
    if total == 0:
        st.caption("None in this run.")
        return
    state = ExplorerState(f, preset)
    shown, links = nav.with_unit_links(table[["layer", "unit", *columns]], f.run_id, state)
    st.dataframe(shown.drop(columns=["layer", "unit"]), hide_index=True, key=key, column_config=links)
    st.page_link(str(VIEWS / "explorer.py"), label=f"All {total:,} in the explorer →", query_params=encode(state))


def findings(root: str, fp: cached.Fingerprint, run: str, layers: list[str]) -> None:
    c1, c2, c3 = st.columns(3)
    with c1:
        special = replace(PRESETS[SPECIALIZED].apply(UnitFilter(run)), dead=False)
        _top(root, fp, special, "Units specialized on part of a class (a class relies on them where they fire)",
             ["specialization_max", "specialization_class"], "first-anomalous", SPECIALIZED)
    with c2:
        important = PRESETS["most important"].apply(UnitFilter(run))
        _top(root, fp, important, "Most important units (ablation raises the loss most)",
             ["abl_loss_delta", "selectivity"], "first-important", "most important")
    with c3:
        st.plotly_chart(overview_charts.selectivity_vs_importance(root, fp, run, tuple(layers)), key="first-scatter")
        st.page_link(str(VIEWS / "explorer.py"), label="Explore the scatter →", query_params={"run": run})


def memorization(root: str, fp: cached.Fingerprint) -> None:
    """When the warehouse holds an experiment: its runs' curve areas beside label noise, linking to Compare."""
    exp = cached.latest_experiment(root, fp)
    if exp is None:
        return
    run_ids = tuple(cached.runs_of(root, fp, exp))
    aucs = cached.auc_table(root, fp, run_ids, "train", "last2", "random")
    st.markdown(f"**Memorization experiment {md_code(exp)}** ({len(run_ids)} runs): networks fitted to noisier labels "
                "lean on more units, so removing units hurts them sooner (smaller area under the curve).")
    if not aucs.empty:
        st.dataframe(aucs[["run_id", "label_noise", "auc_mean", "auc_std", "train_acc", "test_acc", "gen_gap"]],
                     hide_index=True, key="first-memorization")
    st.page_link(str(VIEWS / "compare.py"), label="Compare these runs →",
                 query_params={"exp": exp, "runs": ",".join(run_ids)})
