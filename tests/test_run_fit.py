"""A filter checked against its run (warehouse.run_fit): what is taken out and how each form words it."""

from __future__ import annotations

import pytest

from warehouse.filters import QueryError, UnitFilter
from warehouse.run_fit import check, classes_text, fit, notices

LAYERS = ["conv1", "fc1"]
DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover"]


def test_fit_takes_out_exactly_what_the_run_lacks():
    f = UnitFilter("r", layers=("fc1", "fc9"), pref_classes=(3, 12, -1), condition_class=99, limit=5)
    fitted, misfits = fit(f, LAYERS, DIGITS)
    assert fitted == UnitFilter("r", layers=("fc1",), pref_classes=(3,), limit=5)
    assert [(m.field.name, m.values) for m in misfits] == [
        ("layers", ("fc9",)), ("pref_classes", (12, -1)), ("condition_class", (99,))]
    ok = UnitFilter("r", layers=("conv1",), pref_classes=(0, 9), condition_class=9)
    assert fit(ok, LAYERS, DIGITS) == (ok, [])
    check(ok, LAYERS, DIGITS)


def test_the_command_line_form_is_one_paragraph_naming_options_and_the_run():
    with pytest.raises(QueryError) as e:
        check(UnitFilter("r", layers=("fc9",), condition_class=10), LAYERS, FASHION)
    text = str(e.value)
    assert "\n" not in text
    assert "Run 'r' has no layer fc9 (--layer); its layers are conv1, fc1." in text
    assert ("Run 'r' has 3 classes, 0 to 2 (0 T-shirt/top, 1 Trouser, 2 Pullover); there is no class 10 (--class); "
            "choose among them.") in text


def test_the_url_form_names_the_parameter_and_escapes_names():
    f = UnitFilter("r", pref_classes=(5,))
    _, misfits = fit(f, LAYERS, ["a*b", "[x](y)"])
    (text,) = notices(misfits, "r", LAYERS, ["a*b", "[x](y)"])
    assert text == r"`pref=5` is ignored: run `r` has 2 classes, 0 to 1 (0 a\*b, 1 \[x\]\(y\)); there is no class 5."


def test_long_lists_are_cut():
    names = [f"c{i}" for i in range(1000)]
    text = classes_text(names, "cli")
    assert text.startswith("1,000 classes, 0 to 999 (0 c0, 1 c1,") and text.endswith("… (1,000 in all))")
    assert classes_text(DIGITS, "cli") == "10 classes, 0 to 9" and classes_text([], "url") == "no classes"
