"""The explorer's URL state round-trips and rejects malformed links with a clear message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.state import ExplorerState, decode, encode, for_run, parse, parse_unit
from warehouse.queries import CLASS_METRICS, PRESETS, UNIT_METRICS, QueryError, Range, UnitFilter

finite = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))


def ordered(r: Range) -> Range:
    return Range(r.column, r.hi, r.lo) if r.lo is not None and r.hi is not None and r.lo > r.hi else r


def ranges(columns):
    return st.lists(st.builds(Range, st.sampled_from(columns), finite, finite).map(ordered), max_size=3,
                    unique=True).map(tuple)


states = st.builds(
    ExplorerState,
    st.builds(UnitFilter, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
              st.lists(st.sampled_from(["conv1", "conv2", "fc1", "fc2"]), unique=True).map(tuple),
              ranges(UNIT_METRICS), st.lists(st.integers(0, 9), max_size=3, unique=True).map(tuple), ranges(CLASS_METRICS),
              st.one_of(st.none(), st.integers(0, 9)), st.sampled_from([None, True, False]),
              st.sampled_from(UNIT_METRICS), st.booleans(), st.one_of(st.none(), st.integers(1, 10_000))),
    st.sampled_from([None, "dead units", "high gradient, low activation"]),
    st.sampled_from(UNIT_METRICS), st.sampled_from(UNIT_METRICS), st.sampled_from(["layer", "pref_class_name"]),
    st.booleans(), st.booleans())


@given(states.filter(lambda s: s.preset is None or s.filter != UnitFilter(
    s.filter.run_id, layers=s.filter.layers, condition_class=s.filter.condition_class)))
def test_url_state_round_trips(state):
    """Every state survives the URL (repeated values are reported, so the lists hold none; a link with
    a preset and no filter values opens the preset, so such a state is left out)."""
    assert decode(encode(state)) == state


def test_decode_rejects_malformed_values():
    assert decode({}) is None
    for params, msg in (({"run": "r", "range": "nope:1:"}, "unknown column"), ({"run": "r", "dead": "maybe"}, "yes or no"),
                        ({"run": "r", "sort": "run_id"}, "sort column"), ({"run": "r", "x": "run_id"}, "unknown x"),
                        ({"run": "r", "limit": "ten"}, "whole number"), ({"run": "r", "cc": ["anomaly:1:", "layer::2"]}, "unknown")):
        with pytest.raises(QueryError, match=msg):
            decode(params)


def test_parse_unit():
    assert parse_unit("fc1:12") == ("fc1", 12) and parse_unit("features.0:3") == ("features.0", 3)
    assert parse_unit(None) is None
    for bad in ("fc1", "fc1:x", ":3", "fc1:-1", "fc1:١٢", "fc1:99999999999"):
        with pytest.raises(QueryError):
            parse_unit(bad)


@pytest.mark.parametrize("params, kept, notice", [
    ({"limit": "99999999999999999999"}, {"limit": None}, "from 1 to"),
    ({"limit": "-5"}, {"limit": None}, "from 1 to"),
    ({"limit": "١٢"}, {"limit": None}, "ASCII digits"),
    ({"layers": "fc1,fc1,fc2"}, {"layers": ("fc1", "fc2")}, "repeated"),
    ({"cls": "2²"}, {"condition_class": None}, "whole number"),
    ({"pref": "1,x,3"}, {"pref_classes": (1, 3)}, "`pref=x` is ignored"),
    ({"sort": ["unit", "selectivity"]}, {"order_by": "selectivity"}, "given 2 times"),
])
def test_parse_keeps_the_good_values_and_names_the_ignored_ones(params, kept, notice):
    state, notices = parse({"run": "r", "range": "selectivity:0.5:", **params})
    assert state.filter.ranges == (Range("selectivity", 0.5, None),)
    for name, value in kept.items():
        assert getattr(state.filter, name) == value
    assert len(notices) == 1 and notice in notices[0], notices


def test_parse_presets_links_and_unknown_presets():
    state, notices = parse({"run": "r", "preset": "highly selective"})  # a short link opens the preset
    assert state.filter == PRESETS["highly selective"].apply(UnitFilter("r")) and not notices
    assert not state.preset_modified
    state, notices = parse({"run": "r", "preset": "highly selective", "layers": "fc1"})  # on these layers
    assert state.filter == PRESETS["highly selective"].apply(UnitFilter("r", layers=("fc1",)))
    state, notices = parse({"run": "r", "preset": "highly selective", "dead": "no"})  # the filter as written
    assert state.filter == UnitFilter("r", dead=False) and state.preset_modified
    state, notices = parse({"run": "r", "preset": "nope"})
    assert state.preset is None and "unknown preset 'nope'" in notices[0]
    state, notices = parse({"run": "x" * 500})
    assert state is None and notices[0].startswith("`run=" + "x" * 40 + "` is ignored: not a run id")


def test_for_run_drops_layers_and_classes_the_run_lacks():
    state = ExplorerState(UnitFilter("r", layers=("fc1", "fc9"), pref_classes=(3, 12), condition_class=99),
                          rank="anomaly:10")
    fixed, notices = for_run(state, ["conv1", "fc1"], [str(i) for i in range(10)])
    assert fixed.filter == UnitFilter("r", layers=("fc1",), pref_classes=(3,)) and fixed.rank is None
    assert len(notices) == 4 and "fc9" in notices[0] and "`pref=12`" in notices[1] and "`cls=99`" in notices[2]
    assert "`rank=anomaly:10` is ignored: run `r` has 10 classes, 0 to 9" in notices[3]


def test_what_if_units_from_a_link_are_escaped_counted_and_deduplicated():
    from dashboard.whatif_panel import parse_units

    units, notices = parse_units("fc1:3, fc1:3,`x`:red[boo]," + ",".join(f"bad{i}" for i in range(5000)) + ",conv2:5")
    assert units == ["fc1:3", "conv2:5"]
    assert notices[0].startswith("`` `x`:red[boo] `` is left out: unit must look like LAYER:INDEX")
    assert len(notices) == 4 and notices[3] == "… and 4,998 other value(s) that are not units."
