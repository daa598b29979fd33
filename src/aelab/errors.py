"""Errors a user can cause. The CLI prints them as one line and exits 2.

Anything else that escapes is our bug and keeps its traceback.
"""


class AelabError(Exception):
    """A mistake the user can fix: the message says what was wrong and what to do."""


class ConfigError(AelabError):
    """A configuration value or key is invalid."""


class DataError(AelabError):
    """A dataset could not be read, or its contents are unusable."""


class RunFolderError(AelabError):
    """A run folder is missing, incomplete, mismatched or would be overwritten."""


class DivergenceError(AelabError):
    """Training produced NaN or Inf; the last good checkpoint was kept."""
