"""Cached access to the warehouse for the pages: one DuckDB connection per session, cached results.

Every cached function is keyed on the warehouse path and a fingerprint of its published runs, so
a newly computed run shows up at once and a stale result is never served. All SQL lives in the
``warehouse`` package; this module only adds Streamlit's caching around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import streamlit as st

from dashboard.correlation import per_layer
from dashboard.state import RANK_DEFAULT
from warehouse import RunInfo, browse, connect, default_path, list_runs, queries
from warehouse.export import export_units, table_bytes
from warehouse.sandbox import SandboxResult, run_query, sources
from warehouse.layout import Fingerprint, fingerprint

#: Per-class metrics read into memory with ``units`` when the warehouse opens (``connect(warm=...)``), so that
#: their first class-level condition or rank is a numpy pass instead of a Parquet read (about 100 ms each at a
#: million units): the presets' class conditions, the rank by one class's default metric and ``grad_mean``
#: (the README's example class condition; with ``anomaly``, the benchmark's).
WARM_CLASS_METRICS: tuple[str, ...] = tuple(dict.fromkeys(
    [r.column for p in queries.PRESETS.values() for r in p.spec.get("class_conditions", ())]
    + [RANK_DEFAULT, "grad_mean"]))


def warehouse_root() -> str:
    """``$NEURON_ATLAS_WAREHOUSE`` or the repository's default warehouse folder."""
    return str(default_path())


@st.cache_resource(max_entries=2, show_spinner="Opening the warehouse…")
def _database(root: str, fp: Fingerprint) -> duckdb.DuckDBPyConnection:
    # Built once per published state of the warehouse and shared by every session: it holds the
    # in-memory copy of ``units``, made in a thread (pages are answered from Parquet until it is
    # complete). Not closed on release: sessions' cursors may still be using it.
    return connect(root, background=True, warm=WARM_CLASS_METRICS)


@st.cache_resource(scope="session", max_entries=2, on_release=lambda con: con.close(), show_spinner=False)
def _connection(root: str, fp: Fingerprint) -> duckdb.DuckDBPyConnection:
    # A DuckDB connection must not serve two threads at once; a session's reruns run one at a time.
    return _database(root, fp).cursor()


def connection(root: str) -> tuple[duckdb.DuckDBPyConnection, Fingerprint]:
    fp = fingerprint(root)
    return _connection(root, fp), fp


@st.cache_data(show_spinner=False, max_entries=8)
def runs(root: str, fp: Fingerprint) -> list[RunInfo]:
    return list_runs(Path(root))


@st.cache_data(show_spinner=False, max_entries=64)
def runs_overview(root: str, fp: Fingerprint) -> pd.DataFrame:
    return queries.runs_overview(_connection(root, fp))


@st.cache_data(show_spinner=False, max_entries=64)
def layer_summary(root: str, fp: Fingerprint, run_id: str) -> pd.DataFrame:
    return queries.layer_summary(_connection(root, fp), run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def layer_names(root: str, fp: Fingerprint, run_id: str) -> list[str]:
    return queries.layer_names(_connection(root, fp), run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def class_names(root: str, fp: Fingerprint, run_id: str) -> list[str]:
    return queries.class_names(_connection(root, fp), run_id)


@st.cache_data(show_spinner=False, max_entries=64)
def epochs(root: str, fp: Fingerprint, run_id: str) -> pd.DataFrame:
    return queries.epochs(_connection(root, fp), run_id)


@st.cache_data(show_spinner=False, max_entries=128)
def histogram(root: str, fp: Fingerprint, run_id: str, metric: str) -> pd.DataFrame:
    return queries.layer_histogram(_connection(root, fp), run_id, metric)


@st.cache_data(show_spinner=False, max_entries=128)
def filtered(root: str, fp: Fingerprint, f: queries.UnitFilter, max_rows: int) -> tuple[pd.DataFrame, int]:
    """The first ``max_rows`` matching units (for display) and how many match in all."""
    con = _connection(root, fp)
    total = queries.count_units(con, f)
    shown = f if f.limit is not None and f.limit <= max_rows else replace(f, limit=max_rows)
    return queries.filter_units(con, shown), total


@st.cache_data(show_spinner=False, max_entries=64)
def rank_by_class(root: str, fp: Fingerprint, f: queries.UnitFilter, metric: str, cls: int) -> pd.DataFrame:
    return queries.rank_by_class(_connection(root, fp), f, metric, cls)


@st.cache_data(show_spinner=False, max_entries=128)
def count(root: str, fp: Fingerprint, f: queries.UnitFilter) -> int:
    return queries.count_units(_connection(root, fp), f)


@st.cache_data(show_spinner=False, max_entries=128)
def scatter(root: str, fp: Fingerprint, f: queries.UnitFilter, x: str, y: str) -> tuple[pd.DataFrame, int]:
    return queries.scatter_data(_connection(root, fp), f, x, y)


@st.cache_data(show_spinner=False, max_entries=128)
def correlations(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return per_layer(points, x, y)


@st.cache_data(show_spinner=False, max_entries=128)
def facets(root: str, fp: Fingerprint, f: queries.UnitFilter) -> pd.DataFrame:
    return browse.facet_counts(_connection(root, fp), f)


@st.cache_data(show_spinner=False, max_entries=256)
def neighbours(root: str, fp: Fingerprint, f: queries.UnitFilter, layer: str, unit: int) -> browse.Neighbours:
    return browse.neighbours(_connection(root, fp), f, layer, unit)


@st.cache_data(show_spinner=False, max_entries=64)
def gallery_page(root: str, fp: Fingerprint, f: queries.UnitFilter, layer: str, sort: str, descending: bool,
                 page: int, per_page: int, kind: str) -> tuple[pd.DataFrame, int]:
    return browse.gallery_page(_connection(root, fp), f, layer, sort, descending, page, per_page, kind)


def export_on_click(root: str, fp: Fingerprint, f: queries.UnitFilter, fmt: str) -> Callable[[], bytes]:
    """The export of every unit matching ``f``, made only when its download button is clicked: a
    million-unit CSV is not built on every rerun. Streamlit runs it on another thread, so it reads
    through a cursor of its own."""
    database = _database(root, fp)

    def make() -> bytes:
        cursor = database.cursor()
        try:
            return export_units(cursor, f, fmt)
        finally:
            cursor.close()

    return make


@st.cache_data(show_spinner=False, max_entries=64)
def frame_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    return table_bytes(pa.Table.from_pandas(df, preserve_index=False), fmt)


@st.cache_data(show_spinner=False, max_entries=256)
def unit_page(root: str, fp: Fingerprint, run_id: str, layer: str, unit: int) -> queries.UnitPage | None:
    return queries.unit_page(_connection(root, fp), run_id, layer, unit)


def sql(root: str, fp: Fingerprint, query: str) -> SandboxResult:
    """Not cached: the SQL page runs what the user asks each time, in a process and database of its
    own over the valid runs' files (never the shared connection), time-, row- and byte-capped."""
    return run_query(sources([r.path for r in runs(root, fp) if r.ok]), query)


@st.cache_data(show_spinner=False, max_entries=16)
def experiments(root: str, fp: Fingerprint) -> list[str]:
    return queries.experiments(_connection(root, fp))


@st.cache_data(show_spinner=False, max_entries=16)
def latest_experiment(root: str, fp: Fingerprint) -> str | None:
    return browse.latest_experiment(_connection(root, fp))


@st.cache_data(show_spinner=False, max_entries=64)
def runs_of(root: str, fp: Fingerprint, experiment: str | None) -> list[str]:
    return queries.runs_of(_connection(root, fp), experiment)


@st.cache_data(show_spinner=False, max_entries=64)
def curve_choices(root: str, fp: Fingerprint, run_ids: tuple[str, ...]) -> pd.DataFrame:
    return queries.curve_choices(_connection(root, fp), list(run_ids))


@st.cache_data(show_spinner=False, max_entries=64)
def curve_bands(root: str, fp: Fingerprint, run_ids: tuple[str, ...], split: str, layer: str,
                order: str) -> pd.DataFrame:
    return queries.curve_bands(_connection(root, fp), list(run_ids), split, layer, order)


@st.cache_data(show_spinner=False, max_entries=64)
def auc_table(root: str, fp: Fingerprint, run_ids: tuple[str, ...], split: str, layer: str,
              order: str) -> pd.DataFrame:
    return queries.auc_table(_connection(root, fp), list(run_ids), split, layer, order)


@st.cache_data(show_spinner=False, max_entries=64)
def unit_distributions(root: str, fp: Fingerprint, run_ids: tuple[str, ...], layer: str) -> pd.DataFrame:
    con = _connection(root, fp)
    layers = sorted({name for r in run_ids for name in queries.curve_layers(con, r, layer)})
    return queries.unit_distributions(con, list(run_ids), layers)
