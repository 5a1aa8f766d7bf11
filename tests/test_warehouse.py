"""The warehouse: views over published runs, provenance, atomic publishing, lock-down, docs."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

import warehouse
from tests.run_copies import clone_run
from warehouse.schema import TABLES, markdown
from warehouse.errors import WarehouseError
from warehouse.cleanup import staging_leftovers
from warehouse.publish import RunWriter
from warehouse.validate import list_runs

REPO = Path(__file__).resolve().parents[1]


def test_every_view_exists_with_run_ids_and_schema_columns(small_run):
    root, _ = small_run
    con = warehouse.connect(root)
    for name, table in TABLES.items():
        cols = [r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()]
        assert cols == [c.name for c in table.columns]
        (n, with_id), = con.execute(f"SELECT count(*), count(*) FILTER (run_id = 'small') FROM {name}").fetchall()
        assert n > 0 and with_id == n, name


def test_units_in_memory_equal_the_parquet_units(small_run):
    """The in-memory copy (with each unit's class-ordered anomalies) and the plain Parquet view agree."""
    from warehouse.connect import has_units_in_memory

    memory, disk = warehouse.connect(small_run[0]), warehouse.connect(small_run[0], memory_units=0)
    assert has_units_in_memory(memory) and not has_units_in_memory(disk)
    order = "SELECT * FROM units ORDER BY layer_index, unit"
    assert memory.execute(order).fetchall() == disk.execute(order).fetchall()
    assert [r[0] for r in memory.execute("DESCRIBE units").fetchall()] == [c.name for c in TABLES["units"].columns]
    listed = memory.execute("SELECT layer, unit, class_anomaly FROM units_in_memory").fetchall()
    rows = {(layer, unit, c): a for layer, unit, c, a in disk.execute(
        'SELECT layer, unit, "class", anomaly FROM unit_classes').fetchall()}
    assert len(listed) == 226
    assert all(a == rows[(layer, unit, c)] for layer, unit, anomalies in listed for c, a in enumerate(anomalies))


def test_units_copied_in_the_background_answer_the_same_before_and_after(small_run):
    """``connect(background=True)``: answered at once (from Parquet while the thread copies), from the
    in-memory copy once it is made; the explorer's queries give the same rows, and the copy equals the one
    ``connect()`` makes before returning."""
    from warehouse import queries as q
    from warehouse.connect import has_units_in_memory, wait_for_units

    con = warehouse.connect(small_run[0], background=True)
    hgla = q.PRESETS["high gradient, low activation"].apply(q.UnitFilter("small"))
    cursor = con.cursor()  # a session's cursor, as the dashboard uses them, while the copy may be running
    before = q.filter_units(cursor, hgla), q.count_units(cursor, hgla)
    assert wait_for_units(con, timeout=120) and has_units_in_memory(cursor)
    after = q.filter_units(cursor, hgla), q.count_units(cursor, hgla)
    assert before[1] == after[1] > 0
    lists = lambda df: df.assign(matched_classes=df["matched_classes"].map(list)).to_dict("records")  # noqa: E731
    assert lists(before[0]) == lists(after[0])
    order = "SELECT * FROM units_in_memory ORDER BY layer_index, unit"
    assert con.execute(order).fetchall() == warehouse.connect(small_run[0]).execute(order).fetchall()
    assert [r[0] for r in con.execute("DESCRIBE units").fetchall()] == [c.name for c in TABLES["units"].columns]


def test_row_counts_match_the_model(small_run):
    con = warehouse.connect(small_run[0])
    layers = con.execute("SELECT layer, kind, n_units, shape FROM layers ORDER BY layer_index").fetchall()
    assert layers == [("conv1", "conv", 6, [6, 28, 28]), ("conv2", "conv", 16, [16, 10, 10]),
                      ("fc1", "linear", 120, [120]), ("fc2", "linear", 84, [84])]
    assert con.execute("SELECT count(*) FROM units").fetchall() == [(226,)]
    assert con.execute("SELECT count(*) FROM unit_classes").fetchall() == [(2260,)]
    assert con.execute("SELECT count(*) FROM train_trace").fetchall() == [(2 * 2260,)]
    assert con.execute("SELECT sum(n) FROM unit_classes WHERE layer='fc1' AND unit=0").fetchall() == [(300,)]
    assert con.execute("SELECT epoch, sum(n) FROM train_trace WHERE layer='conv1' AND unit=0 GROUP BY 1 ORDER BY 1"
                       ).fetchall() == [(1, 1000), (2, 1000)]


def test_runs_row_holds_provenance(small_run):
    con = warehouse.connect(small_run[0])
    row = con.execute("SELECT * FROM runs").fetchdf().iloc[0]
    assert (row.model, row.dataset, row.n_train, row.n_eval, row.seed, row.epochs) == ("lenet5", "mnist-5k", 1000, 300, 0, 2)
    assert row.schema_version == warehouse.SCHEMA_VERSION and row.label_noise == 0.0
    assert list(row.class_names) == list("0123456789")
    assert json.loads(row.package_versions)["torch"].startswith("2.")
    assert json.loads(row.config)["model_spec"]["name"] == "lenet5"
    assert 0.5 < row.test_acc <= 1 and 0.5 < row.eval_acc <= 1
    assert (small_run[1].path / row.checkpoint).is_file()
    epochs = con.execute("SELECT epoch, test_acc FROM epochs ORDER BY epoch").fetchall()
    assert [e for e, _ in epochs] == [1, 2]


def test_connection_has_no_file_system_access(small_run):
    con = warehouse.connect(small_run[0])
    for sql in ("SELECT * FROM read_csv('/etc/passwd')",
                f"COPY units TO '{small_run[0]}/stolen.csv'",
                "ATTACH '/tmp/x.duckdb'",
                "INSTALL httpfs"):
        with pytest.raises(duckdb.PermissionException):
            con.execute(sql)
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    assert not (small_run[0] / "stolen.csv").exists()


def test_empty_warehouse_has_empty_views(tmp_path: Path):
    con = warehouse.connect(tmp_path / "nothing-here")
    assert con.execute("SELECT count(*) FROM units").fetchall() == [(0,)]
    assert list_runs(tmp_path) == []


def test_runs_side_by_side_and_broken_or_unfinished_runs_are_left_out(small_run, tmp_path: Path):
    src = small_run[1].path
    clone_run(src, tmp_path, "a")
    clone_run(src, tmp_path, "b")
    corrupt = clone_run(src, tmp_path, "corrupt")
    (corrupt / "units.parquet").write_bytes(b"PAR1 this is not parquet")
    newer = clone_run(src, tmp_path, "newer")
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    unfinished = clone_run(src, tmp_path, "unfinished")
    (unfinished / "manifest.json").unlink()
    (tmp_path / ".staging" / "half-written").mkdir(parents=True)

    runs = {r.run_id: r for r in list_runs(tmp_path)}
    assert set(runs) == {"a", "b", "corrupt", "newer", "unfinished"}
    assert runs["a"].ok and runs["b"].ok
    assert "units" in runs["corrupt"].error and "corrupt" in runs["corrupt"].error
    assert "schema version 99" in runs["newer"].error
    assert "manifest.json is missing" in runs["unfinished"].error
    con = warehouse.connect(tmp_path)
    # Two good runs -> twice the rows, each under its own run id.
    assert con.execute("SELECT run_id, count(*) FROM units GROUP BY ALL ORDER BY 1").fetchall() == [("a", 226),
                                                                                                 ("b", 226)]


def test_writer_publishes_atomically_and_refuses_duplicates(tmp_path: Path):
    with pytest.raises(WarehouseError, match="invalid run id"):
        RunWriter(tmp_path, "../escape")
    with pytest.raises(RuntimeError):
        with RunWriter(tmp_path, "x") as w:
            w.write_table("epochs", {"run_id": ["x"], "epoch": [1], "train_loss": [1.0], "train_acc": [0.5],
                                     "test_loss": [1.0], "test_acc": [0.5]})
            raise RuntimeError("crash in the middle of a run")
    assert list((tmp_path / ".staging").iterdir()) == [] and not (tmp_path / "runs" / "x").exists()
    w = RunWriter(tmp_path, "y")
    with pytest.raises(ValueError, match="tables not written"):
        w.publish()
    w.abort()


def test_unwritable_warehouse_is_explained(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WarehouseError, match=f"{blocker} is not a folder, so it cannot hold"):
        RunWriter(blocker, "x")
    with pytest.raises(WarehouseError, match="cannot write to warehouse /proc/wh: No such file"):
        RunWriter(Path("/proc/wh"), "x")
    for listing in (list_runs, staging_leftovers):  # the readers say the same (compute list, gc, export, dashboard)
        with pytest.raises(WarehouseError, match=f"{blocker} is not a folder"):
            listing(blocker)


def test_schema_doc_is_current():
    assert (REPO / "docs" / "schema.md").read_text() == markdown(), "run `make docs`"


def test_stage_doc_is_current():
    from compute.run.stages import STAGE_NAMES, markdown
    doc = (REPO / "docs" / "stages.md").read_text()
    assert doc == markdown(), "run `make docs`"
    assert all(f"`{name}`" in doc for name in STAGE_NAMES)


def test_a_column_is_nullable_exactly_where_its_doc_says_when_it_is_null():
    """``Column.nullable`` drives validation (a null elsewhere breaks a run): the doc a reader sees must agree."""
    from warehouse.schema import TABLES

    disagree = [(n, c.name) for n, t in TABLES.items() for c in t.columns if ("null" in c.doc.lower()) != c.nullable]
    assert disagree == []
