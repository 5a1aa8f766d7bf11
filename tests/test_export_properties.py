"""Property-based tests (hypothesis) of what leaves the warehouse: CSV quoting and file names in bundles."""

from __future__ import annotations

import csv
import io
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from warehouse.bundle import image_name, safe_part
from warehouse.export import table_bytes

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(text, st.integers(-2**31, 2**31 - 1), st.floats(allow_nan=False)), min_size=1, max_size=20))
def test_csv_round_trips_any_value(rows):
    """Commas, quotes, newlines and any unicode survive CSV export exactly; Parquet likewise."""
    names, ints, floats = (list(c) for c in zip(*rows))
    table = pa.table({"name": names, "unit": pa.array(ints, pa.int64()), "value": floats})
    parsed = list(csv.reader(io.StringIO(table_bytes(table, "csv").decode("utf-8"), newline="")))
    assert parsed[0] == ["name", "unit", "value"]
    assert [r[0] for r in parsed[1:]] == names
    assert [int(r[1]) for r in parsed[1:]] == ints
    assert [float(r[2]) for r in parsed[1:]] == floats
    assert pq.read_table(io.BytesIO(table_bytes(table, "parquet"))).equals(table)


@settings(max_examples=300, deadline=None)
@given(text, st.integers(0, 10**6), text, st.integers(0, 100), st.one_of(st.none(), st.integers(0, 1000)))
def test_bundle_member_names_cannot_escape_the_zip_root(layer, unit, kind, rank, cls):
    name = image_name(layer, unit, kind, rank, cls)
    normalized = posixpath.normpath(name)
    assert not name.startswith("/") and "\\" not in name and "\x00" not in name
    assert normalized.startswith("images/") and ".." not in normalized.split("/")
    assert name.count("/") == 3  # images/<layer>/<unit>/<file>: a layer name cannot add folders
    part = safe_part(layer)
    assert part not in ("", ".", "..") and "/" not in part
