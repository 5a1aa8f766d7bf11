"""The filter's declared fields: command-line and URL forms round-trip, clauses read as words."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warehouse.filters import (CLASS_METRICS, FIELDS, UNIT_METRICS, QueryError, Range, UnitFilter, add_arguments,
                               describe, filter_params, from_cli, parse_fields, to_cli)
from warehouse.queries import PRESETS

finite = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))


def ranges(columns):
    def ordered(r: Range) -> Range:
        return Range(r.column, r.hi, r.lo) if r.lo is not None and r.hi is not None and r.lo > r.hi else r
    return st.lists(st.builds(Range, st.sampled_from(columns), finite, finite).map(ordered), max_size=3,
                    unique=True).map(tuple)


filters = st.builds(
    UnitFilter, st.just("run"), st.lists(st.sampled_from(["conv1", "fc1", "features.0"]), unique=True).map(tuple),
    ranges(UNIT_METRICS), st.lists(st.integers(0, 99), max_size=3, unique=True).map(tuple), ranges(CLASS_METRICS),
    st.one_of(st.none(), st.integers(0, 9)), st.sampled_from([None, True, False]), st.sampled_from(UNIT_METRICS),
    st.booleans(), st.one_of(st.none(), st.integers(1, 2**63 - 1)))


def cli(args: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    return ap.parse_args(args)


@given(filters)
def test_command_line_and_url_forms_round_trip(f):
    assert from_cli(cli(to_cli(f)), "run") == f
    values, notices = parse_fields(FIELDS, filter_params(f))
    assert not notices and UnitFilter("run", **values) == f


def test_command_line_adds_to_a_preset():
    hgla = PRESETS["high gradient, low activation"]
    f = from_cli(cli(["--layer", "fc1", "--class-condition", "grad_mean:0:", "--sort", "unit"]), "r", hgla)
    assert f.layers == ("fc1",) and f.class_conditions == hgla.spec["class_conditions"] + (Range("grad_mean", 0.0),)
    assert (f.order_by, f.descending) == ("unit", False)  # an explicit sort is ascending unless --desc
    with pytest.raises(QueryError, match="unknown sort column"):
        from_cli(cli(["--sort", "run_id"]), "r")
    with pytest.raises(QueryError, match="yes or no"):
        from_cli(cli(["--dead", "maybe"]), "r")


def test_describe_reads_the_clauses():
    f = UnitFilter("r", layers=("fc1",), ranges=(Range("selectivity", 0.5, None),), dead=False,
                   class_conditions=(Range("anomaly", 1.0, None),), condition_class=3)
    assert describe(f) == "layer in fc1 · selectivity ≥ 0.5 · dead is False · some class with class is 3 and anomaly ≥ 1"
    assert describe(UnitFilter("r")) == ""
