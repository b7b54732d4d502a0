"""The few kinds of error locodiff raises, with messages that name the offending value.

Every one of them is a ``LocodiffError``: the CLI turns it into one line and exit code 2.

- ``InputError``: a value handed to locodiff is wrong (an argument, a tensor's shape, a scene
  request, a location outside the image); ``ConfigError`` is the kind for config options;
- ``DataError``: a file locodiff wrote earlier is missing, partial or corrupted;
- ``CheckpointError``: a run folder, checkpoint or model folder is missing, corrupted or does
  not match the config;
- ``TrainingDiverged``: the loss became NaN or infinite;
- ``StudyError``: a stage could not finish (a worker process died).
"""


class LocodiffError(Exception):
    """Base class for every error locodiff raises on bad input or a failed stage."""


class InputError(LocodiffError, ValueError):
    """A value handed to locodiff (argument, tensor, request) is missing, inconsistent or out of range."""


class ConfigError(InputError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(LocodiffError):
    """A cached data set or saved result is missing, partial or corrupted."""


class CheckpointError(LocodiffError):
    """A checkpoint, run directory or model folder is missing, corrupted or does not match the config."""


class TrainingDiverged(LocodiffError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StudyError(LocodiffError, RuntimeError):
    """A stage could not finish (e.g. a worker process died); finished work is kept."""
