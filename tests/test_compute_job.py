"""The dashboard's compute button runs the compute step as a subprocess and follows its progress lines."""

from __future__ import annotations


from compute.progress import parse_line
from compute.run.stages import STAGE_NAMES
from dashboard.compute_job import DEFAULT_RUN_ID, default_command, run_with_progress
from warehouse import list_runs


def test_default_run_subprocess_reports_progress_and_publishes(tmp_path):
    seen: list[tuple[float, str]] = []
    cmd = default_command(str(tmp_path), ["--epochs", "1", "--train-size", "300", "--eval-size", "100", "--no-images"])
    code, output = run_with_progress(cmd, lambda frac, text: seen.append((frac, text)))
    assert code == 0, output
    assert f"published run {DEFAULT_RUN_ID}" in output
    assert [r.run_id for r in list_runs(tmp_path) if r.ok] == [DEFAULT_RUN_ID]
    # Stages are numbered from the declared list, in order, each announced once.
    heads = [text for _, text in seen if text.count(": ") == 1 and text.startswith("stage ")]
    assert heads == [f"stage {i + 1} of {len(STAGE_NAMES)}: {name}" for i, name in enumerate(STAGE_NAMES)]
    by_bar: dict[str, list[float]] = {}
    for frac, text in seen:
        if text.count(": ") == 2:
            by_bar.setdefault(text.split(": ", 2)[2].rsplit(" ", 1)[0], []).append(frac)
    assert {"training", "statistics", "ablation"} <= set(by_bar)
    for bar_name, fracs in by_bar.items():
        assert fracs == sorted(fracs) and fracs[-1] == 1.0, bar_name

def test_failure_returns_the_error_message(tmp_path):
    cmd = default_command(str(tmp_path), ["--dataset", "no-such-dataset"])
    code, output = run_with_progress(cmd, lambda frac, text: None)
    assert code == 2 and "no-such-dataset" in output and list_runs(tmp_path) == []


def test_parse_line():
    assert parse_line('PROGRESS {"stage": "training", "n": 3, "total": 8}\n') == {"stage": "training", "n": 3, "total": 8}
    assert parse_line("published run x") is None and parse_line("PROGRESS {broken") is None
