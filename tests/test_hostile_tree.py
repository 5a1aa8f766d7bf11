"""The warehouse's own folders made hostile: links where folders belong, folders that cannot be read
or entered. Links are never followed (a run reached through one is BROKEN, ``gc`` removes a link and
never what it points to, a lock file is never written through one) and every unreadable folder is a
one-paragraph error (CLI exit 2, a message on the dashboard page), never a traceback and never an
empty warehouse.

Permission cases run the CLI in a user namespace (``unshare --user``) when this is root, where chmod
binds again (root's override does not reach there); they are skipped where neither works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compute.cli import main
from tests.dashboard_fixtures import RUN_ID
from tests.run_copies import clone_run
from warehouse.errors import WarehouseError
from warehouse.publish import RunWriter
from warehouse.validate import list_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def root(warehouse_root: Path, tmp_path: Path) -> Path:
    """A warehouse with one healthy run ``good``, inside a world-traversable folder."""
    wh = tmp_path / "wh"
    clone_run(warehouse_root / "runs" / RUN_ID, wh, "good")
    return wh


def _precious(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_bytes(b"years of work")
    (folder / "data.pt").write_bytes(b"more")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- links where folders belong ------------------------------------------------------------------

LINKED_RUNS = {  # name in runs/ -> what the link points to (relative to tmp_path)
    "outside": "elsewhere/outside",  # a whole valid run, outside runs/
    "alias": "wh/runs/good",  # another name for a valid run inside runs/
    "dangling": "nowhere",
    "to-a-file": "file.txt",
}


def test_run_folders_that_are_links_are_broken_and_the_others_unaffected(root, tmp_path, monkeypatch):
    clone_run(root / "runs" / "good", tmp_path / "elsewhere-root", "outside")
    shutil.move(tmp_path / "elsewhere-root" / "runs" / "outside", tmp_path / "elsewhere" / "outside")
    (tmp_path / "file.txt").write_text("x")
    for name, target in LINKED_RUNS.items():
        (root / "runs" / name).symlink_to(tmp_path / target)
    runs = {r.run_id: r for r in list_runs(root)}
    assert runs.pop("good").ok
    assert sorted(runs) == sorted(LINKED_RUNS)
    for name, info in runs.items():
        assert not info.ok and "symbolic link" in info.error and "real folder inside runs/" in info.error, name
    import warehouse

    assert warehouse.connect(root).execute("SELECT DISTINCT run_id FROM units").fetchall() == [("good",)]
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_app import APP, frame, ok

    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(root))
    at = ok(AppTest.from_file(str(APP), default_timeout=120).run())
    assert frame(at, "run_id").run_id.tolist() == ["good"]
    assert sum("symbolic link" in w.value for w in at.warning) == len(LINKED_RUNS)
    for page in ("explorer", "unit"):  # the other pages read the good run as before
        at.switch_page(f"views/{page}.py")
        ok(at.run())


def _page(page: str):
    """The dashboard's ``page`` (views/<page>.py; "overview" is the landing page) run once, without an
    exception, on the warehouse that NEURON_ATLAS_WAREHOUSE names."""
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_app import APP

    at = AppTest.from_file(str(APP), default_timeout=120)
    if page != "overview":
        at.run()
        at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, (page, at.exception)
    return at


def test_a_linked_runs_folder_is_one_message_in_the_cli_and_on_the_page(root, tmp_path, monkeypatch, capsys):
    shutil.move(root / "runs", tmp_path / "real-runs")
    (root / "runs").symlink_to(tmp_path / "real-runs")
    assert main(["list", "--warehouse", str(root)]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(root))
    for page in ("overview", "explorer", "unit", "sql"):
        at = _page(page)
        assert any("is a symbolic link" in e.value for e in at.error), page
        assert not any("empty" in s.value for s in at.subheader), page


def test_a_warehouse_that_is_a_file_is_one_message_on_every_page(tmp_path, monkeypatch):
    """Was an empty warehouse ("no runs yet ... compute one"), which cannot be computed there either."""
    (tmp_path / "wh").write_text("a file")
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(tmp_path / "wh"))
    for page in ("overview", "explorer"):
        at = _page(page)
        assert any("wh is not a folder, so it cannot hold the runs folder" in e.value for e in at.error), page


def test_gc_never_follows_a_linked_staging_folder(root, tmp_path, capsys):
    kept = _precious(tmp_path / "home")
    (root / ".staging").symlink_to(tmp_path / "home")
    for remove in ([], ["--remove"]):
        assert main(["gc", "--warehouse", str(root), *remove]) == 2
        err = capsys.readouterr().err
        assert ".staging" in err and "symbolic link" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "home").iterdir()} == kept
    assert main(["list", "--warehouse", str(root)]) == 0  # the runs are listed; the staging problem is a note
    assert "good" in (out := capsys.readouterr().out) and "note:" in out and "symbolic link" in out
    with pytest.raises(WarehouseError, match="symbolic link"):
        RunWriter(root, "new")
    assert {p.name: p.read_bytes() for p in (tmp_path / "home").iterdir()} == kept


def test_gc_removes_links_inside_staging_as_links(root, tmp_path, capsys):
    kept = _precious(tmp_path / "home")
    staging = root / ".staging"
    staging.mkdir()
    (staging / "x.stages").symlink_to(tmp_path / "home")
    (staging / "x").symlink_to(tmp_path / "home")
    (staging / "y.lock").symlink_to(tmp_path / "home" / "thesis.tex")
    real = staging / "z.stages"
    real.mkdir()
    torch.save({"epoch": 1}, real / "train-epoch.pt")
    (real / "inner-link").symlink_to(tmp_path / "home")
    assert main(["gc", "--warehouse", str(root), "--remove"]) == 0
    assert list(staging.iterdir()) == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "home").iterdir()} == kept


def test_a_lock_file_that_is_a_link_is_never_written_through(root, tmp_path):
    kept = _precious(tmp_path / "home")
    (root / ".staging").mkdir()
    (root / ".staging" / "r.lock").symlink_to(tmp_path / "home" / "thesis.tex")
    with pytest.raises(WarehouseError, match="cannot write to warehouse"):
        RunWriter(root, "r")
    assert {p.name: p.read_bytes() for p in (tmp_path / "home").iterdir()} == kept


# --- folders that cannot be read or entered --------------------------------------------------------

def _unprivileged() -> list[str]:
    """A command prefix under which chmod binds: none for a normal user, a user namespace for root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"]).returncode == 0:
        return ["unshare", "--user"]
    pytest.skip("running as root without user namespaces: chmod does not bind")


PERMISSIONS = {  # folder -> mode, the command, and what its one paragraph must say
    "runs-unreadable": ("runs", 0o000, "list", "cannot read the runs folder"),
    "runs-not-enterable": ("runs", 0o444, "list", "cannot read the runs folder"),
    "runs-not-listable": ("runs", 0o111, "list", "cannot read the runs folder"),
    "staging-unreadable-gc": (".staging", 0o000, "gc", "cannot read the staging folder"),
    "staging-not-enterable-gc": (".staging", 0o444, "gc", "cannot read the staging folder"),
    "staging-unreadable-list": (".staging", 0o000, "list", "note: cannot read the staging folder"),
}


@pytest.mark.parametrize("case", list(PERMISSIONS))
def test_an_unreadable_folder_is_one_paragraph_never_a_traceback_nor_an_empty_warehouse(case, root):
    prefix = _unprivileged()
    folder, mode, command, message = PERMISSIONS[case]
    (root / folder).mkdir(exist_ok=True)
    os.chmod(root / folder, mode)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "compute", command, "--warehouse", str(root)], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, "NEURON_ATLAS_QUIET": "1"})
    finally:
        os.chmod(root / folder, 0o755)
    out = r.stdout + r.stderr
    assert message in out and "Traceback" not in out, out
    assert "no runs in" not in out
    assert r.returncode == (0 if message.startswith("note:") else 2), out
