"""One real-browser pass: headless Debian Chromium (Playwright) against `streamlit run` on a local port."""

from __future__ import annotations

import os
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
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian Chromium (/usr/bin/chromium) is not "
                                "installed: apt-get install -y chromium (.ci/run does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(warehouse_root):
    port = free_port()
    env = {**os.environ, "NEURON_ATLAS_WAREHOUSE": str(warehouse_root)}
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


def test_explorer_preset_then_unit_page_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server}/explorer?run={RUN_ID}")
            page.get_by_text("226 unit(s) match.").wait_for(timeout=60_000)
            page.get_by_role("combobox", name="Preset").click()
            page.get_by_role("option", name="high gradient, low activation").click()
            page.get_by_text("Preset high gradient, low activation").wait_for(timeout=60_000)
            assert "preset=high+gradient" in page.url and "cc=anomaly" in page.url
            chosen = page.get_by_role("combobox", name="Open a unit").input_value()
            assert chosen.split(":")[0] in ("conv1", "conv2", "fc1", "fc2")
            page.get_by_role("button", name="Open unit page").click()
            page.get_by_role("heading", name=f"Unit {chosen}", exact=True).wait_for(timeout=60_000)
            page.get_by_text("Download this unit's images").wait_for(timeout=60_000)
            shot = tmp_path / "unit-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert "/unit?" in page.url and f"run={RUN_ID}" in page.url and chosen.replace(":", "%3A") in page.url
            assert page.get_by_text("Per class: activation and gradient signal").is_visible()
            assert page.get_by_text("Is the removal effect real?").is_visible()
            assert page.get_by_text("Which examples need this unit?").is_visible()
        finally:
            browser.close()
