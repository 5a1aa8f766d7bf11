"""Damaged runs, each validated in isolation: listed as broken with its reason, never taking others down.

One warehouse holds a healthy run and one damaged run per case below. ``list_runs`` must name
every damage (without blocking on a FIFO), ``connect()`` must show exactly the healthy run, and
``python -m compute list`` and the overview page must list the broken ones with their reasons.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import warehouse
from tests.dashboard_fixtures import RUN_ID
from tests.run_copies import clone_run, refresh_manifest
from warehouse.validate import list_runs

ROOT_USER = os.geteuid() == 0  # chmod does not stop root from reading


def _manifest(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "manifest.json").write_text(text)


def _edit_manifest(**changes: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        m = json.loads((run / "manifest.json").read_text())
        m.update(changes)
        (run / "manifest.json").write_text(json.dumps(m))
    return edit


def _replace(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).unlink()
        make(run / name)
    return damage


def _flip_middle(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = bytearray((run / name).read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        (run / name).write_bytes(bytes(data))
    return damage


def _truncate(name: str, cut: int) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:-cut])
    return damage


def _rewrite(name: str, change: Callable[[pa.Table], pa.Table], **options: object) -> Callable[[Path], None]:
    """Rewrite a table and refresh the manifest: only the schema or content check can catch it."""
    def damage(run: Path) -> None:
        f = run / name
        pq.write_table(change(pq.read_table(f)), f, **options)
        refresh_manifest(run)
    return damage


def _set(t: pa.Table, column: str, values: list) -> pa.Table:
    """``t`` with ``column``'s values replaced, its type kept."""
    i = t.schema.get_field_index(column)
    return t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))


def _linked(name: str) -> Callable[[Path], None]:
    """The file moved out of the run folder and linked back in."""
    def damage(run: Path) -> None:
        outside = run.parent.parent / f"{run.name}-{name}"
        (run / name).rename(outside)
        (run / name).symlink_to(outside)
    return damage


def _drop_file_entry(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        m = json.loads((run / "manifest.json").read_text())
        del m["files"][name]
        (run / "manifest.json").write_text(json.dumps(m))
    return damage


def _junk(run: Path) -> None:
    (run / "notes.txt").write_text("junk")
    (run / "extra.parquet").write_bytes(b"not parquet")
    (run / "subfolder").mkdir()


def _chmod(path: str, mode: int) -> Callable[[Path], None]:
    return lambda run: os.chmod(run / path if path else run, mode)


# case -> (damage applied to a fresh copy of the run, regular expression the reason must match)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest-list": (_manifest("[]"), "not a valid manifest.*JSON object"),
    "manifest-null": (_manifest("null"), "not a valid manifest"),
    "manifest-string": (_manifest('"run"'), "not a valid manifest"),
    "manifest-empty-object": (_manifest("{}"), "not a valid manifest.*files"),
    "manifest-empty-file": (_manifest(""), "not a valid manifest"),
    "manifest-truncated-json": (_manifest('{"run_id": "x", "sch'), "not a valid manifest"),
    "manifest-deep-nesting": (_manifest("[" * 100_000 + "]" * 100_000), "not a valid manifest"),
    "manifest-huge": (_manifest(" " * (2 << 20) + "{}"), "larger than"),
    "manifest-run-id-int": (_edit_manifest(run_id=7), "run_id"),
    "manifest-version-string": (_edit_manifest(schema_version="1"), "schema_version"),
    "manifest-version-bool": (_edit_manifest(schema_version=True), "schema_version"),
    "manifest-version-zero": (_edit_manifest(schema_version=0), "schema version 0"),
    "manifest-version-future": (_edit_manifest(schema_version=99), "schema version 99"),
    "manifest-version-older": (_edit_manifest(schema_version=1), "schema version 1, before.*recompute"),
    "manifest-files-list": (_edit_manifest(files=[]), "files"),
    "manifest-bad-hash": (_edit_manifest(files={"units.parquet": {"bytes": 1, "sha256": "zz"}}), "files"),
    "manifest-path-in-files": (_edit_manifest(files={"../x": {"bytes": 1, "sha256": "0" * 64}}), "not a file"),
    "manifest-tables-not-names": (_edit_manifest(tables=[1, 2]), "tables"),
    "manifest-fifo": (_replace("manifest.json", lambda p: os.mkfifo(p)), "not a regular file"),
    "manifest-folder": (_replace("manifest.json", lambda p: p.mkdir()), "not a regular file"),
    "manifest-symlink": (_replace("manifest.json", lambda p: p.symlink_to("/etc/hostname")),
                         "manifest.json is a symbolic link \\(to /etc/hostname\\); a run's files are never read"),
    "table-symlink": (_linked("epochs.parquet"), "epochs.parquet is a symbolic link"),
    "manifest-missing": (lambda run: (run / "manifest.json").unlink(), "manifest.json is missing"),
    "parquet-middle-corrupted": (_flip_middle("unit_classes.parquet"), "SHA-256"),
    "parquet-footer-truncated": (_truncate("units.parquet", 100), "units is corrupt"),
    "parquet-empty-file": (lambda run: (run / "layers.parquet").write_bytes(b""), "layers is corrupt"),
    "table-over-another": (lambda run: shutil.copy(run / "epochs.parquet", run / "layers.parquet"),
                           "table layers .* does not have the columns"),
    "table-from-another-run": (lambda run: shutil.copy(run.parent / "good" / "units.parquet", run / "units.parquet"),
                               "holds rows of run 'good'"),
    "table-extra-column": (_rewrite("runs.parquet", lambda t: t.append_column("x", pa.array([1] * t.num_rows))),
                           "unexpected \\['x'\\]"),
    "table-retyped-column": (_rewrite("epochs.parquet", lambda t: t.set_column(
        t.schema.get_field_index("epoch"), "epoch", t.column("epoch").cast(pa.float64()))), "other types \\['epoch'\\]"),
    "table-missing": (lambda run: (run / "train_trace.parquet").unlink(), "train_trace is corrupt|missing"),
    "table-not-in-manifest": (_drop_file_entry("units.parquet"), "units is missing"),
    "table-fifo": (_replace("epochs.parquet", lambda p: os.mkfifo(p)), "epochs is corrupt|not a regular file"),
    "table-folder": (_replace("epochs.parquet", lambda p: p.mkdir()), "epochs is corrupt|not a regular file"),
    "table-size-edited": (lambda run: _edit_manifest(files={
        **json.loads((run / "manifest.json").read_text())["files"],
        "units.parquet": {**json.loads((run / "manifest.json").read_text())["files"]["units.parquet"], "bytes": 1}})(run),
        "manifest says 1"),
    "classes-none": (_rewrite("runs.parquet", lambda t: _set(t, "class_names", [[]])), "names 0 class\\(es\\)"),
    "class-beyond-the-run": (_rewrite("unit_classes.parquet", lambda t: _set(
        t, "class", [c + 90 for c in t.column("class").to_pylist()])), "unit_classes holds class values from 90 to 99"),
    "pref-class-beyond": (_rewrite("units.parquet", lambda t: _set(t, "pref_class", [
        None if c is None else 12 for c in t.column("pref_class").to_pylist()])), "units holds pref_class values .* 12"),
    "unit-negative": (_rewrite("units.parquet", lambda t: _set(t, "unit", [-1 - u for u in t.column("unit").to_pylist()])),
                      "units holds unit values from -"),
    "unit-negative-no-statistics": (_rewrite("units.parquet", lambda t: _set(t, "unit", [-1 - u for u in t.column(
        "unit").to_pylist()]), write_statistics=False), "units holds unit values from -120 to -1"),
    # Consistent hashes, contradictory contents: the units a run holds are not those its layers list.
    "layer-not-listed": (_rewrite("units.parquet", lambda t: _set(t, "layer", [
        "ghost" if x == "fc1" else x for x in t.column("layer").to_pylist()])), "units of layer 'ghost', which its layers"),
    "layers-empty": (_rewrite("layers.parquet", lambda t: t.slice(0, 0)), "layers table is empty"),
    "layer-index-shared": (_rewrite("layers.parquet", lambda t: _set(t, "layer_index", [0] * t.num_rows)),
                           "gives two layers the same layer_index"),
    "unit-layer-index-off": (_rewrite("units.parquet", lambda t: _set(t, "layer_index", t.column(
        "layer_index").to_pylist()[:-1] + [0])), "table units gives layer 'fc2' layer_index 0, its layers table 3"),
    "units-empty": (_rewrite("units.parquet", lambda t: t.slice(0, 0)), "table units has 0 rows; its layers table lists 226 units"),
    "units-twice": (_rewrite("units.parquet", lambda t: pa.concat_tables([t, t])),
                    "table units has 452 rows; its layers table lists 226 units, each held once"),
    "unit-repeated": (_rewrite("units.parquet", lambda t: _set(t, "unit", [0 if i == 1 else u for i, u in enumerate(
        t.column("unit").to_pylist())])), "holds unit 0 of layer 'conv1' twice or more"),
    "unit-without-layer": (_rewrite("units.parquet", lambda t: _set(t, "layer", [None] + t.column(
        "layer").to_pylist()[1:])), "units holds 1 null value\\(s\\) in column layer"),
    # Nulls where the schema has none (the pages read them as numbers and flags): footers' counts, or the column.
    "dead-null": (_rewrite("units.parquet", lambda t: _set(t, "dead", [None] * 3 + t.column("dead").to_pylist()[3:])),
                  "units holds 3 null value\\(s\\) in column dead, which a run never leaves empty"),
    "n-active-null-no-statistics": (_rewrite("units.parquet", lambda t: _set(t, "n_active", [None] + t.column(
        "n_active").to_pylist()[1:]), write_statistics=False), "units holds 1 null value\\(s\\) in column n_active"),
    "n-eval-null": (_rewrite("runs.parquet", lambda t: _set(t, "n_eval", [None])),
                    "runs holds 1 null value\\(s\\) in column n_eval"),
    "layer-of-2-billion-units": (_rewrite("layers.parquet", lambda t: _set(t, "n_units", [2**31 - 1] + t.column(
        "n_units").to_pylist()[1:])), "lists 2,147,483,867 units"),
    "unit-beyond-its-layer": (_rewrite("units.parquet", lambda t: _set(t, "unit", [u + 1000 for u in t.column(
        "unit").to_pylist()])), "holds unit 1000 of layer 'conv1', which has units 0 to 5"),
    "class-grid-cut": (_rewrite("unit_classes.parquet", lambda t: t.slice(0, t.num_rows // 2)),
                       "unit_classes has 1,130 rows, not one per unit and class \\(226 x 10\\)"),
    "checkpoint-replaced": (lambda run: (run / "checkpoint.pt").write_bytes(b"planted"), "checkpoint.pt has"),
    "checkpoint-same-size": (_flip_middle("checkpoint.pt"), "checkpoint.pt does not match its SHA-256"),
    "folder-unreadable": (_chmod("", 0), "cannot open|Permission"),
    "manifest-unreadable": (_chmod("manifest.json", 0), "cannot open"),
}
COPIES = {  # folder -> reason: copies whose identity does not match, and names that are not run ids
    "good-backup": "named 'good-backup' but its manifest says run 'good'",
    "bad\nname": "not a valid run id",
    ".trash": "not a valid run id",
}
ISOLATED_OK = {"junk-files": _junk,  # damage that must not break the run
               "odd-extras": _edit_manifest(model={"a": [1]}, dataset=10**400)}  # the publisher's additions: any JSON


@pytest.fixture(scope="module")
def damaged(warehouse_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """(warehouse root, {run folder: RunInfo}) with the healthy run ``good`` and every damaged case."""
    root = tmp_path_factory.mktemp("damaged")
    src = warehouse_root / "runs" / RUN_ID
    good = clone_run(src, root, "good")
    for case, (damage, _) in CASES.items():
        damage(clone_run(src, root, case))
    for case, damage in ISOLATED_OK.items():
        damage(clone_run(src, root, case))
    for folder in COPIES:
        shutil.copytree(good, root / "runs" / folder)
    (root / "runs" / "README").write_text("a stray file, not a run")
    signal.alarm(60)  # a listing that blocks (a FIFO) fails the test instead of hanging it
    try:
        runs = {r.run_id: r for r in list_runs(root)}
    finally:
        signal.alarm(0)
    yield root, runs
    for case in CASES:  # give pytest's clean-up its permissions back
        for p in (root / "runs" / case, root / "runs" / case / "manifest.json"):
            if p.exists() and not p.is_symlink():
                os.chmod(p, 0o755)


@pytest.mark.parametrize("case", list(CASES))
def test_each_damage_is_listed_as_broken_with_its_reason(damaged, case):
    if ROOT_USER and "unreadable" in case:
        pytest.skip("running as root: chmod does not make a file unreadable")
    _, runs = damaged
    info = runs[case]
    assert not info.ok, f"{case} passed as healthy"
    import re

    assert re.search(CASES[case][1], info.error), info.error


@pytest.mark.parametrize("folder", list(COPIES))
def test_copied_folders_and_bad_names_are_broken(damaged, folder):
    _, runs = damaged
    assert not runs[folder].ok and COPIES[folder] in runs[folder].error


def test_junk_beside_a_run_is_ignored_and_stray_files_are_not_runs(damaged):
    _, runs = damaged
    assert runs["junk-files"].ok and "README" not in runs


def test_connect_shows_exactly_the_healthy_runs(damaged):
    root, runs = damaged
    healthy = sorted(r for r, info in runs.items() if info.ok)
    assert healthy == sorted(["good", *ISOLATED_OK] + (["folder-unreadable", "manifest-unreadable"] if ROOT_USER else []))
    con = warehouse.connect(root)
    counts = dict(con.execute("SELECT run_id, count(*) FROM units GROUP BY ALL").fetchall())
    assert counts == {run: 226 for run in healthy}


def test_compute_list_names_each_broken_run(damaged, capsys):
    from compute.cli import main

    root, runs = damaged
    assert main(["list", "--warehouse", str(root)]) == 0
    out = capsys.readouterr().out
    for run_id, info in runs.items():
        if not info.ok:
            assert "BROKEN: " + info.error in out
    assert "bad\\nname" in out and "bad\nname" not in out  # printed escaped, on one line
    (line,) = [x for x in out.splitlines() if x.startswith("odd-extras ")]
    assert line.split()[1:4] == ["{'a':", "[1]}", "1" * 1 + "0" * 78 + "…"] and line.endswith(" ok")


def test_overview_page_lists_broken_runs_with_reasons(damaged, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_app import APP, frame, ok
    from warehouse.text import md

    root, runs = damaged
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(root))
    at = ok(AppTest.from_file(str(APP), default_timeout=120).run())
    shown = " ".join(w.value for w in at.warning)
    for run_id, info in runs.items():
        if not info.ok:
            assert md(info.error) in shown, run_id  # as text, never markdown
    assert sorted(frame(at, "run_id").run_id) == sorted(r for r, i in runs.items() if i.ok)


def test_figures(damaged):
    """Damaged-run cases isolated / tried, for the closing note."""
    _, runs = damaged
    tried = len(CASES) + len(COPIES) + len(ISOLATED_OK) - (2 if ROOT_USER else 0)
    isolated = sum(1 for c in CASES if not runs[c].ok) + sum(1 for c in COPIES if not runs[c].ok) + sum(
        1 for c in ISOLATED_OK if runs[c].ok)
    print(f"damaged-run cases isolated {isolated} / tried {tried}")
    assert isolated == tried


def _flip_keeping_times(path: Path) -> None:
    """Damage ``path`` in the middle, keeping its size and modification time (as ``touch -d`` would)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_the_verification_cache_never_lets_a_damaged_file_through(warehouse_root, tmp_path, monkeypatch):
    """Files hashed once are not hashed again, in this process or (through the cache file) the next; but a
    file damaged afterwards, even with its size and modification time kept, is hashed again and found,
    whether the verification is remembered in memory or read back from the cache file."""
    from warehouse import validate

    monkeypatch.setenv("NEURON_ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(validate, "_VERIFIED", {})
    monkeypatch.setattr(validate, "_CACHE_STATE", {"loaded": False, "dirty": False})
    root = tmp_path / "wh"
    clone_run(warehouse_root / "runs" / RUN_ID, root, "a")
    clone_run(warehouse_root / "runs" / RUN_ID, root, "b")
    hashed: list[str] = []
    real = validate.hashlib.sha256
    monkeypatch.setattr(validate.hashlib, "sha256", lambda *a: hashed.append("x") or real(*a))

    assert all(r.ok for r in list_runs(root))
    n_files = len(hashed)
    assert n_files >= 2 * 8 and validate.verification_cache().is_file()
    assert all(r.ok for r in list_runs(root)) and len(hashed) == n_files  # remembered: nothing hashed again

    # A new process: the verifications come from the cache file.
    monkeypatch.setattr(validate, "_VERIFIED", {})
    monkeypatch.setattr(validate, "_CACHE_STATE", {"loaded": False, "dirty": False})
    assert all(r.ok for r in list_runs(root)) and len(hashed) == n_files

    # Damage one file of each run, size and modification time kept: one remembered in this process,
    # the other read back from the cache file by a new process.
    _flip_keeping_times(root / "runs" / "a" / "units.parquet")
    runs = {r.run_id: r for r in list_runs(root)}
    assert not runs["a"].ok and "SHA-256" in runs["a"].error and runs["b"].ok
    monkeypatch.setattr(validate, "_VERIFIED", {})
    monkeypatch.setattr(validate, "_CACHE_STATE", {"loaded": False, "dirty": False})
    _flip_keeping_times(root / "runs" / "b" / "train_trace.parquet")
    runs = {r.run_id: r for r in list_runs(root)}
    assert not runs["a"].ok and not runs["b"].ok and "SHA-256" in runs["b"].error
    assert not any(r.run_id in ("a", "b") for r in warehouse.connect(root).execute(
        "SELECT DISTINCT run_id FROM runs").fetchall())


def test_a_damaged_cache_file_is_ignored(warehouse_root, tmp_path, monkeypatch):
    """A cache file that is not what it should be (junk, wrong shapes) is ignored: every file is hashed."""
    from warehouse import validate

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NEURON_ATLAS_CACHE", str(cache))
    monkeypatch.setattr(validate, "_VERIFIED", {})
    monkeypatch.setattr(validate, "_CACHE_STATE", {"loaded": False, "dirty": False})
    (cache / "verified-files.json").write_text('[["x", 1, 2, 3, 4, 5, "nothex"], 7, {"a": 1}] trailing')
    root = tmp_path / "wh"
    clone_run(warehouse_root / "runs" / RUN_ID, root, "a")
    _flip_keeping_times(root / "runs" / "a" / "units.parquet")
    assert not list_runs(root)[0].ok
    assert json.loads((cache / "verified-files.json").read_text())  # rewritten with real entries


def test_unreadable_pictures_of_a_valid_run_are_named_never_a_crash(warehouse_root, tmp_path, monkeypatch):
    """``unit_images`` rewritten with the manifest refreshed (so the run is valid): a picture that is not an
    image, an empty one, one claiming a huge size and receptive-field boxes far outside the input. The unit
    page, the gallery, the explorer's thumbnails and the unit's zip show them as unreadable, never raise
    (a null picture breaks the run: the schema has no null there)."""
    import struct
    import zipfile
    import zlib

    from streamlit.testing.v1 import AppTest

    from dashboard.image_panels import UNREADABLE, with_thumbnails
    from tests.test_dashboard_app import APP, ok, open_page
    from warehouse.bundle import export_bundle

    def huge_png() -> bytes:  # a valid header claiming 100,000 x 100,000 pixels
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))

    pictures = [b"not a png", b"", huge_png()]
    run = clone_run(warehouse_root / "runs" / RUN_ID, tmp_path, "pictures")
    _rewrite("unit_images.parquet", lambda t: _set(_set(
        t, "png", [pictures[u % 3] for u in t.column("unit").to_pylist()]),
        "box", [None if b is None else [-10**9, 10**9, 10**9, -10**9] for b in t.column("box").to_pylist()]))(run)
    assert list_runs(tmp_path)[0].ok
    missing = clone_run(warehouse_root / "runs" / RUN_ID, tmp_path / "missing", "pictures")  # a null picture:
    _rewrite("unit_images.parquet", lambda t: _set(t, "png", [None] * t.num_rows))(missing)  # refused as a whole
    assert "unit_images holds" in list_runs(tmp_path / "missing")[0].error
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(tmp_path))
    unit = open_page(AppTest.from_file(str(APP), default_timeout=120), "unit", {"run": "pictures", "unit": "conv2:3"})
    assert any(UNREADABLE in c for im in unit.image for c in im.captions)
    gallery = open_page(AppTest.from_file(str(APP), default_timeout=120), "gallery", {"run": "pictures", "layer": "conv2"})
    assert UNREADABLE in [c.value for c in gallery.caption]
    con = warehouse.connect(tmp_path)
    thumbs, _ = with_thumbnails(con, "pictures", pd.DataFrame({"layer": ["conv2"] * 3, "unit": [0, 1, 2]}))
    assert thumbs.thumbnail.notna().all()  # an unreadable picture's thumbnail is the grey square
    with zipfile.ZipFile(export_bundle(con, "pictures", [("conv2", 3), ("conv2", 4)], tmp_path / "b.zip")) as z:
        listed = pd.read_csv(z.open("images.csv"))
        assert sorted(n for n in z.namelist() if n.endswith(".png")) == sorted(listed.file.dropna())
        assert len(listed) == con.execute("SELECT count(*) FROM unit_images WHERE run_id = 'pictures' AND layer = "
                                          "'conv2' AND unit IN (3, 4)").fetchall()[0][0]  # readable or not
    ok(unit)


STORED_CONFIGS = {  # runs.config rewritten (manifest refreshed) -> what the error must say
    "json-null": ("null", "NoneType, not a JSON object"), "list": ("[]", "not a JSON object"), "text": ("not json", "runs table"),
    "images-int": ({"images": 1}, "not valid"), "widths-int": ({"widths": 5}, "not valid"),
    "layers-int": ({"layers": 3}, "not valid"), "epochs-text": ({"epochs": "x"}, "epochs must be"),
}


@pytest.mark.parametrize("case", list(STORED_CONFIGS))
def test_stored_settings_that_are_not_a_runs_settings_are_named(warehouse_root, tmp_path, case):
    """The what-if page and the unit page's examples rebuild a run from ``runs.config``: stored values that are
    not a run's settings are one error naming the run (the pages show it), never a TypeError."""
    from compute.run.whatif import run_config
    from warehouse.errors import WarehouseError

    value, message = STORED_CONFIGS[case]
    run = clone_run(warehouse_root / "runs" / RUN_ID, tmp_path, "stored")
    real = json.loads(pq.read_table(run / "runs.parquet").column("config")[0].as_py())
    stored = json.dumps({**real, **value}) if isinstance(value, dict) else value
    _rewrite("runs.parquet", lambda t: _set(t, "config", [stored]))(run)
    assert list_runs(tmp_path)[0].ok
    with pytest.raises(WarehouseError, match=f"{message}.*recompute"):
        run_config(run)


def test_a_null_config_is_a_broken_run_and_reading_it_directly_is_one_error(warehouse_root, tmp_path):
    """Validation refuses a null ``runs.config`` (the schema has no null there); read without validation
    (``stored_run_config`` on the folder), it is still one WarehouseError, not json's TypeError."""
    from warehouse.errors import WarehouseError
    from warehouse.validate import stored_run_config

    run = clone_run(warehouse_root / "runs" / RUN_ID, tmp_path, "stored")
    _rewrite("runs.parquet", lambda t: _set(t, "config", [None]))(run)
    assert "runs holds 1 null value(s) in column config" in list_runs(tmp_path)[0].error
    with pytest.raises(WarehouseError, match="not a readable published run"):
        stored_run_config(run)
