"""Deliberate crashes at named points, for the fault-injection tests.

Setting ``NEURON_ATLAS_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that
point, exactly as a power cut or an OOM kill would stop it: no cleanup, no exception handlers.
With ``NEURON_ATLAS_CRASH_SIGNAL=INT`` it sends itself SIGINT instead (Ctrl-C: Python raises
``KeyboardInterrupt`` there, and handlers and clean-ups run). ``NEURON_ATLAS_CRASH_LOG=<file>``
appends the name of every point reached, so a test can enumerate them from one uninterrupted run.
Unset (always, outside tests), ``crash_point`` does nothing.

``NEURON_ATLAS_CRASH_ONCE=<point>:<marker file>`` does the same at ``crash_once(point)`` but only
while the marker file does not exist (it is created first): a worker that dies once and whose retry
then succeeds. With ``NEURON_ATLAS_CRASH_TIMES=<n>`` it dies the first n times (markers ``<marker>``,
``<marker>.2``, ... ``<marker>.n``): a worker whose restarts are all spent.

The points and what an interruption at each leaves are listed in docs/storage.md.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "NEURON_ATLAS_CRASH_AT"
SIGNAL_VAR = "NEURON_ATLAS_CRASH_SIGNAL"
LOG_VAR = "NEURON_ATLAS_CRASH_LOG"
ONCE_VAR = "NEURON_ATLAS_CRASH_ONCE"
TIMES_VAR = "NEURON_ATLAS_CRASH_TIMES"


def crash_point(point: str) -> None:
    log = os.environ.get(LOG_VAR)
    if log:
        with open(log, "a") as f:
            f.write(point + "\n")
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGINT if os.environ.get(SIGNAL_VAR) == "INT" else signal.SIGKILL)


def crash_once(point: str) -> None:
    spec = os.environ.get(ONCE_VAR)
    if not spec or spec.split(":", 1)[0] != point:
        return
    marker = spec.split(":", 1)[1]
    for k in range(1, int(os.environ.get(TIMES_VAR, "1")) + 1):
        try:
            os.close(os.open(marker if k == 1 else f"{marker}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        os.kill(os.getpid(), signal.SIGKILL)
