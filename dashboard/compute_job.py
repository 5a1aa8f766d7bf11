"""Run the compute step as a subprocess and follow its progress, so the dashboard never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from compute.progress import parse_line
from compute.run.stages import STAGE_NAMES

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_ID = "demo-lenet5-mnist5k"


def default_command(warehouse: str, extra: list[str] | None = None) -> list[str]:
    """The embedded default run: LeNet-5 on the bundled MNIST digits."""
    return [sys.executable, "-m", "compute", "run", "--model", "lenet5", "--dataset", "mnist-5k",
            "--run-id", DEFAULT_RUN_ID, "--warehouse", warehouse, *(extra or [])]


def run_with_progress(cmd: list[str], on_progress: Callable[[float, str], None]) -> tuple[int, str]:
    """Run ``cmd``, calling ``on_progress(fraction of the current stage, text)`` per progress line.

    Stages are numbered from the declared list (``compute.run.stages``): "stage 3 of 7: statistics",
    followed by the stage's own bar (e.g. the images stage's sub-steps). Returns the exit code and the last lines of output that are not
    progress lines (the error message on failure, the summary on success).
    """
    env = {**os.environ, "NEURON_ATLAS_PROGRESS": "lines", "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=20)
    current = ""
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = parse_line(line)
            if record is None:
                if line.strip():
                    tail.append(line.rstrip())
                continue
            if record.get("start") and record["stage"] in STAGE_NAMES:
                current = record["stage"]
                on_progress(0.0, _label(current, ""))
                continue
            n, total = record["n"], record["total"] or 1
            on_progress(min(1.0, n / total), _label(current, f"{record['stage']} {n}/{total}"))
        code = proc.wait()
    return code, "\n".join(tail)


def _label(stage: str, detail: str) -> str:
    """"stage 3 of 7: statistics: <detail>" for a declared stage (just the detail before the first)."""
    if not stage:
        return detail
    head = f"stage {STAGE_NAMES.index(stage) + 1} of {len(STAGE_NAMES)}: {stage}"
    return f"{head}: {detail}" if detail else head
