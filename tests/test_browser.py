"""One real-browser pass: headless Debian Chromium (Playwright) against `streamlit run` on a local port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard_fixtures import RUN_ID

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
#: Milliseconds a step may wait: generous, since the suite's other process may hold both cores meanwhile.
WAIT = 180_000
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian Chromium (/usr/bin/chromium) is not "
                                "installed: apt-get install -y chromium (.ci/run does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Units of the synthetic run beside the small one: enough live units for the explorer to draw its scatter with
#: WebGL (``dashboard.explorer_panels.WEBGL_FROM``); the small run's 226 are drawn as SVG.
GL_UNITS = 2_000


@pytest.fixture(scope="module")
def browser_root(warehouse_root, tmp_path_factory) -> Path:
    """The small run and a synthetic run of ``GL_UNITS`` units (the benchmark's generator, the real writer)."""
    import shutil

    from benchmarks.dashboard_queries import generate

    root = tmp_path_factory.mktemp("browser")
    shutil.copytree(warehouse_root / "runs", root / "runs")
    generate(root, GL_UNITS)
    return root


@pytest.fixture(scope="module")
def server(browser_root):
    port = free_port()
    env = {**os.environ, "NEURON_ATLAS_WAREHOUSE": str(browser_root)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start: {proc.stdout.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def test_explorer_preset_then_unit_page_in_chromium(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/explorer?run={RUN_ID}")
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("combobox", name="Preset").click()
    page.get_by_role("option", name="high gradient, low activation").click()
    page.get_by_text("Preset high gradient, low activation").wait_for(timeout=WAIT)
    _idle(page)
    assert "preset=high+gradient" in page.url and "cc=anomaly" in page.url
    chosen = page.get_by_role("combobox", name="Open a unit").input_value()
    assert chosen.split(":")[0] in ("conv1", "conv2", "fc1", "fc2")
    page.get_by_role("link", name="Open unit page").click()
    page.get_by_role("heading", name=f"Unit {chosen}", exact=True).wait_for(timeout=WAIT)
    page.get_by_text("Download this unit's images").wait_for(timeout=WAIT)
    shot = tmp_path / "unit-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert "/unit?" in page.url and f"run={RUN_ID}" in page.url and chosen.replace(":", "%3A") in page.url
    assert page.get_by_text("Per class: activation, gradient signal and removal effect").is_visible()
    assert page.get_by_text("Is the removal effect real?").is_visible()
    assert page.get_by_text("Which examples need this unit?").is_visible()


def _idle(page) -> None:
    """Wait until Streamlit has finished the current run and the browser has drawn its widgets."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=WAIT)
    page.get_by_role("combobox").first.wait_for(timeout=WAIT)


def walk_state_and_navigation(server: str, browser, expected: dict) -> None:
    """Explorer -> unit -> Back keeps the filter; Forward returns; shared URLs of each page open the
    same state in a fresh context; a gallery tile opens its unit; an image enlarges."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/explorer?run={RUN_ID}")
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("combobox", name="Preset").click(timeout=WAIT)
    page.get_by_role("option", name="high gradient, low activation").click()
    page.get_by_text("Preset high gradient, low activation").wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("combobox", name="Layers (none = all)").click()
    page.get_by_role("option", name="fc1", exact=True).click()
    page.keyboard.press("Escape")
    count = f"{expected['hgla_fc1']} unit(s) match."
    page.get_by_text(count).wait_for(timeout=WAIT)
    _idle(page)
    filtered = page.url
    assert "preset=high+gradient" in filtered and "layers=fc1" in filtered, filtered  # touching layers keeps the preset
    chosen = page.get_by_role("combobox", name="Open a unit").input_value(timeout=WAIT)
    page.get_by_role("link", name="Open unit page").click()
    page.get_by_role("heading", name=f"Unit {chosen}", exact=True).wait_for(timeout=WAIT)
    _idle(page)
    unit_url = page.url
    assert "layers=fc1" in unit_url and "preset=" in unit_url  # the unit page knows the filter it came from
    page.get_by_text("Unit 1 of").wait_for(timeout=WAIT)

    page.go_back()
    page.get_by_text(count).wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("combobox", name="Preset").wait_for(timeout=WAIT)
    assert page.url == filtered
    assert page.get_by_role("combobox", name="Preset").input_value(timeout=WAIT) == "high gradient, low activation"
    page.go_forward()
    page.get_by_role("heading", name=f"Unit {chosen}", exact=True).wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("link", name="Next →").click()  # next unit in the filter's order
    page.get_by_text("Unit 2 of").wait_for(timeout=WAIT)
    _idle(page)
    page.go_back()  # one Back: the unit before
    page.get_by_text("Unit 1 of").wait_for(timeout=WAIT)
    _idle(page)
    assert page.url == unit_url
    page.go_forward()
    page.get_by_text("Unit 2 of").wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("link", name="← Back to results").click()
    page.get_by_text(count).wait_for(timeout=WAIT)

    fresh = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    fresh.goto(filtered)
    fresh.get_by_text(count).wait_for(timeout=WAIT)
    _idle(fresh)
    assert fresh.get_by_role("combobox", name="Preset").input_value(timeout=WAIT) == "high gradient, low activation"
    fresh.goto(unit_url)
    fresh.get_by_role("heading", name=f"Unit {chosen}", exact=True).wait_for(timeout=WAIT)
    fresh.get_by_text("Unit 1 of").wait_for(timeout=WAIT)
    fresh.goto(f"{server}/sql?q=SELECT+layer%2C+unit+FROM+units+WHERE+layer+%3D+%27fc2%27+LIMIT+3")
    fresh.get_by_text("3 row(s)").wait_for(timeout=WAIT)
    query = fresh.get_by_role("textbox", name="Query")
    query.wait_for(timeout=WAIT)
    assert "fc2" in query.input_value(timeout=WAIT)
    fresh.goto(f"{server}/compare?runs={RUN_ID}")
    fresh.get_by_role("heading", name="Compare runs").wait_for(timeout=WAIT)
    _idle(fresh)
    assert fresh.get_by_text("No runs selected").count() == 0
    fresh.goto(f"{server}/nope")
    fresh.get_by_text("There is no page").wait_for(timeout=WAIT)
    fresh.goto(f"{server}/explorer?run={RUN_ID}&limit=-5&layers=fc1,fc1")
    fresh.get_by_text("had values that are ignored").wait_for(timeout=WAIT)

    fresh.goto(f"{server}/gallery?run={RUN_ID}&layer=conv2&gsort=selectivity&gdesc=1")
    first = expected["gallery_first"]
    fresh.get_by_role("link", name=first, exact=True).wait_for(timeout=WAIT)
    _idle(fresh)
    gallery = fresh.url
    fresh.get_by_role("link", name=first, exact=True).click()
    fresh.get_by_role("heading", name=f"Unit {first}", exact=True).wait_for(timeout=WAIT)
    _idle(fresh)
    fresh.go_back()  # one Back: the gallery as it was
    fresh.get_by_role("link", name=first, exact=True).wait_for(timeout=WAIT)
    _idle(fresh)
    assert fresh.url == gallery
    fresh.go_forward()
    fresh.get_by_role("heading", name=f"Unit {first}", exact=True).wait_for(timeout=WAIT)
    _idle(fresh)
    fresh.get_by_role("button", name="Enlarge").first.click()
    dialog = fresh.get_by_role("dialog")
    dialog.wait_for(timeout=WAIT)
    img = dialog.locator("img").first
    img.wait_for(timeout=WAIT)
    assert img.bounding_box()["width"] >= 300


@pytest.mark.slow
def test_state_survives_back_forward_and_shared_links_in_chromium(server, browser, warehouse_root):
    import warehouse
    from warehouse import queries as q

    con = warehouse.connect(warehouse_root)
    hgla = q.PRESETS["high gradient, low activation"].apply(q.UnitFilter(RUN_ID, layers=("fc1",)))
    top = q.filter_units(con, q.UnitFilter(RUN_ID, layers=("conv2",), order_by="selectivity", descending=True, limit=1))
    expected = {"hgla_fc1": q.count_units(con, hgla), "gallery_first": f"conv2:{int(top.unit.iloc[0])}"}
    assert expected["hgla_fc1"] >= 2
    con.close()
    walk_state_and_navigation(server, browser, expected)


def test_researcher_tasks_and_back_in_chromium(server, browser, warehouse_root):
    """The halving set named, then removed in what-if in one click, and Back; a flip with both predictions."""
    import warehouse
    from warehouse import queries as q

    con = warehouse.connect(warehouse_root)
    row = q.class_removal(con, RUN_ID).dropna(subset=["n_to_halve"]).iloc[0]
    units, _ = q.halving_set(con, RUN_ID, row.layer, int(row["class"]))
    named = [f"{a}:{b}" for a, b in zip(units.layer, units.unit)]
    layer, unit = con.execute("SELECT layer, unit FROM units WHERE run_id = ? AND abl_n_hurt > 0 AND layer = 'fc1' "
                              "ORDER BY abl_n_hurt DESC, unit LIMIT 1", [RUN_ID]).fetchall()[0]
    con.close()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    # Class knowledge by name, then what-if in one click, and Back.
    page.goto(f"{server}/explorer?run={RUN_ID}")
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    explorer = page.url
    page.get_by_text("Can a class's knowledge be removed?").click()
    for box, value in (("Layer", row.layer), ("Class", row.class_name)):  # typed: a dropdown is flaky on a busy machine
        page.get_by_role("combobox", name=box, exact=True).last.click()
        page.keyboard.type(value)
        page.keyboard.press("Enter")
        _idle(page)
    page.get_by_text(f"the fewest units that halve it ({len(named)})").wait_for(timeout=WAIT)
    for label in named:
        assert page.get_by_role("link", name=label, exact=True).count() >= 1
    page.get_by_role("link", name=f"Remove these units in what-if ({len(named)})").click()
    page.get_by_role("heading", name="What if these units were removed?").wait_for(timeout=WAIT)
    page.get_by_text("units removed", exact=True).wait_for(timeout=120_000)
    assert "units=" + "%2C".join(n.replace(":", "%3A") for n in named) in page.url or \
        "units=" + ",".join(named) in page.url, page.url
    page.go_back()
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    assert page.url == explorer

    # A flip shows both predictions.
    page.goto(f"{server}/unit?run={RUN_ID}&unit={layer}:{unit}")
    page.get_by_role("heading", name=f"Unit {layer}:{unit}", exact=True).wait_for(timeout=WAIT)
    _idle(page)
    for header in ("prediction intact", "prediction without the unit"):  # both predictions, the grid's headers
        page.get_by_text(header, exact=True).first.wait_for(state="attached", timeout=WAIT)


def _point(page, key: str) -> tuple[float, float, str]:
    """The point of the explorer's scatter (Streamlit key ``key``) farthest from any other, inside the axes:
    where it is drawn, in viewport pixels, and its unit (``layer:unit``: the trace is the layer, the unit is
    the second value of the point's customdata). Read from the plot's data and axes, so it holds for SVG and
    WebGL traces alike; the point farthest from the rest is the one a click there picks."""
    chart = page.locator(f".st-key-{key} .js-plotly-plot").first
    chart.scroll_into_view_if_needed(timeout=WAIT)
    page.wait_for_timeout(1000)
    return chart.evaluate("""(el) => {
        const L = el._fullLayout, X = L.xaxis, Y = L.yaxis, r = el.getBoundingClientRect(), pts = [];
        const at = (ax, v) => ax._offset + ax.c2p(ax.d2c(v));
        el._fullData.forEach((t) => { for (let j = 0; j < t.x.length; j++) {
            pts.push([at(X, t.x[j]), at(Y, t.y[j]), `${t.name}:${t.customdata[j][1]}`]); } });
        const inside = (p) => p[0] > X._offset + 10 && p[0] < X._offset + X._length - 10
                              && p[1] > Y._offset + 10 && p[1] < Y._offset + Y._length - 10;
        let best = null, far = -1;
        for (const p of pts.filter(inside)) {
            let near = Infinity;
            for (const q of pts) if (q !== p) near = Math.min(near, Math.hypot(p[0] - q[0], p[1] - q[1]));
            if (near > far) { far = near; best = p; }
        }
        return [r.left + best[0], r.top + best[1], best[2]];
    }""")


@pytest.mark.slow
def test_one_back_after_each_way_of_leaving(server, browser):
    """Every way of leaving a page adds one history entry, so one Back returns to the same state: a shared
    unit link (the page writes nothing back, even when it runs again), the sidebar, a table row, a scatter
    point, the jump box; a what-if set added from the unit page survives leaving and Back."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    unit_heading = page.get_by_role("heading", name=re.compile(r"^Unit [A-Za-z0-9_.-]+:[0-9]+$"))

    # A shared unit link: one Back leaves it, also after the page ran again.
    page.goto(f"{server}/explorer?run={RUN_ID}")
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    explorer = page.url
    page.goto(f"{server}/unit?run={RUN_ID}&unit=fc1:0")
    page.get_by_role("heading", name="Unit fc1:0", exact=True).wait_for(timeout=WAIT)
    _idle(page)
    shared = page.url
    page.get_by_role("heading", name="Unit fc1:0", exact=True).click()
    page.keyboard.press("r")  # Streamlit's rerun key: the page runs again, nothing changed
    page.wait_for_timeout(1500)
    _idle(page)
    assert page.url == shared and "epoch=" not in page.url
    page.go_back()
    page.get_by_text("226 unit(s) match.").wait_for(timeout=WAIT)
    assert page.url == explorer

    # Explorer filtered to fc1, left by the sidebar: Back returns to the filter.
    page.goto(f"{server}/explorer?run={RUN_ID}&layers=fc1")
    page.get_by_text("120 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    filtered = page.url
    page.get_by_role("link", name="Unit page").first.click()
    page.get_by_role("heading", name="Unit page").wait_for(timeout=WAIT)
    _idle(page)
    page.go_back()
    page.get_by_text("120 unit(s) match.").wait_for(timeout=WAIT)
    _idle(page)
    assert page.url == filtered

    # A table row, a scatter point, the jump box: each opens a unit; one Back returns to the filter and
    # stays there (the script that followed the link does not follow it again).
    for way in ("row", "point", "jump"):
        if way == "row":
            grid = page.locator(".st-key-ex-table").first
            grid.scroll_into_view_if_needed(timeout=WAIT)
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 15, box["y"] + 35 + 17)  # the first row's selection marker
        elif way == "point":
            x, y, clicked = _point(page, "ex-scatter")
            page.mouse.move(x, y)
            page.wait_for_timeout(300)
            page.mouse.click(x, y)
            page.get_by_role("heading", name=f"Unit {clicked}", exact=True).wait_for(timeout=WAIT)
        else:
            jump = page.get_by_role("textbox", name="Go to unit")
            jump.fill("conv2:3")
            jump.press("Enter")
        unit_heading.wait_for(timeout=WAIT)
        _idle(page)
        assert "/unit?" in page.url, (way, page.url)
        if way != "jump":
            assert "layers=fc1" in page.url, (way, page.url)  # the unit page knows the filter it came from
        page.go_back()
        page.get_by_text("120 unit(s) match.").wait_for(timeout=WAIT)
        _idle(page)
        page.wait_for_timeout(1500)
        assert page.url == filtered, (way, page.url)

    # Add to what-if from the unit page; the set survives leaving by the sidebar and coming Back.
    page.goto(f"{server}/unit?run={RUN_ID}&unit=fc1:0")
    page.get_by_role("heading", name="Unit fc1:0", exact=True).wait_for(timeout=WAIT)
    _idle(page)
    page.get_by_role("link", name="Remove it in what-if").click()
    page.get_by_text("units removed", exact=True).wait_for(timeout=WAIT)
    whatif = page.url
    assert "units=fc1%3A0" in whatif or "units=fc1:0" in whatif
    page.get_by_role("link", name="Layer gallery").click()
    page.get_by_role("heading", name="Layer gallery").wait_for(timeout=WAIT)
    _idle(page)
    page.go_back()
    page.get_by_text("units removed", exact=True).wait_for(timeout=WAIT)
    assert page.url == whatif
    page.go_back()  # and one more Back: the unit page it was added from
    page.get_by_role("heading", name="Unit fc1:0", exact=True).wait_for(timeout=WAIT)
    assert page.url == f"{server}/unit?run={RUN_ID}&unit=fc1:0"  # the link it was opened by


def test_a_point_of_the_webgl_scatter_opens_its_unit(server, browser):
    """At 1,000 points and more the explorer draws its scatter with WebGL (Plotly's scattergl, SwiftShader
    here): clicking a point opens that point's unit page, and one Back returns to the explorer."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/explorer?run=synthetic")
    count = f"{GL_UNITS:,} unit(s) match."
    page.get_by_text(count).wait_for(timeout=WAIT)
    _idle(page)
    explorer = page.url
    x, y, clicked = _point(page, "ex-scatter")
    kinds = page.locator(".st-key-ex-scatter .js-plotly-plot").first.evaluate(
        "(el) => [...new Set(el._fullData.map((t) => t.type))]")
    assert kinds == ["scattergl"]
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.get_by_role("heading", name=f"Unit {clicked}", exact=True).wait_for(timeout=WAIT)
    assert "/unit?" in page.url and "run=synthetic" in page.url and clicked.replace(":", "%3A") in page.url
    page.go_back()
    page.get_by_text(count).wait_for(timeout=WAIT)
    _idle(page)
    assert page.url == explorer
