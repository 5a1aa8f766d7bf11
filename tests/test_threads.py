"""The thread policy shared by every stage (compute/threads.py): the setting, its cap, and that a
run's stages all run under the run's ``threads``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from compute.cli import parser
from compute.run import pipeline
from compute.run.config import RunConfig
from compute.threads import DEFAULT_THREADS, available_cpus, thread_count, torch_threads


def test_torch_threads_sets_caps_and_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == len(os.sched_getaffinity(0)) == available_cpus()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert thread_count(10_000) == available_cpus()
    with pytest.raises(ValueError, match="threads must be 0"):
        thread_count(-1)


def test_threads_option_config_default_and_old_configs() -> None:
    assert parser().parse_args(["run", "--threads", "0"]).threads == 0
    assert parser().parse_args(["run"]).threads == DEFAULT_THREADS == RunConfig().threads
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["run", "--threads", "-2"])
    assert e.value.code == 2
    stored = {k: v for k, v in RunConfig().__dict__.items() if k != "threads"} | {"images": None}
    assert RunConfig.from_dict(stored).threads == DEFAULT_THREADS  # runs saved before the option


def test_every_stage_runs_under_the_runs_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}
    original = dict(pipeline.STAGE_FUNCTIONS)

    def recording(name: str):
        def call(ctx):
            seen[name] = torch.get_num_threads()
            return original[name](ctx)
        return call

    for name in original:
        monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, name, recording(name))
    before = torch.get_num_threads()
    cfg = RunConfig(epochs=1, train_size=200, eval_size=100, images=None, threads=1, run_id="t")
    pipeline.compute_run(cfg, tmp_path)
    assert seen == {name: 1 for name in original}
    assert torch.get_num_threads() == before
