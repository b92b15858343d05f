"""Every error a user of mindppt can cause or meet, in one place (no MindSpore import).

The tools print a :data:`USER_ERRORS` instance as one ``error: ...`` line and exit with status 2; the
message names the file, option or value at fault and what was expected.
"""

__all__ = ["ConfigError", "DeviceUnavailableError", "DatasetError", "DatasetWarning",
           "CheckpointError", "CheckpointSaveError", "ExportError", "OutputError", "TrainingError",
           "TrainingInterrupted", "USER_ERRORS"]


class ConfigError(ValueError):
    """A configuration file or value is invalid (the message says which file, key and value)."""


class DeviceUnavailableError(ValueError):
    """The requested backend cannot be loaded by this MindSpore installation."""


class DatasetError(ValueError):
    """The dataset layout or its files cannot be used (the message names the path and the expected layout)."""


class DatasetWarning(UserWarning):
    """Files skipped or converted while scanning or reading a dataset."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into.

    For a mismatch, ``missing``, ``unexpected`` and ``mismatched`` hold the complete name lists (the
    message shows the first 20 of each).
    """

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class ExportError(ValueError):
    """A model cannot be exported in the requested format (the message names the op and why)."""


class OutputError(OSError):
    """An output file cannot be written where asked: its directory cannot be created or written to, or the
    path is a directory (the message names the path and why; ``errno`` is the cause's, if any)."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. disk full); the message names the file, the cause and
    the previous checkpoint, which is intact."""


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN/inf); the message names the step and the
    last good checkpoint."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a resumable checkpoint was written."""

    def __init__(self, message, signum, checkpoint):
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint


USER_ERRORS = (ConfigError, DeviceUnavailableError, DatasetError, CheckpointError, ExportError,
               OutputError)
