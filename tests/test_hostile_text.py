"""Text is text: values from a URL, a manifest, a folder name or a table reach the pages and the terminal as
text, never as markdown, emoji, HTML or escape sequences; numbers from outside go through one bounded parser.

Each payload below is one of a class (links, images, emoji and colour codes, HTML, bare URLs, LaTeX,
line-break injection, code-fence breakout, terminal escapes). They are tried on every URL parameter
through the URL state, on every dashboard page through Streamlit's AppTest (with a warehouse that also
holds a run folder named with them), and on ``python -m compute list`` with hostile manifests.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.state import VIEW_FIELDS, parse, parse_unit
from tests.dashboard_fixtures import RUN_ID
from warehouse.filters import FIELDS, QueryError
from warehouse.parse import MAX_DIGITS, ParseError, bounded_int, finite_float
from warehouse.text import md, md_code, term

ROOT = Path(__file__).resolve().parent.parent

#: class -> payload; every payload holds a marker ("evil" or "abc") that must never be part of live markup.
PAYLOADS: dict[str, str] = {
    "link in a code span breakout": "x`[Click here to log in](https://evil.example/login)`",
    "image": "![img](https://evil.example/pixel.png)",
    "emoji code": ":abc: :+1: :-1: :evil_face:",
    "colour and badge": ":red[evil] :blue-badge[evil]",
    "material icon": ":material/evil:",
    "raw HTML": "<img src=x onerror=evil><a href='https://evil.example'>evil</a>",
    "bare URL": "see https://evil.example/x or www.evil.example",
    "e-mail autolink": "evil@evil.example",
    "LaTeX": "$\\href{https://evil.example}{evil}$",
    "reference link": "[evil][1]\n\n[1]: https://evil.example",
    "line-break injection": "a\n\n# evil heading\n- evil item",
    "code fence breakout": "```\nevil\n``` `` `[evil](x)` ``",
    "terminal escape": "\x1b[31mevil\x1b[0m\r\nk9 ok",
    "bidi override": "\u202eevil\u202c",
}
MARKERS = ("evil", "abc")
_LIVE = {
    "link": r"\[[^\]\n]*\]\s*[(\[]",
    "image": r"!\[",
    "html": r"<[A-Za-z/!?]",
    "autolink": r"(https?|ftp):/|www\.",
    "email": r"[\w.+-]+@[\w-]+\.[\w.-]+",
    "emoji or colour": r":[\w+/-]+:|:[\w-]+\[",
    "latex": r"\$[^$\n]+\$",
    "block": r"(^|\n)\s*(#|>|```|\[[^\]]*\]:)",
}


def live_markup(text: str) -> list[tuple[str, str]]:
    """(kind, fragment) for each piece of ``text`` a markdown renderer (CommonMark, GFM, Streamlit's
    emoji, colour, icon and LaTeX extensions) would make live: outside code spans, not backslash-escaped."""
    inert, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            inert.append("\x00")
            i += 2
            continue
        if c == "`":
            j = i
            while j < len(text) and text[j] == "`":
                j += 1
            close = re.compile(rf"(?<!`){'`' * (j - i)}(?!`)").search(text, j)
            if close:
                inert.append("\x00")
                i = close.end()
                continue
            inert.append(text[i:j])
            i = j
            continue
        inert.append(c)
        i += 1
    plain = "".join(inert)
    return [(kind, plain[m.start():m.end() + 40]) for kind, pattern in _LIVE.items() for m in re.finditer(pattern, plain)]


def assert_inert(text: str, where: str) -> None:
    """No live markup in ``text`` that a payload put there, and no control character from one."""
    assert "\x1b" not in text and "\u202e" not in text, (where, text)
    bad = [(k, frag) for k, frag in live_markup(text) if any(m in frag for m in MARKERS)]
    assert not bad, (where, bad, text)


def test_the_checker_sees_every_payload_raw():
    """The checker is not blind: each raw payload, alone or in a code span as the pages used to put values,
    is live markup (or a control character) to it."""
    for name, payload in PAYLOADS.items():
        raw_live = any(any(m in frag for m in MARKERS) for text in (payload, f"`run={payload}`")
                       for _, frag in live_markup(text))
        assert raw_live or "\x1b" in payload or "\u202e" in payload, name


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_md_and_md_code_make_every_payload_inert(name):
    payload = PAYLOADS[name]
    for text in (md(payload), md_code(payload), f"Run {md_code(payload)} is broken: {md(payload)}"):
        assert_inert(text, name)
    assert "\n" not in md(payload) and "\n" not in md_code(payload)


@given(st.text())
def test_md_code_keeps_any_text_whole(text):
    """Any text: one code span that shows it (control characters as escapes), nothing outside."""
    code = md_code(text)
    assert "\n" not in code and not [k for k, _ in live_markup(code) if k != "block"]
    if text and text == text.strip("`") and not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in text):
        fence = re.match(r"`+", code).group()
        assert code.removeprefix(fence).removesuffix(fence).strip(" ") == text.strip(" ") or text.isspace()


@given(st.text())
def test_md_leaves_no_live_markup(text):
    assert not live_markup(md(text)), text


def _figure_strings(value: object) -> list[str]:
    """Every string in a Plotly figure's JSON (names, categories, titles, hover templates, tick texts)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _figure_strings(v)]
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return [s for v in items for s in _figure_strings(v)]
    return []


def test_chart_labels_show_markup_as_text():
    """Plotly reads tags (``<b>``, ``<a href>``, ``<br>``) and entities in every label, category and hover;
    class names from a manifest reach the unit page's and what-if charts as the characters typed: no tag
    from them survives, and decoding the entities (what Plotly does) gives the name back."""
    import html

    import pandas as pd

    from dashboard import unit_charts
    from warehouse.text import chart, plain

    for payload in PAYLOADS.values():
        shown = chart(payload)
        assert "<" not in shown and ">" not in shown, shown
        assert html.unescape(shown) == plain(payload)
    names = list(PAYLOADS.values())[:10]
    cls = pd.DataFrame({"class_name": names, "mean_act": range(10), "mean_rect": range(10), "grad_mean": range(10),
                        "train_grad_mean": range(10), "abl_acc_delta": range(10), "abl_loss_delta": range(10)})
    trace = cls.assign(epoch=1)
    figures = (unit_charts.act_vs_grad(cls, "", rectified=True), unit_charts.ablation_bars(cls),
               unit_charts.trace_lines(trace, "grad_mean", "output-side gradient", names))
    for fig in figures:
        strings = _figure_strings(fig.to_plotly_json())
        own = re.compile(r"<br>|</?extra>")  # Plotly Express's own hover template tags
        assert not [s for s in strings if re.search(r"<[A-Za-z/!]", own.sub("", s))], strings
        shown = {html.unescape(s) for s in strings}
        assert {plain(n) for n in names} <= shown  # every class named, as typed


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_term_shows_escapes_instead_of_obeying_them(name):
    shown = term(PAYLOADS[name])
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown and "\u202e" not in shown


# --- one parser for numbers ---------------------------------------------------------------------------------------

@given(st.integers(-10**25, 10**25), st.integers(-10**20, 10**20), st.integers(0, 10**20))
def test_bounded_int_agrees_with_int_inside_its_range(n, lo, width):
    hi = lo + width
    if lo <= n <= hi and len(str(abs(n))) <= MAX_DIGITS:
        assert bounded_int(str(n), lo, hi, "n") == n
    else:
        with pytest.raises(ParseError, match=f"from {lo:,} to {hi:,}"):
            bounded_int(str(n), lo, hi, "n")


NOT_INTEGERS = ["", " ", "1_000", "1e3", "0x10", "+-1", "1.0", "\u0663", "\uff11", "²", "1" * 5000, "-" + "9" * 5000,
                "0" * 5000 + "1" * 21, "nan", "inf", "١٢", "1 2", "\x00"]


@pytest.mark.parametrize("text", NOT_INTEGERS, ids=range(len(NOT_INTEGERS)))
def test_bounded_int_refuses_what_is_not_a_plain_integer(text):
    with pytest.raises(ParseError, match="whole number from 0 to 100"):
        bounded_int(text, 0, 100, "n")
    assert bounded_int("0" * 5000 + "7", 0, 100, "n") == 7  # leading zeros are not digits that count


NOT_FINITE = ["nan", "-nan", "inf", "-inf", "infinity", "1e999", "1" * 5000, "1_0", "\u0663", "0x1p3", "", "1e", "."]


@pytest.mark.parametrize("text", NOT_FINITE, ids=range(len(NOT_FINITE)))
def test_finite_float_refuses_what_is_not_a_finite_decimal(text):
    with pytest.raises(ParseError, match="a finite number"):
        finite_float(text, what="x")


# --- URL state: every parameter, every payload, numbers of 5,000 digits ----------------------------------------

URL_KEYS = [f.url for f in (*FIELDS, *VIEW_FIELDS)]


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_url_payloads_become_inert_notices(name):
    payload = PAYLOADS[name]
    for run in (payload, "small"):
        state, notices = parse({"run": run, **{k: payload for k in URL_KEYS}})
        for n in notices:
            assert_inert(n, f"{name}: {n}")
        assert len(notices) <= len(URL_KEYS) + 1
    with pytest.raises(QueryError) as e:
        parse_unit("fc1:" + payload) if ":" not in payload else parse_unit(payload)
    assert_inert(md(str(e.value)), name)


HUGE = "1" * 5000


@pytest.mark.parametrize("key", ["limit", "pref", "cls", "unit"])
def test_numbers_of_5000_digits_are_named_not_raised(key):
    if key == "unit":
        with pytest.raises(QueryError, match="5,000 digits"):
            parse_unit("fc1:" + HUGE)
        return
    state, notices = parse({"run": "small", key: HUGE})
    assert state is not None and len(notices) == 1 and "5,000 digits" in notices[0]


def test_a_repeated_parameter_gives_one_notice():
    state, notices = parse({"run": "small", "layers": ",".join(["fc1"] * 3000), "pref": ",".join(["x"] * 3000),
                            "range": ["selectivity:0.5:"] * 3000})
    assert state.filter.layers == ("fc1",) and len(notices) == 3, notices


def test_an_idx_header_claiming_huge_dimensions_is_named(tmp_path):
    """File headers are numbers from outside too: four dimensions of 2^32-1 overflow int64, not Python's int."""
    from compute.datasets.idx import read_idx
    from compute.errors import DataError

    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 4]) + (2**32 - 1).to_bytes(4, "big") * 4 + b"x" * 10)
    with pytest.raises(DataError, match=f"{(2**32 - 1) ** 4} bytes"):
        read_idx(path)


# --- the terminal: python -m compute list -------------------------------------------------------------------------

def test_compute_list_prints_stored_values_as_text(tmp_path, capsys):
    from compute.cli import main

    runs = tmp_path / "runs"
    for i, (name, payload) in enumerate(PAYLOADS.items()):
        folder = runs / f"hostile-{i}"
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"run_id": f"hostile-{i}", "model": payload,
                                                          "dataset": payload, "schema_version": 1}))
    (runs / "\x1b[2Jk9 ok\nfake").mkdir()
    assert main(["list", "--warehouse", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert len(lines) == 1 + len(PAYLOADS) + 1 and not any(line.startswith("k9 ok") for line in lines), out


# --- Ctrl-C while a command loads its modules -------------------------------------------------------------------

def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("argv,library", [(["-m", "compute", "layers", "--model", "lenet5"], "torch"),
                                          (["-m", "warehouse", "schema-doc"], "duckdb")], ids=["compute", "warehouse"])
def test_ctrl_c_during_imports_is_one_line(argv, library):
    """SIGINT once the command is importing its libraries (their code is mapped, the import still runs)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and not _loaded(proc.pid, library):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 0, -signal.SIGINT), (proc.returncode, err)
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1].startswith("interrupted")


# --- every page, every payload -----------------------------------------------------------------------------------

PAGE_KEYS = ["run", *URL_KEYS, "unit", "epoch", "layer", "gsort", "gdesc", "img", "page", "exp", "runs", "split",
             "order", "q"]
PAGES = ["overview", "explorer", "gallery", "unit", "compare", "sql", "export"]


@pytest.fixture(scope="module")
def hostile_root(warehouse_root, tmp_path_factory) -> Path:
    """The small run, beside run folders named with the payloads (folder names cannot hold '/')."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(warehouse_root / "runs", root / "runs")
    for payload in ("x`[Click here](evil.example)` ![img](evil.png) :abc: $evil$ <b>evil", "\x1b[31mevil"):
        (root / "runs" / payload).mkdir()
    return root


def _markdown_texts(at) -> list[tuple[str, str]]:
    texts = []
    for kind in ("markdown", "caption", "warning", "error", "info", "success", "title", "header", "subheader"):
        texts += [(kind, str(e.value)) for e in getattr(at, kind)]
    texts += [("page_link", e.proto.label) for e in at.get("page_link")]
    return texts


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_url_and_folder_payloads_as_text(monkeypatch, hostile_root, page):
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_app import APP

    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(hostile_root))
    values = list(PAYLOADS.values())
    for rotation in range(4):
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.run()
        at.switch_page(f"views/{page}.py")
        params = {k: values[(i + rotation) % len(values)] for i, k in enumerate(PAGE_KEYS)}
        if rotation == 3:  # numbers of 5,000 digits everywhere, the unit's index included
            params = {**{k: HUGE for k in PAGE_KEYS}, "unit": f"fc1:{HUGE}", "layer": "fc1"}
        if rotation:
            params["run"] = RUN_ID  # past the run check, so every other parameter is read
        at.query_params = params
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        for kind, text in _markdown_texts(at):
            assert_inert(text, f"{page} {kind}")


def test_figures():
    """Hostile text tried by class, for the closing note."""
    print(f"payload classes {len(PAYLOADS)}; URL parameters {len(URL_KEYS) + 2} x payloads all inert; pages "
          f"{len(PAGES)} x 4 (3 payload rotations, 1 of 5,000-digit numbers); numbers refused {len(NOT_INTEGERS) + len(NOT_FINITE)}")
