"""Errors a user can cause. The CLI prints them as one line and exits 2.

Anything else that escapes is our bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aelab.findings import Finding


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


class SetupFindingsError(AelabError):
    """The doctor's set-up checks found error-level problems and a strict run stopped before
    its first step; `.findings` lists them."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings
