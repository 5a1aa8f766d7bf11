"""A filter checked against its run: the layers and classes it names must be the run's own.

A URL or a command line names layers and classes by value, and a run has its own (a 10-class run
has no class 99, a LeNet-5 run no layer ``layer4``). A filter naming one the run lacks matches
nothing, which reads as "no unit qualifies" when the truth is a typo or a link made for another
run. So every entry point that takes a filter from outside passes it through ``fit``: the export
command line refuses it (``check``, exit 2), the dashboard's pages drop those values and show
``notices`` naming what the run has. The wording is here once, in either form (``Form``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from warehouse.filters import FIELD, Field, QueryError, UnitFilter
from warehouse.text import md, md_code

#: Names listed in a message at most (a ResNet-50 has ~150 layers, ImageNet 1,000 classes).
LISTED = 16
#: "cli": plain text naming command-line options; "url": markdown naming URL parameters, values escaped.
Form = Literal["cli", "url"]


@dataclass(frozen=True)
class Misfit:
    """The values of one filter field that the run does not have."""

    field: Field
    values: tuple[Any, ...]


def _class_ok(c: int, classes: Sequence[str]) -> bool:
    return 0 <= c < len(classes)


def fit(f: UnitFilter, layers: Sequence[str], classes: Sequence[str]) -> tuple[UnitFilter, list[Misfit]]:
    """``f`` without the layers and classes its run lacks, and what was taken out (one ``Misfit`` per field)."""
    bad_layers = tuple(x for x in f.layers if x not in layers)
    bad_pref = tuple(c for c in f.pref_classes if not _class_ok(c, classes))
    bad_cls = () if f.condition_class is None or _class_ok(f.condition_class, classes) else (f.condition_class,)
    misfits = [Misfit(FIELD[name], vals) for name, vals in
               (("layers", bad_layers), ("pref_classes", bad_pref), ("condition_class", bad_cls)) if vals]
    fitted = replace(f, layers=tuple(x for x in f.layers if x not in bad_layers),
                     pref_classes=tuple(c for c in f.pref_classes if c not in bad_pref),
                     condition_class=None if bad_cls else f.condition_class)
    return fitted, misfits


def _listed(items: Sequence[str]) -> str:
    more = f", … ({len(items):,} in all)" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def classes_text(classes: Sequence[str], form: Form) -> str:
    """"10 classes, 0 to 9" plus their names when they are not just their indices (``"0 airplane, 1 automobile"``)."""
    n = len(classes)
    if n == 0:
        return "no classes"
    head = f"{n:,} class{'es' if n > 1 else ''}, " + (f"0 to {n - 1}" if n > 1 else "0")
    if all(name == str(i) for i, name in enumerate(classes)):
        return head
    name: Callable[[str], str] = md if form == "url" else str
    return f"{head} ({_listed([f'{i} {name(c)}' for i, c in enumerate(classes)])})"


def explain(m: Misfit, run_id: str, layers: Sequence[str], classes: Sequence[str], form: Form) -> str:
    """One sentence naming the values, the option or parameter that gave them, and what the run has."""
    url = form == "url"
    code: Callable[[object], str] = md_code if url else str
    run = md_code(run_id) if url else repr(run_id)
    if m.field.name == "layers":
        problem = f"has no layer {', '.join(code(v) for v in m.values)}"
        has = f"its layers are {_listed([code(x) for x in layers])}"
    else:
        problem = f"has {classes_text(classes, form)}; there is no class {', '.join(map(str, m.values))}"
        has = ""
    if url:
        given = ", ".join(md_code(f"{m.field.url}={v}") for v in m.values)
        return f"{given} is ignored: run {run} {problem}" + (f"; {has}." if has else ".")
    return f"Run {run} {problem} ({m.field.flag})" + (f"; {has}." if has else "; choose among them.")


def notices(misfits: Sequence[Misfit], run_id: str, layers: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The dashboard's notices (markdown) for the values ``fit`` took out."""
    return [explain(m, run_id, layers, classes, "url") for m in misfits]


def check(f: UnitFilter, layers: Sequence[str], classes: Sequence[str]) -> None:
    """Raise ``QueryError`` (one paragraph, command-line names) when ``f`` names a layer or class its run lacks."""
    _, misfits = fit(f, layers, classes)
    if misfits:
        raise QueryError(" ".join(explain(m, f.run_id, layers, classes, "cli") for m in misfits))
