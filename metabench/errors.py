"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's config, files or data, reported without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """The composed config cannot run (sizes, incompatible choices, unknown keys)."""


class DataError(UserError):
    """The dataset is missing, malformed or cannot be fetched."""


class CheckpointError(UserError):
    """A checkpoint or results file is missing, truncated or not metabench's."""


class TrainingStopped(UserError):
    """Training stopped early (non-finite loss, Ctrl-C); the last checkpoint is kept."""


class Interrupted(TrainingStopped):
    exit_code = 130


class StorageError(UserError):
    """A file could not be written (disk full, read-only); the previous version is kept."""


class RunDirBusy(UserError):
    """Another live process holds the run directory's lock."""
