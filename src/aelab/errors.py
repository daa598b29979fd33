"""Errors a user can cause. The CLI prints them as one line and exits 2.

Anything else that escapes is our bug and keeps its traceback.

An error that tells the user what to change names it in the Python API's terms: a config key
("train.engine: auto"), a parameter ("`overwrite=True`") or a call ("`aelab.resume('runs/x')`").
Such a message is a `template` whose fields name those settings, so that the command line can
say the same in its own terms (its flags and commands, `aelab.cli.COMMAND_WORDS`):

    raise ConfigError(template="use {train.engine:auto}")          # "use train.engine: auto"
    raise RunFolderError(template="{path} exists; choose another {out}", path=run_dir)
    raise RunFolderError(template="continue it with {resume:{folder}}", folder=run_dir)

A field is a value given by keyword (a path, any text: inserted as it is, never parsed), or a
setting: a config key "section.key" or a name of PYTHON_WORDS, with its value, if any, after a
colon (itself possibly a keyword field, as `{folder}` above).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aelab.findings import Finding

# How a message names a setting: (config key or PYTHON_WORDS name, value or None) -> words.
Words = Callable[[str, "str | None"], str]

# The Python API's words for the settings that are not config keys; {value!r} is the
# setting's value (for a call: the folder it takes).
PYTHON_WORDS = {
    "out": "`out`",
    "overwrite": "`overwrite=True`",
    "extend": "`extend=True`",
    "grid": "the grid",
    "train": "`aelab.train(config, out)`",
    "retrain": "`aelab.train(config, {value!r}, overwrite=True)`",
    "resume": "`aelab.resume({value!r})`",
    "run_sweep": "`aelab.sweep.run_sweep(spec, {value!r})`",
    "resume_sweep": "`aelab.sweep.run_sweep(spec, {value!r})` with the spec it was made with",
}


def python_words(name: str, value: str | None = None) -> str:
    """A setting as the Python API names it: "train.engine: auto", "`overwrite=True`"."""
    if name in PYTHON_WORDS:
        return PYTHON_WORDS[name].format(value=value)
    if "." not in name:
        raise KeyError(f"{name!r} is neither a config key nor a name of PYTHON_WORDS")  # a typo in a template
    return name if value is None else f"{name}: {value}"


class _Setting:
    def __init__(self, name: str) -> None:
        self.name = name


class _Template(string.Formatter):
    """str.format where a field that is not a keyword value names a setting, said in `words`."""

    def __init__(self, words: Words) -> None:
        self.words = words

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        # The whole name, dots included: "train.engine" is a config key, not an attribute.
        return (kwargs[field_name] if field_name in kwargs else _Setting(field_name)), field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, _Setting):
            return self.words(value.name, format_spec or None)
        return super().format_field(value, format_spec)


class AelabError(Exception):
    """A mistake the user can fix: the message says what was wrong and what to do.

    Either a plain `message`, or a `template` with its keyword `values` (see the module's
    docstring); str(error) then names settings in the Python API's terms, and
    `render(words)` in others."""

    def __init__(self, message: str = "", *, template: str | None = None, **values: Any) -> None:
        self.template = template
        self.values = values
        super().__init__(message if template is None else _Template(python_words).format(template, **values))

    def render(self, words: Words) -> str:
        """The message with its settings named by `words` (the command line's: its flags)."""
        if self.template is None:
            return str(self)
        return _Template(words).format(self.template, **self.values)


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
