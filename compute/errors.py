"""User-facing errors of the compute step: ``AtlasError`` subclasses (see ``warehouse.errors``)."""

from warehouse.errors import AtlasError

__all__ = ["AtlasError", "DataError", "ConfigError", "TrainingError", "WorkerError"]


class DataError(AtlasError):
    """A dataset could not be found, read or validated."""


class ConfigError(AtlasError):
    """A model, layer or option name or value is not valid."""


class TrainingError(AtlasError):
    """Training diverged (NaN/inf loss) or produced an unusable model."""


class WorkerError(AtlasError):
    """Distributed workers died for good (their restarts spent); finished work items are kept for --resume."""
