"""Every dashboard page driven by Streamlit's AppTest against a real warehouse written by the compute step."""

from __future__ import annotations

import gc
import io
import os
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import streamlit as st
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from tests.dashboard_fixtures import RUN_ID
from dashboard.knowledge import _fmt_p
from warehouse import queries as q
from warehouse.text import WORD_JOINER
from warehouse.export import export_units

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
HGLA = "high gradient, low activation"


class RecordingStorage(MemoryMediaFileStorage):
    """Streamlit's real in-memory media storage, remembered so a test can read what a download serves."""

    instances: list[MemoryMediaFileStorage] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordingStorage.instances.append(self)


class RecordingManager(MediaFileManager):
    """Streamlit's real media file manager, remembered so a test can make a download made on click."""

    instances: list[MediaFileManager] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordingManager.instances.append(self)


@pytest.fixture(scope="module", autouse=True)
def _release_caches():
    """Close the cached DuckDB connections when the module is done, not at interpreter exit."""
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    gc.collect()


@pytest.fixture()
def app(monkeypatch, warehouse_root):
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    monkeypatch.setattr(app_test_module, "MediaFileManager", RecordingManager)
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(warehouse_root))
    return AppTest.from_file(str(APP), default_timeout=60)


def downloaded(at: AppTest, key: str) -> bytes:
    """The bytes the download button ``key`` serves in the latest run (made now if it is made on click)."""
    proto = at.download_button(key=key).proto
    url = proto.url or RecordingManager.instances[-1].execute_deferred(proto.deferred_file_id)
    return RecordingStorage.instances[-1].get_file(url.rsplit("/", 1)[1]).content


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_page(at: AppTest, page: str, params: dict | None = None) -> AppTest:
    ok(at.run())
    at.switch_page(f"views/{page}.py")
    if params is not None:
        at.query_params = dict(params)
    return ok(at.run())


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The first table shown with ``column`` (plain st.dataframe elements carry no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def count_line(at: AppTest) -> int:
    line = next(m.value for m in at.markdown if "unit(s) match" in m.value)
    return int(line.split("**")[1].split()[0].replace(",", ""))


def test_overview_lists_runs_layers_and_distributions(app, tables):
    at = ok(app.run())
    assert at.title[0].value == "Runs overview"
    runs = frame(at, "created_at")
    assert runs.run_id.tolist() == [RUN_ID] and runs.test_acc.iloc[0] == pytest.approx(tables["runs"].test_acc.iloc[0])
    layers = frame(at, "n_units")
    assert layers.set_index("layer").n_units.to_dict() == {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}
    assert layers.dead.sum() == tables["units"].dead.sum()
    assert at.query_params == {"run": RUN_ID}
    assert len(pd.read_csv(io.BytesIO(downloaded(at, "dl-runs-csv")))) == 1
    assert pq.read_table(io.BytesIO(downloaded(at, "dl-layers-parquet"))).num_rows == 4
    assert {m.value for m in at.subheader} >= {"Runs", f"Layers of `{RUN_ID}`", "Distributions per layer",
                                               f"Findings in `{RUN_ID}`"}
    # The first screen leads with the findings: the most specialized live units and the most important ones.
    u = tables["units"]
    important = frame(at, "abl_loss_delta")
    assert important.abl_loss_delta.tolist() == pytest.approx(sorted(u.abl_loss_delta, reverse=True)[:5])
    special = frame(at, "specialization_max")
    live = u[~u.dead & (u.specialization_max >= q.MIN_SPECIALIZATION)].sort_values("specialization_max", ascending=False)
    assert special.specialization_max.tolist() == pytest.approx(live.specialization_max.head(5).tolist())
    assert all("unit=" in link for link in important["open"])


def test_overview_figures_are_shared_by_sessions_and_rebuilt_for_a_new_run(warehouse_root, tmp_path):
    """The overview's figures are cached objects: two sessions get the same one; a newly published run changes
    the warehouse's fingerprint, so the next session's figure is built anew and counts the new run's units."""
    import shutil

    from tests.run_copies import clone_run

    root = tmp_path / "wh"
    shutil.copytree(warehouse_root, root)
    script = ("import streamlit as st\n"
              "from dashboard import cached, overview_charts\n"
              f"root = {str(root)!r}\n"
              "fig = overview_charts.distribution(root, cached.fingerprint(root), 'small', 'selectivity')\n"
              "st.text(f'{id(fig)} {sum(sum(t.y) for t in fig.data)}')\n")
    def session() -> list[str]:
        return ok(AppTest.from_string(script, default_timeout=60).run()).text[0].value.split()

    first, second = session(), session()
    assert first == second and int(float(first[1])) == 226  # LeNet-5's units, one figure for both sessions
    clone_run(root / "runs" / RUN_ID, root, "copy")  # another published run: the 'small' figure is rebuilt
    third = session()
    assert third[0] != first[0] and third[1] == first[1]


def test_empty_warehouse_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(tmp_path))
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    assert at.subheader[0].value == "This warehouse is empty"
    assert "-m compute run" in at.code[0].value and "--run-id demo-lenet5-mnist5k" in at.code[0].value
    assert str(tmp_path) in at.code[0].value
    assert at.button(key="compute-default").label.startswith("Compute the default run")
    for page in ("explorer", "unit", "export"):
        at.switch_page(f"views/{page}.py")
        ok(at.run())
        assert "no readable runs" in at.info[0].value


def test_broken_run_is_shown_as_broken(monkeypatch, broken_root):
    monkeypatch.setenv("NEURON_ATLAS_WAREHOUSE", str(broken_root))
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    assert any("broken-run" in w.value and "corrupt" in w.value for w in at.warning)
    assert frame(at, "created_at").run_id.tolist() == [RUN_ID]
    assert "1 broken" in " ".join(c.value for c in at.sidebar.caption)


def test_explorer_preset_scatter_correlation_export_and_open(app, con):
    at = open_page(app, "explorer")
    assert count_line(at) == 226
    at.selectbox(key="ex-preset").select(HGLA).run()
    ok(at)
    f = q.PRESETS[HGLA].apply(q.UnitFilter(RUN_ID))
    n = q.count_units(con, f)
    assert n > 0 and count_line(at) == n
    assert at.query_params["preset"] == HGLA and at.query_params["cc"] == "anomaly:1.0:"
    n_dead = int(q.filter_units(con, f).dead.sum())
    hint = [c.value for c in at.caption if "of them are dead" in c.value]
    assert (hint[0].startswith(f"{n_dead:,} of them are dead") if n_dead else not hint), hint
    table = at.dataframe(key="ex-table").value
    assert list(zip(table.layer, table.unit)) == list(zip(*[q.filter_units(con, f)[c] for c in ("layer", "unit")]))
    # The downloads hold exactly the filtered rows.
    assert downloaded(at, "dl-units-csv") == export_units(con, f, "csv")
    assert downloaded(at, "dl-units-parquet") == export_units(con, f, "parquet")
    # Spearman per layer on the plotted points, checked against pandas.
    corr = frame(at, "spearman_rho").set_index("layer")
    for layer, g in table.groupby("layer"):
        if len(g) >= 3 and g.selectivity.nunique() > 1 and g.abl_loss_delta.nunique() > 1:
            assert corr.loc[layer, "spearman_rho"] == pytest.approx(
                g.selectivity.corr(g.abl_loss_delta, method="spearman"))
    # Opening a unit goes to its page, with the unit in the URL.
    first = f"{table.layer.iloc[0]}:{table.unit.iloc[0]}"
    assert at.selectbox(key="ex-open-choice").value == first
    link = next(pl.proto for pl in at.get("page_link") if pl.proto.label == "Open unit page")
    opened = dict(urllib.parse.parse_qsl(link.query_string))
    assert link.page == "unit" and opened["unit"] == first and opened["preset"] == HGLA  # the filter it came from
    at.switch_page("views/unit.py")
    at.query_params = opened
    assert ok(at.run()).header[0].value == f"Unit {first}"


def test_explorer_reads_its_state_from_the_url(app, tables):
    at = open_page(app, "explorer", {"run": RUN_ID, "layers": "fc1,fc2", "range": ["selectivity:0.3:"],
                                     "dead": "no", "sort": "selectivity", "desc": "1", "x": "taylor_norm"})
    u = tables["units"]
    want = u[u.layer.isin(["fc1", "fc2"]) & (u.selectivity >= 0.3) & ~u.dead].sort_values("selectivity", ascending=False)
    assert count_line(at) == len(want) > 0
    assert at.multiselect(key="ex-layers").value == ["fc1", "fc2"]
    assert at.number_input(key="ex-lo-selectivity").value == 0.3 and at.radio(key="ex-dead").value == "live only"
    assert at.selectbox(key="ex-x").value == "taylor_norm"
    assert at.dataframe(key="ex-table").value.selectivity.tolist() == want.selectivity.tolist()
    # Changing a widget rewrites the URL.
    at.multiselect(key="ex-layers").set_value(["fc2"]).run()
    ok(at)
    assert at.query_params["layers"] == "fc2" and count_line(at) == int((want.layer == "fc2").sum())


def test_explorer_empty_result_and_bad_link(app):
    at = open_page(app, "explorer", {"run": RUN_ID, "range": "selectivity:2:"})
    assert count_line(at) == 0 and "No unit matches" in at.info[0].value
    at = open_page(app, "explorer", {"run": RUN_ID, "range": "bogus:1:"})
    assert "is ignored: unknown column 'bogus'" in at.warning[0].value and count_line(at) == 226
    at = open_page(app, "explorer", {"run": "no-such-run"})
    assert "not in this warehouse" in at.warning[0].value and count_line(at) == 226


def test_unit_page_shows_the_unit(app, con, tables):
    at = open_page(app, "unit", {"run": RUN_ID, "unit": "conv2:5"})
    assert at.header[0].value == "Unit conv2:5"
    metrics = frame(at, "layer percentile").set_index("metric")
    row = q.unit_row(con, RUN_ID, "conv2", 5)
    assert metrics.loc["selectivity", "value"] == row["selectivity"]
    assert metrics["layer percentile"].to_dict() == pytest.approx(
        q.layer_percentiles(con, RUN_ID, "conv2", {c: row[c] for c in q.PERCENTILE_METRICS}), nan_ok=True)
    classes = frame(at, "abl_acc_delta")
    uc = tables["unit_classes"]
    assert classes.abl_acc_delta.tolist() == uc[(uc.layer == "conv2") & (uc.unit == 5)].sort_values("class").abl_acc_delta.tolist()
    assert "Image evidence" in [s.value for s in at.subheader]
    assert at.select_slider(key="unit-epoch").value == 2
    assert len(pd.read_csv(io.BytesIO(downloaded(at, "dl-unit-classes-csv")))) == 10
    # Choosing another unit updates the URL.
    at.number_input(key="unit-index").set_value(7).run()
    assert ok(at).query_params["unit"] == "conv2:7" and at.header[0].value == "Unit conv2:7"


@pytest.mark.parametrize("unit, message", [("fc9:1", "has no layer"), ("conv2:99", "does not exist"),
                                           ("conv2", "LAYER:INDEX")])
def test_unit_page_bad_links(app, unit, message):
    at = open_page(app, "unit", {"run": RUN_ID, "unit": unit})
    # Messages are shown through warehouse.text.md: read them back without its escapes.
    assert any(message in e.value.replace("\\", "").replace(WORD_JOINER, "") for e in at.error)


def test_sql_page_runs_selects_and_refuses_the_rest(app):
    at = open_page(app, "sql")
    at.text_area(key="sql-query").input("SELECT layer, count(*) AS n FROM units GROUP BY layer ORDER BY layer")
    at.button(key="sql-run").click().run()
    ok(at)
    assert frame(at, "n").to_dict("list") == {
        "layer": ["conv1", "conv2", "fc1", "fc2"], "n": [6, 16, 120, 84]}
    assert downloaded(at, "dl-sql-csv").decode().splitlines()[1] == '"conv1",6'
    at.text_area(key="sql-query").input("COPY units TO '/tmp/neuron-atlas-leak.csv'")
    at.button(key="sql-run").click().run()
    ok(at)
    assert "not COPY" in at.error[0].value and not Path("/tmp/neuron-atlas-leak.csv").exists()
    assert any(e.label.startswith("`unit_classes`") for e in at.expander)


def test_export_page_matches_the_command_line(app, con, warehouse_root, tmp_path):
    at = open_page(app, "export", {"run": RUN_ID, "preset": HGLA, "cc": "anomaly:1.0:", "layers": "fc1,fc2",
                                   "sort": "anomaly_max", "desc": "1"})
    f = q.PRESETS[HGLA].apply(q.UnitFilter(RUN_ID, layers=("fc1", "fc2")))
    assert downloaded(at, "dl-export-csv") == export_units(con, f, "csv")
    assert downloaded(at, "dl-export-parquet") == export_units(con, f, "parquet")
    args = shlex.split(at.code[0].value)
    args[0] = sys.executable
    args[-1] = str(tmp_path / "cli.csv")
    subprocess.run(args, cwd=Path(APP).parent.parent, check=True, capture_output=True)
    assert (tmp_path / "cli.csv").read_bytes() == export_units(con, f, "csv")


def test_export_and_unit_pages_name_the_runs_classes_for_a_class_it_lacks(app, tables):
    at = open_page(app, "export", {"run": RUN_ID, "cls": "99", "pref": "10", "layers": "fc1"})
    notice = at.warning[0].value
    assert "`cls=99` is ignored: run `small` has 10 classes, 0 to 9; there is no class 99." in notice
    assert "`pref=10` is ignored" in notice
    rows = pd.read_csv(io.BytesIO(downloaded(at, "dl-export-csv")))
    assert len(rows) == int((tables["units"].layer == "fc1").sum()) and set(rows.layer) == {"fc1"}
    at = open_page(app, "unit", {"run": RUN_ID, "unit": "fc1:3", "layers": "fc1", "pref": "10"})
    assert "`pref=10` is ignored: run `small` has 10 classes" in at.warning[0].value
    assert at.query_params.get("pref") is None and at.query_params["layers"] == "fc1"


def test_dashboard_pages_do_not_import_torch(warehouse_root):
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=60).run()\n"
        "for page in ('explorer', 'gallery', 'unit', 'sql', 'export'):\n"
        "    at.switch_page(f'views/{page}.py').run()\n"
        "    assert not at.exception, at.exception\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "NEURON_ATLAS_WAREHOUSE": str(warehouse_root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("no torch")


def test_unit_page_shows_image_evidence(app, con):
    at = open_page(app, "unit", {"run": RUN_ID, "unit": "conv2:5"})
    assert "Image evidence" in [s.value for s in at.subheader]
    n_images = con.execute("SELECT count(*) FROM unit_images WHERE run_id = ? AND layer = 'conv2' AND unit = 5",
                           [RUN_ID]).fetchall()[0][0]
    assert n_images > 0 and sum(len(im.value) for im in at.image) == n_images
    assert any(b.label.startswith("Download this unit's images") for b in at.get("download_button"))


def test_explorer_thumbnails_and_live_what_if_match_the_naive_ablation(app, warehouse_root, con):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy import stats

    from compute.ablation.outcome import outcome
    from compute.nets.models import load_checkpoint
    from compute.nets.probe import ZeroUnit
    from compute.run.whatif import ablate_units, load_run

    at = open_page(app, "explorer")
    at.toggle(key="ex-thumbs").set_value(True).run()
    table = ok(at).dataframe(key="ex-table").value
    assert table.columns[:2].tolist() == ["open", "thumbnail"] and table.thumbnail.str.startswith("data:image/png").all()
    links = {pl.proto.label: pl.proto for pl in at.get("page_link")}
    first = next(p for label, p in links.items() if label.startswith("What if the first 10"))
    assert "whatif" in first.page and "units=" in first.query_string  # the table's units, carried in the link
    # The what-if page: units by name, from the URL; a bad one is named and left out.
    at = open_page(app, "whatif", {"run": RUN_ID, "units": "fc1:3,conv2:5,fc9:1,conv2:x"})
    assert at.multiselect(key="wi-set").value == ["fc1:3", "conv2:5"]
    assert any("fc9:1" in w.value and "conv2:x" in w.value for w in at.warning)
    shown = {m.label: m.value for m in at.metric}
    # Independent check: the checkpoint with both units zeroed by hooks, on the same evaluation set.
    run_dir = warehouse_root / "runs" / RUN_ID
    model, _ = load_checkpoint(run_dir / "checkpoint.pt")
    eval_set = load_run(run_dir).data["eval"]
    probes = model.probe_modules()
    x, y = eval_set.floats(0, len(eval_set)), eval_set.labels
    with torch.no_grad():
        base = model(x)
        with ZeroUnit(probes["fc1"], [3]), ZeroUnit(probes["conv2"], [5]):
            cut = model(x)
            ablated = outcome(model, eval_set)
    assert float(shown["accuracy"]) == pytest.approx(ablated.accuracy, abs=1e-4)
    assert float(shown["loss"]) == pytest.approx(ablated.loss, abs=1e-4)
    assert shown["units removed"] == "2"
    # The paired intervals against scipy on the per-example changes.
    d_loss = (F.cross_entropy(cut, y, reduction="none") - F.cross_entropy(base, y, reduction="none")).double().numpy()
    d_hit = ((cut.argmax(1) == y).double() - (base.argmax(1) == y).double()).numpy()
    r = ablate_units(run_dir, {"fc1": [3], "conv2": [5]})
    for got, d in ((r.loss_interval(), d_loss), (r.acc_interval(), d_hit)):
        want = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert got[:2] == pytest.approx((want.low, want.high), abs=1e-6)
    assert r.loss_interval()[2] == pytest.approx(stats.ttest_1samp(d_loss, 0.0).pvalue, abs=1e-6)
    hurt, helped = int((d_hit < 0).sum()), int((d_hit > 0).sum())
    assert r.acc_interval()[2] == pytest.approx(stats.binomtest(hurt, hurt + helped).pvalue if hurt + helped else 1.0)
    lo, hi, _ = r.acc_interval()
    assert any(f"[{lo:+.4f}, {hi:+.4f}]" in c.value for c in at.caption)
    assert np.isfinite(lo) and lo <= r.acc_delta <= hi
    # Adding a unit by name keeps the set in the URL.
    at.text_input(key="wi-add").input("fc2:1").run()
    assert ok(at).query_params["units"] == "fc1:3,conv2:5,fc2:1"
    assert torch.is_tensor(torch.zeros(1))  # torch is loaded here on purpose, only by the what-if action


def test_explorer_reports_ignored_url_values(app, tables):
    at = open_page(app, "explorer", {"run": RUN_ID, "limit": "99999999999999999999", "cls": "99", "preset": "nope",
                                     "layers": "fc1,fc1", "range": "selectivity:0.2:"})
    notice = at.warning[0].value
    for part in ("`fc1` is repeated", "`limit=99999999999999999999` is ignored", "unknown preset 'nope'", "`cls=99`"):
        assert part in notice, part
    u = tables["units"]
    assert count_line(at) == int(((u.layer == "fc1") & (u.selectivity >= 0.2)).sum())


def test_explorer_facets_count_the_filtered_units(app, tables):
    at = open_page(app, "explorer", {"run": RUN_ID, "range": "selectivity:0.2:"})
    u = tables["units"][tables["units"].selectivity >= 0.2]
    labels = {pl.proto.label for pl in at.get("page_link")}
    for layer, n in u.groupby("layer").size().items():
        assert f"{layer} · {n:,}" in labels
    assert f"live · {int((~u.dead).sum()):,}" in labels and not u.dead.any()  # dead units have no selectivity
    for c, n in u.groupby("pref_class_name").size().items():
        assert f"{c} · {n:,}" in labels


def test_gallery_pages_through_a_layer_in_order(app, tables):
    at = open_page(app, "gallery", {"run": RUN_ID, "layer": "fc1", "gsort": "selectivity", "gdesc": "1", "page": "2"})
    fc1 = tables["units"][tables["units"].layer == "fc1"].sort_values(["selectivity", "unit"], ascending=[False, True])
    assert any(m.value.startswith("**120 unit(s)** of `fc1`; units 49 to 96") for m in at.markdown)
    tiles = [pl.proto.label for pl in at.get("page_link") if pl.proto.label.startswith("fc1:")]
    assert tiles == [f"fc1:{u}" for u in fc1.unit.iloc[48:96]]
    assert len(at.image) == 48
    assert at.query_params["page"] == "2" and at.query_params["gsort"] == "selectivity"
    at = open_page(app, "gallery", {"run": RUN_ID, "layer": "fc1", "page": "999999"})
    assert "Page 999,999 does not exist here (3 page(s) of 48); showing page 1." in [c.value for c in at.caption]
    assert at.query_params["page"] == "1" and len(at.image) == 48


def test_unit_page_knows_its_place_in_the_filter(app, con):
    f = q.PRESETS["highly selective"].apply(q.UnitFilter(RUN_ID))
    rows = q.filter_units(con, f)
    assert len(rows) >= 3
    second = f"{rows.layer.iloc[1]}:{rows.unit.iloc[1]}"
    at = open_page(app, "unit", {"run": RUN_ID, "unit": second, "preset": "highly selective", "epoch": "1"})
    assert at.header[0].value == f"Unit {second}"
    assert any(c.value == f"Unit 2 of {len(rows):,} in the results" for c in at.caption)
    links = {pl.proto.label: pl for pl in at.get("page_link")}
    assert f"← Previous ({rows.layer.iloc[0]}:{rows.unit.iloc[0]})" in links
    assert f"Next → ({rows.layer.iloc[2]}:{rows.unit.iloc[2]})" in links
    assert "← Back to results" in links
    assert at.select_slider(key="unit-epoch").value == 1 and at.query_params["epoch"] == "1"


def test_sql_and_compare_state_come_from_the_url(app):
    at = open_page(app, "sql", {"q": "SELECT layer, unit FROM units WHERE layer = 'fc2' ORDER BY unit LIMIT 3"})
    rows = frame(at, "unit")
    assert rows.unit.tolist() == [0, 1, 2] and rows["open"].str.contains("unit=fc2:").all()
    assert at.query_params["q"].startswith("SELECT layer, unit")
    at = open_page(app, "compare", {})
    assert not [i for i in at.info if "No runs selected" in i.value]
    assert at.query_params["runs"] == RUN_ID


def test_jump_box_opens_a_unit(app):
    at = ok(app.run())
    at.sidebar.text_input(key="jump").input("fc1:11").run()
    # The box draws the unit's link and a script that follows it (one history entry, like any link).
    link = next(pl.proto for pl in ok(at).sidebar.get("page_link") if pl.proto.label == "Opening fc1:11 …")
    opened = dict(urllib.parse.parse_qsl(link.query_string))
    assert link.page == "unit" and opened == {"run": RUN_ID, "unit": "fc1:11"}
    assert any("st-key-jump-open" in h.proto.body and ".click()" in h.proto.body for h in at.sidebar.get("html"))
    at.switch_page("views/unit.py")
    at.query_params = opened
    assert ok(at.run()).header[0].value == "Unit fc1:11"
    at.sidebar.text_input(key="jump").input("fc9:1").run()
    assert any("has no layer `fc9`" in e.value for e in ok(at).sidebar.error)


def test_unit_page_says_whether_removal_matters_and_which_examples_need_the_unit(app, con, warehouse_root):
    """Significance metrics from `units`, the examples table from `unit_examples` + `examples`, and the live
    firing split against an independent hook computation on the checkpoint."""
    import torch
    import torch.nn.functional as F

    from compute.nets.models import load_checkpoint
    from compute.nets.probe import ZeroUnit
    from compute.run.whatif import load_run

    layer, unit = con.execute(
        "SELECT layer, unit FROM units WHERE run_id = ? AND NOT dead AND abl_n_hurt > 0 AND layer = 'fc1' "
        "ORDER BY abl_n_hurt DESC, unit LIMIT 1", [RUN_ID]).fetchall()[0]
    at = open_page(app, "unit", {"run": RUN_ID, "unit": f"{layer}:{unit}"})
    row = q.unit_row(con, RUN_ID, layer, unit)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Flips right→wrong / wrong→right"] == f"{row['abl_n_hurt']} / {row['abl_n_helped']}"
    assert shown["Loss change, 95% interval"] == f"{row['abl_loss_delta']:+.4f}"
    assert any(f"[{row['abl_loss_lo']:+.4f}, {row['abl_loss_hi']:+.4f}]" == c.value for c in at.caption)
    table = frame(at, "loss_delta")
    want = q.unit_examples(con, RUN_ID, layer, unit)
    assert table.example.tolist() == want.example.tolist() and (table.kind == "hurt").sum() == min(100, row["abl_n_hurt"])
    cls = int(next(row[c] for c in ("specialization_class", "anomaly_class", "pref_class")
                   if row[c] is not None and not pd.isna(row[c])))
    assert at.selectbox(key="unit-split-class").value == str(cls)
    ok(at.button(key="unit-live").click().run())
    shown = {m.label: m.value for m in at.metric}
    # Independent: the checkpoint, a forward hook for firing and a zeroing hook for removal.
    run_dir = warehouse_root / "runs" / RUN_ID
    model, _ = load_checkpoint(run_dir / "checkpoint.pt")
    data = load_run(run_dir).data["eval"]
    x, y = data.floats(0, len(data)), data.labels
    seen = {}
    handle = model.probe_modules()[layer].register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    with torch.no_grad():
        base = F.cross_entropy(model(x), y, reduction="none")
        handle.remove()
        value = seen["a"][:, unit].double()
        # fc1: one position, so the example value is the activation standardized over the evaluation set.
        fires_all = (value - value.mean()) / value.std(unbiased=False) > row["fire_threshold"]
        with ZeroUnit(model.probe_modules()[layer], [unit]):
            cut = F.cross_entropy(model(x), y, reduction="none")
    in_class = y == cls
    fires = fires_all[in_class]
    assert shown["fires: examples"] == str(int(fires.sum())) and shown["silent: examples"] == str(int((~fires).sum()))
    if fires.any():
        assert float(shown["fires: loss change when removed"]) == pytest.approx(
            float((cut - base)[in_class][fires].mean()), abs=1e-4)
    # The specificity test: within the class, active examples, loss change per unit of activation removed (fc1:
    # the activation itself), firing less the margin against not firing, one-sided Mann-Whitney (scipy on the
    # hook computation).
    import numpy as np
    from scipy.stats import mannwhitneyu

    from compute.measure.subsets import MARGIN

    active = (value > 0) & in_class
    ratio = ((cut - base).double() / value.clamp(min=1e-12)).numpy()
    margin = MARGIN * np.median(np.abs(ratio[active.numpy()]))
    a, b = ratio[(active & fires_all).numpy()], ratio[(active & ~fires_all).numpy()]
    spec = [c.value for c in at.caption if "Mann-Whitney" in c.value]
    if len(a) >= 2 and len(b) >= 2:
        p = mannwhitneyu(a - margin, b, alternative="greater").pvalue
        assert any(f"p = {_fmt_p(p)}" in c for c in spec), (spec, p)
        assert any(f"margin of {margin:.2g}" in c for c in spec), (spec, margin)
    assert len(at.image) >= 4  # the gallery, its mean beside the class mean, and the split's means


def test_explorer_correlates_live_units_by_default_and_taylor_with_the_loss_size(app, con):
    at = open_page(app, "explorer")
    assert at.radio(key="ex-population").value == "live units"
    n_live = q.count_units(con, q.UnitFilter(RUN_ID, dead=False))
    assert any(c.value.startswith(f"Live units only: {n_live:,} units") for c in at.caption)
    at.selectbox(key="ex-x").select("taylor_norm").run()
    at.selectbox(key="ex-y").select("abl_loss_delta").run()
    ok(at)
    corr = frame(at, "spearman_rho").set_index("layer")
    pts = q.scatter_data(con, q.UnitFilter(RUN_ID, dead=False), "taylor_norm", "abl_loss_abs")[0]
    for layer, g in pts.groupby("layer"):
        if len(g) >= 3 and g.taylor_norm.nunique() > 1 and g.abl_loss_abs.nunique() > 1:
            assert corr.loc[layer, "spearman_rho"] == pytest.approx(g.taylor_norm.corr(g.abl_loss_abs, method="spearman"))
    at.radio(key="ex-population").set_value("all matching units").run()
    assert any(c.value.startswith("All matching units, dead ones included: 226 units") for c in ok(at).caption)


def test_explorer_shows_whether_a_class_can_be_removed(app, con):
    at = open_page(app, "explorer")
    table = frame(at, "n_to_halve")
    want = q.class_removal(con, RUN_ID)
    assert len(table) == len(want) == 10 * 5  # 10 classes x (4 layers + last2)
    assert table.n_to_halve.fillna(-1).tolist() == want.n_to_halve.fillna(-1).tolist()
    at.selectbox(key="ex-cr-layer").select("fc2").run()
    at.selectbox(key="ex-cr-class").select("7").run()
    ok(at)
    curves = q.class_curves_of(con, RUN_ID, "fc2")
    assert len(curves[curves["class"] == 7]) > 2


def test_a_link_is_kept_as_opened_and_the_sidebar_returns_to_each_page_as_left(app):
    """A page opened on a link does not rewrite it (Streamlit would push a second history entry for the same
    view); a change made on the page is written; the sidebar's links carry each page's last state."""
    at = open_page(app, "unit", {"run": RUN_ID, "unit": "fc1:0"})
    assert at.header[0].value == "Unit fc1:0"
    assert {k: at.query_params[k] for k in at.query_params} == {"run": RUN_ID, "unit": "fc1:0"}
    at.select_slider(key="unit-epoch").set_value(1).run()
    assert ok(at).query_params["epoch"] == "1" and at.query_params["unit"] == "fc1:0"
    at.switch_page("views/explorer.py")
    at.query_params = {"run": RUN_ID, "layers": "fc1"}
    ok(at.run())
    assert count_line(at) == 120
    ok(at.run())  # the sidebar is drawn before the page: the next run's links carry what this one showed
    sidebar = {pl.proto.label: pl.proto for pl in at.sidebar.get("page_link")}
    assert "layers=fc1" in sidebar["Unit explorer"].query_string
    assert "unit=fc1%3A0" in sidebar["Unit page"].query_string or "unit=fc1:0" in sidebar["Unit page"].query_string
    assert "epoch=1" in sidebar["Unit page"].query_string


def test_unit_page_answers_first_and_names_both_predictions_of_each_flip(app, con):
    layer, unit = con.execute(
        "SELECT layer, unit FROM units WHERE run_id = ? AND NOT dead AND abl_n_hurt > 0 AND abl_n_helped > 0 "
        "ORDER BY abl_n_hurt DESC, layer, unit LIMIT 1", [RUN_ID]).fetchall()[0]
    at = open_page(app, "unit", {"run": RUN_ID, "unit": f"{layer}:{unit}"})
    row = q.unit_row(con, RUN_ID, layer, unit)
    card = next(m.value for m in at.markdown if m.value.startswith("A "))
    assert f"class **{row['pref_class_name']}**" in card and f"{row['abl_loss_delta']:+.4f}" in card
    shown = {m.label: m.value for m in at.metric}
    score = row["specialization_max"]  # null where too few correct examples fire: the card says n/a
    assert shown["Specialization score"] == ("n/a" if score is None or pd.isna(score) else f"{score:.4f}")
    # Pictures come before the evidence tables.
    subheaders = [s.value for s in at.subheader]
    assert subheaders.index("Top examples") < subheaders.index("Which examples need this unit?")
    table = frame(at, "prediction without the unit")
    assert table.kind.iloc[0] == "hurt" and table.kind.tolist().index("helped") > (table.kind == "hurt").sum() - 1
    hurt, helped = table[table.kind == "hurt"], table[table.kind == "helped"]
    assert (hurt["prediction intact"] == hurt["label"]).all()
    assert (hurt["prediction without the unit"] != hurt["label"]).all()
    assert (helped["prediction without the unit"] == helped["label"]).all()
    # Filter by class.
    cls = str(hurt["label"].iloc[0])
    at.selectbox(key="unit-examples-class").select(cls).run()
    only = frame(ok(at), "prediction without the unit")
    assert set(only["label"]) == {cls} and len(only) == len(table[table["label"] == cls])
    # Add to what-if carries the unit.
    links = {pl.proto.label: pl.proto for pl in at.get("page_link")}
    assert f"units={layer}%3A{unit}" in links["Remove it in what-if"].query_string or \
        f"units={layer}:{unit}" in links["Remove it in what-if"].query_string


def test_class_halving_set_is_named_and_removing_it_halves_the_class(app, con, warehouse_root):
    """The named set, removed live on the checkpoint, gives the class accuracy ``class_removal`` recorded."""
    from compute.run.whatif import ablate_units

    rows = q.class_removal(con, RUN_ID).dropna(subset=["n_to_halve"])
    assert len(rows)
    for _, r in rows.head(3).iterrows():
        k = int(r["class"])
        units, found = q.halving_set(con, RUN_ID, r.layer, k)
        assert len(units) == r.n_to_halve and found["n_to_halve"] == r.n_to_halve
        chosen: dict[str, list[int]] = {}
        for layer, unit in zip(units.layer, units.unit):
            chosen.setdefault(layer, []).append(int(unit))
        result = ablate_units(warehouse_root / "runs" / RUN_ID, chosen)
        assert result.ablated.class_accuracy[k] == pytest.approx(r.class_acc_then, abs=1e-9)
        assert result.ablated.class_accuracy[k] <= 0.5 * r.class_acc_intact + 1e-9
    first = rows.iloc[0]
    at = open_page(app, "explorer")
    at.selectbox(key="ex-cr-layer").select(first.layer).run()
    at.selectbox(key="ex-cr-class").select(first.class_name).run()
    units, _ = q.halving_set(con, RUN_ID, first.layer, int(first["class"]))
    named = next(m.value for m in ok(at).markdown if "the fewest units that halve it" in m.value)
    assert all(f"[{layer}:{unit}]" in named for layer, unit in zip(units.layer, units.unit))
    links = {pl.proto.label: pl.proto for pl in at.get("page_link")}
    assert f"units={','.join(f'{a}%3A{b}' for a, b in zip(units.layer, units.unit))}" in \
        links[f"Remove these units in what-if ({len(units)})"].query_string.replace("%2C", ",")
    at.selectbox(key="ex-cr-table-class").select(first.class_name).run()
    assert set(frame(ok(at), "n_to_halve")["class_name"]) == {first.class_name}


def test_explorer_ranks_units_by_one_class(app, con, tables):
    at = open_page(app, "explorer", {"run": RUN_ID, "layers": "fc2", "rank": "abl_loss_delta:7"})
    ranked = frame(at, "abl_loss_delta (class 7)")
    uc = tables["unit_classes"]
    want = uc[(uc.layer == "fc2") & (uc["class"] == 7)].sort_values(["abl_loss_delta", "unit"],
                                                                      ascending=[False, True]).head(50)
    assert ranked.unit.tolist() == want.unit.tolist()
    assert ranked["abl_loss_delta (class 7)"].tolist() == pytest.approx(want.abl_loss_delta.tolist())
    assert at.selectbox(key="ex-rank-class").value == "7"
    at.selectbox(key="ex-rank-metric").select("anomaly").run()
    assert ok(at).query_params["rank"] == "anomaly:7"
    live = uc[(uc.layer == "fc2") & (uc["class"] == 7) & uc.anomaly.notna()]
    assert len(frame(at, "anomaly (class 7)")) == min(50, len(live))
    at = open_page(app, "explorer", {"run": RUN_ID, "rank": "nope:7"})
    assert any("rank=nope:7" in w.value for w in at.warning)
