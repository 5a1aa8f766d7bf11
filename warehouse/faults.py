"""Deliberate crashes at named points, for the fault-injection tests.

Setting ``NEURON_ATLAS_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that
point, exactly as a power cut or an OOM kill would stop it: no cleanup, no exception handlers.
Unset (always, outside tests), ``crash_point`` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "NEURON_ATLAS_CRASH_AT"


def crash_point(point: str) -> None:
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)
