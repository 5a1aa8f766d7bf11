"""The benchmarks still run against the current code: each at a tiny size, checking what it prints.

Timings themselves are not asserted (shared, noisy machines); a benchmark that no longer runs
would otherwise only be noticed by the next person who needs its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> str:
    env = {**os.environ, "NEURON_ATLAS_QUIET": "1"}
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_dashboard_query_benchmark_runs(tmp_path):
    out = run(["benchmarks/dashboard_queries.py", "--units", "2000", "--repeat", "2", "--warehouse", str(tmp_path)])
    assert "2,000 units, 20,000 unit_classes rows, 40,000 train_trace rows" in out
    for query in ("filter: all units", "filter: preset high gradient, low activation", "scatter data: all units",
                  "unit page: metrics, classes, trace, percentiles"):
        line = next(x for x in out.splitlines() if x.startswith(query))
        assert len([float(v) for v in line.split()[-7:-1]]) == 6  # p50/p95 of three connections
    for query in ("filter: custom class conditions, first ask", "rank by one class (abl_loss_delta, class 3)"):
        line = next(x for x in out.splitlines() if x.startswith(query))  # and the SQL path's p50/p95 at the end
        assert len([float(v) for v in line.split()[-9:-3] + line.split()[-2:]]) == 8
    assert "target p95 < 100 ms" in out and "per-class values held in memory" in out
    for page in ("explorer, all units", "explorer, preset high gradient, low activation", "unit page"):
        assert next(x for x in out.splitlines() if x.startswith(page)).split()[-2:]  # cold and rerun seconds


@pytest.mark.slow
def test_atlas_benchmark_prints_stages_ratios_and_the_convergence_figure():
    out = run(["benchmarks/atlas.py", "--dataset", "mnist-5k", "--train-size", "200", "--eval-size", "50",
               "--epochs", "1", "--probe-size", "100", "--ratio-steps", "1", "--figure-steps", "16",
               "--actmax-steps", "2", "--top-k", "1", "--threads", "1"])
    lines = out.splitlines()
    ratios = dict(x.split("=", 1) for x in lines if "=" in x and " " not in x)
    assert set(ratios) == {"after_training_over_training", "after_training_over_training_cpu", "trace_overhead",
                           "actmax_step_over_fwd_bwd", "contention_keep"}
    assert all(float(v) > 0 for v in ratios.values())
    for stage in ("train", "evaluate", "statistics", "ablation", "curves", "class_curves", "images", "publish"):
        line = next(x for x in lines if x.split()[:1] == [stage]).split()
        assert float(line[1]) >= 0 and line[3] == "(CPU" and float(line[4]) >= 0
    assert any(x.strip().startswith("N=  16  change") for x in lines)
    assert "default (early stop)" in out and "load average" in out


@pytest.mark.slow
def test_scale_out_benchmark_prints_paired_speed_ups_the_ceiling_and_equal_results():
    out = run(["benchmarks/scale_out.py", "--eval-size", "4000", "--repeat", "1", "--rounds", "2", "--no-projection"])
    lines = out.splitlines()
    assert sum(x.strip().startswith("round ") for x in lines) == 2
    rows = {name: next(x for x in lines if x.strip().startswith(name))
            for name in ("in-process", "two plain processes", "Ray, 1 worker", "Ray, 2 workers")}
    assert "x (the ceiling)" in rows["two plain processes"]
    for name in ("Ray, 1 worker", "Ray, 2 workers"):
        assert float(rows[name].split()[3]) > 0  # whole seconds (median), after "Ray, N worker(s)"
        assert "% (actors" in rows[name] and "x 2 items" in rows[name]
    assert "every Ray sweep bit-equal to in-process: True" in out and "Starting a local Ray" in out
