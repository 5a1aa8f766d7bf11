"""Export bytes hold exactly the filtered rows; the export command line and its errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.dashboard_fixtures import RUN_ID
from warehouse import queries as q
from warehouse.export import export_units

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warehouse", *args], cwd=REPO, capture_output=True, text=True)


def test_csv_and_parquet_hold_exactly_the_filtered_rows(con, tables):
    f = q.PRESETS["high gradient, low activation"].apply(q.UnitFilter(RUN_ID, layers=("fc1", "fc2")))
    shown = q.filter_units(con, f)
    csv = pd.read_csv(io.BytesIO(export_units(con, f, "csv")))
    par = pq.read_table(io.BytesIO(export_units(con, f, "parquet"))).to_pandas()
    assert len(shown) > 0
    for got in (csv, par):
        assert list(zip(got.layer, got.unit)) == list(zip(shown.layer, shown.unit))
        assert got.selectivity.tolist() == pytest.approx(shown.selectivity.tolist())
    assert csv.matched_classes.astype(str).tolist() == [";".join(m) for m in shown.matched_classes]
    assert [list(m) for m in par.matched_classes] == [list(m) for m in shown.matched_classes]


def test_cli_export_matches_the_query(tmp_path, warehouse_root, con):
    out = tmp_path / "hgla.csv"
    r = cli("export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--preset", "high gradient, low activation",
            "--layer", "fc2", "--range", "selectivity::0.9", "-o", str(out))
    assert r.returncode == 0, r.stderr
    f = q.PRESETS["high gradient, low activation"].apply(q.UnitFilter(RUN_ID, layers=("fc2",)))
    f = q.UnitFilter(**{**f.__dict__, "ranges": (q.Range("selectivity", None, 0.9),)})
    assert out.read_bytes() == export_units(con, f, "csv")
    assert f"wrote {q.count_units(con, f)} units" in r.stdout

    out2 = tmp_path / "dead.parquet"
    r = cli("export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--dead", "yes", "--sort", "unit",
            "--desc", "--limit", "5", "-o", str(out2))
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out2).to_pandas()
    assert len(t) == 5 and t.dead.all() and t.unit.tolist() == sorted(t.unit, reverse=True)


@pytest.mark.parametrize("args, message", [
    (["--run", "nope"], "no run 'nope'"),
    (["--run", RUN_ID, "--range", "bogus:1:"], "unknown column 'bogus'"),
    (["--run", RUN_ID, "--range", "selectivity:1"], "COLUMN:LO:HI"),
    (["--run", RUN_ID, "--class-condition", "selectivity:1:"], "unknown column 'selectivity'"),
    (["--run", RUN_ID, "--layer", "fc9"], "has no layer fc9"),
    (["--run", RUN_ID, "--sort", "run_id"], "unknown sort column"),
    (["--run", RUN_ID, "--class", "99", "--class-condition", "anomaly:1:"], "there is no class 99"),
    (["--run", RUN_ID, "--pref-class", "3", "--pref-class", "10"], "there is no class 10"),
    (["--run", RUN_ID, "--format", "csv", "--output-dir-missing"], "unrecognized arguments"),
])
def test_cli_errors_name_the_problem_and_write_nothing(tmp_path, warehouse_root, args, message):
    out = tmp_path / "out.csv"
    r = cli("export", "--warehouse", str(warehouse_root), *args, "-o", str(out))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_names_the_runs_layers_and_classes_in_one_paragraph(tmp_path, warehouse_root):
    r = cli("export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--layer", "fc9", "--pref-class", "10",
            "--class", "99", "-o", str(tmp_path / "out.csv"))
    assert r.returncode == 2 and r.stdout == "" and list(tmp_path.iterdir()) == []
    assert r.stderr == ("error: Run 'small' has no layer fc9 (--layer); its layers are conv1, conv2, fc1, fc2. "
                        "Run 'small' has 10 classes, 0 to 9; there is no class 10 (--pref-class); choose among them. "
                        "Run 'small' has 10 classes, 0 to 9; there is no class 99 (--class); choose among them.\n")


def test_cli_refuses_unknown_suffix_and_broken_runs(tmp_path, broken_root):
    r = cli("export", "--warehouse", str(broken_root), "--run", RUN_ID, "-o", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and "--format csv" in r.stderr
    r = cli("export", "--warehouse", str(broken_root), "--run", "broken-run", "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "broken" in r.stderr and "units is corrupt" in r.stderr
    r = cli("export", "--warehouse", str(broken_root), "--run", RUN_ID, "-o", str(tmp_path / "no" / "x.csv"))
    assert r.returncode == 2 and "cannot write" in r.stderr
    r = cli("export", "--warehouse", str(tmp_path / "nowhere"), "--run", RUN_ID, "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "(runs: none: the folder does not exist)" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_schema_doc_subcommand_still_works():
    r = cli("schema-doc")
    assert r.returncode == 0 and r.stdout == (REPO / "docs" / "schema.md").read_text()


def test_cli_names_a_hostile_output_file_escaped(tmp_path, warehouse_root):
    """The summary line names the file written with its control characters escaped (a terminal never obeys them)."""
    out = tmp_path / "a\x1b[2Jb\nc.csv"
    r = cli("export", "--warehouse", str(warehouse_root), "--run", RUN_ID, "--limit", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "\x1b" not in r.stdout and r.stdout.count("\n") == 1
    assert "a\\x1b[2Jb\\nc.csv" in r.stdout
