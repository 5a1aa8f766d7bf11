"""The one error root of Neuron Atlas.

Every error a person can cause (bad flags or URL values, missing or damaged data, a query the
sandbox refuses, diverging training) is an ``AtlasError`` whose message is one paragraph naming the
problem and the fix. The CLIs print it and exit with code 2; the dashboard shows it in the page.
It lives in ``warehouse`` (the lowest package) so that compute and dashboard errors share it.
"""


class AtlasError(Exception):
    """An error caused by input or environment, explained in its message."""

