"""The explorer's URL state round-trips and rejects malformed links with a clear message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.state import ExplorerState, decode, encode, parse_unit
from warehouse.queries import CLASS_METRICS, UNIT_METRICS, QueryError, Range, UnitFilter

finite = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))


def ordered(r: Range) -> Range:
    return Range(r.column, r.hi, r.lo) if r.lo is not None and r.hi is not None and r.lo > r.hi else r


def ranges(columns):
    return st.lists(st.builds(Range, st.sampled_from(columns), finite, finite).map(ordered), max_size=3).map(tuple)


states = st.builds(
    ExplorerState,
    st.builds(UnitFilter, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
              st.lists(st.sampled_from(["conv1", "conv2", "fc1", "fc2"]), unique=True).map(tuple),
              ranges(UNIT_METRICS), st.lists(st.integers(0, 9), max_size=3).map(tuple), ranges(CLASS_METRICS),
              st.one_of(st.none(), st.integers(0, 9)), st.sampled_from([None, True, False]),
              st.sampled_from(UNIT_METRICS), st.booleans(), st.one_of(st.none(), st.integers(1, 10_000))),
    st.sampled_from([None, "dead units", "high gradient, low activation"]),
    st.sampled_from(UNIT_METRICS), st.sampled_from(UNIT_METRICS), st.sampled_from(["layer", "pref_class_name"]))


@given(states)
def test_url_state_round_trips(state):
    assert decode(encode(state)) == state


def test_decode_rejects_malformed_values():
    assert decode({}) is None
    for params, msg in (({"run": "r", "range": "nope:1:"}, "unknown column"), ({"run": "r", "dead": "maybe"}, "yes or no"),
                        ({"run": "r", "sort": "run_id"}, "sort column"), ({"run": "r", "x": "run_id"}, "unknown x"),
                        ({"run": "r", "limit": "ten"}, "integers"), ({"run": "r", "cc": ["anomaly:1:", "layer::2"]}, "unknown")):
        with pytest.raises(QueryError, match=msg):
            decode(params)


def test_parse_unit():
    assert parse_unit("fc1:12") == ("fc1", 12) and parse_unit("features.0:3") == ("features.0", 3)
    assert parse_unit(None) is None
    for bad in ("fc1", "fc1:x", ":3", "fc1:-1"):
        with pytest.raises(QueryError):
            parse_unit(bad)
