"""Deliberate crashes at named points, for the fault-injection tests.

Setting ``NEURON_ATLAS_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that
point, exactly as a power cut or an OOM kill would stop it: no cleanup, no exception handlers.
Unset (always, outside tests), ``crash_point`` does nothing.

``NEURON_ATLAS_CRASH_ONCE=<point>:<marker file>`` does the same at ``crash_once(point)`` but only
while the marker file does not exist (it is created first): a worker that dies once and whose retry
then succeeds.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "NEURON_ATLAS_CRASH_AT"
ONCE_VAR = "NEURON_ATLAS_CRASH_ONCE"


def crash_point(point: str) -> None:
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_once(point: str) -> None:
    spec = os.environ.get(ONCE_VAR)
    if not spec or spec.split(":", 1)[0] != point:
        return
    try:
        os.close(os.open(spec.split(":", 1)[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
