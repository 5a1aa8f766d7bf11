"""User-facing errors of the compute step.

Every error a person can cause (bad flags, missing data, diverging training) is raised as an
``AtlasError`` subclass with a message that names the problem and the fix; the CLI prints the
message without a traceback and exits non-zero.
"""


class AtlasError(Exception):
    """An error caused by input or environment, explained in its message."""


class DataError(AtlasError):
    """A dataset could not be found, read or validated."""


class ConfigError(AtlasError):
    """A model, layer or option name or value is not valid."""


class TrainingError(AtlasError):
    """Training diverged (NaN/inf loss) or produced an unusable model."""
