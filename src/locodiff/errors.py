"""Exceptions with messages that name the offending value and what was expected."""


class LocodiffError(Exception):
    """Base class for every error locodiff raises on bad input."""


class ConfigError(LocodiffError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class SceneError(LocodiffError, ValueError):
    """A scene or scene-sampling request cannot be satisfied."""


class CheckpointError(LocodiffError):
    """A checkpoint or run directory is missing, corrupted or does not match the config."""


class DataError(LocodiffError):
    """A cached data set is missing, partial or corrupted."""


class TrainingDiverged(LocodiffError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
