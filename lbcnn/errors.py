"""User-facing errors: the CLI prints these as one line, never a traceback."""


class LbcnnError(Exception):
    """A problem the user can fix (bad input, bad config, missing data)."""


class DataError(LbcnnError):
    """A dataset is missing, corrupt, or inconsistent."""


class ConfigError(LbcnnError):
    """Hyperparameters or options that cannot work together."""


class MemoryPlanError(LbcnnError):
    """A planned allocation would not fit in memory."""


class Interrupted(LbcnnError):
    """Ctrl-C during a run whose finished work is on disk and can be resumed."""
