"""Callbacks and loggers: the output channel of a training run.

A `Callback` hooks into a run (`aelab.train`, `aelab.resume`, `aelab.train_ensemble`,
`aelab.sweep.run_sweep`): `on_train_start`, `on_step` after every optimisation step,
`on_epoch_end`, which returns the metrics it adds to the epoch's row instead of changing the
row, and `on_train_end`. Every callback sees the same row, the numbers the trainer measured,
read-only, whatever its place in the list; the loop then merges what each one returned, in
the order of the list, before any logger sees the row.

A `Logger` is a callback that writes each epoch's complete row (the trainer's numbers and
every callback's additions) somewhere in the run folder, after the epoch's checkpoint is on
disk, so that what it wrote never runs ahead of the checkpoint a resume starts from.
Loggers are chosen by name from `LOGGERS`; "jsonl" (metrics.jsonl) is on for every run
folder, "tensorboard" (`aelab.callbacks.tensorboard`, event files in RUN/tensorboard/) when asked for;
a logger that needs a package names it in `LOGGER_PACKAGES`. To add one, register a class
that takes no arguments: `LOGGERS["csv"] = CsvLogger`, then `train(config, out, loggers=["csv"])`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from aelab.errors import ConfigError
from aelab.runs import METRICS_FILE, metrics_bytes, write_metrics

if TYPE_CHECKING:
    from aelab.train import TrainResult
    from aelab.train.state import RunState


class Callback:
    """Hooks into a training run; override what you need. `trainer` is the run's
    `aelab.train.RunState` (its model, config, data, validation set, epoch and history). An
    exception stops the run with the last epoch's checkpoint kept, as a kill would; an
    AelabError raised in `on_train_start` of `aelab.train` or `aelab.resume` also marks the
    folder "stopped" (Doctor(strict=True))."""

    def on_train_start(self, trainer: RunState, run_dir: Path | None) -> None:
        """Before the first step; `trainer.history` holds the epochs done before (a resume)."""

    def on_step(self, trainer: RunState, step: int, loss: torch.Tensor) -> None:
        """After every optimisation step. step: the run's step number, counted from 1 over all
        epochs (epoch e, 0-based, holds steps e * steps_per_epoch + 1 ...); loss: the batch's
        mean training loss as a 0-d tensor on the training device, not synchronised: calling
        `float(loss)` or `.item()` on every step stalls an accelerator. A run that diverges
        reports its last steps too. Keep it cheap: it runs between steps."""

    def on_epoch_end(self, trainer: RunState, row: Mapping[str, Any], run_dir: Path | None) -> Mapping[str, Any] | None:
        """After an epoch is evaluated, before its checkpoint is written. row: the epoch's
        metrics as the trainer measured them (read-only). Returns the metrics this callback
        adds to the row (new keys, JSON numbers or strings), or None for none."""
        return None

    def on_train_end(self, trainer: RunState, result: TrainResult) -> None:
        """After the run finished (the best weights restored, the model saved). Called in the
        order of the list, the loggers' after every other callback's, so that a logger records
        the end as the others left it (the doctor's final findings, say)."""


class Logger(Callback):
    """A callback that writes every epoch's complete metrics row into the run folder.

    `log_epoch` is called after the epoch's checkpoint is on disk. (The run's own files are
    written in order on a background thread, `RunState.write_file`; with `flush_first` False a
    logger is called without waiting for that write, for one whose file may run ahead of the
    checkpoint because its `on_train_start` drops what a resume trains again.) On a resumed run
    `on_train_start` sees the rows of the epochs before in `trainer.history`: a logger that
    keeps a file should make it hold exactly those, dropping rows of epochs the killed run
    finished after its last checkpoint (they are trained again)."""

    flush_first: ClassVar[bool] = True

    def log_epoch(self, trainer: RunState, row: Mapping[str, Any], run_dir: Path | None) -> None:
        raise NotImplementedError


class JsonlLogger(Logger):
    """metrics.jsonl: one JSON object per epoch, the whole history rewritten atomically, so a
    kill leaves either the old file or the new one. It is written through the run's writer,
    after the epoch's checkpoint."""

    flush_first = False

    def on_train_start(self, trainer: RunState, run_dir: Path | None) -> None:
        if run_dir is not None and (trainer.history or (run_dir / METRICS_FILE).exists()):
            write_metrics(run_dir, trainer.history)  # a resume: drop rows written after the checkpoint

    def log_epoch(self, trainer: RunState, row: Mapping[str, Any], run_dir: Path | None) -> None:
        if run_dir is not None:
            trainer.write_file(run_dir / METRICS_FILE, metrics_bytes(trainer.history))


def tensorboard_logger() -> Logger:
    """The "tensorboard" logger; `aelab.callbacks.tensorboard` is imported only when a run asks for it."""
    from aelab.callbacks.tensorboard import TensorBoardLogger

    return TensorBoardLogger()


# The loggers a run can be given by name; each entry builds one logger for one run.
LOGGERS: dict[str, Callable[[], Logger]] = {"jsonl": JsonlLogger, "tensorboard": tensorboard_logger}
# The package a logger needs and how to install it, checked before a run writes anything.
LOGGER_PACKAGES: dict[str, tuple[str, str]] = {"tensorboard": ("tensorboard", "pip install 'aelab[tensorboard]'")}
# On for every run folder, whatever `loggers` names.
DEFAULT_LOGGERS = ("jsonl",)


def check_loggers(names: Iterable[str], has_folder: bool = True) -> list[str]:
    """`names`, each once, after checking them: a ConfigError for an unknown name (listing the
    known ones), a logger whose package is missing (with the line that installs it), or for
    names without a folder to write into (has_folder False)."""
    names = list(dict.fromkeys([names] if isinstance(names, str) else names))
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}; valid: {', '.join(LOGGERS)}")
        package, install = LOGGER_PACKAGES.get(name, (None, ""))
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"the {name} logger needs the {package} package: {install}")
    if names and not has_folder:
        raise ConfigError(
            f"loggers ({', '.join(names)}) write into a run folder; give the run an output folder or drop them"
        )
    return names


def build_loggers(names: Iterable[str]) -> list[Logger]:
    """New loggers for one run folder: those of DEFAULT_LOGGERS, then the others in `names`."""
    return [LOGGERS[name]() for name in check_loggers([*DEFAULT_LOGGERS, *names])]


def epoch_extras(
    callbacks: Iterable[Callback], trainer: RunState, row: dict[str, Any], run_dir: Path | None
) -> dict[str, Any]:
    """What the callbacks add to an epoch's row: each sees the same read-only `row` and the
    additions are merged in the callbacks' order. A callback that returns a key the row or an
    earlier callback already has is a ValueError: it would overwrite a measured number."""
    view = MappingProxyType(row)
    extras: dict[str, Any] = {}
    for callback in callbacks:
        added = callback.on_epoch_end(trainer, view, run_dir)
        if added is None:
            continue
        if not isinstance(added, Mapping):
            raise TypeError(
                f"{type(callback).__name__}.on_epoch_end returned {type(added).__name__}; "
                "return a dict of the metrics it adds, or None"
            )
        for key, value in added.items():
            if key in row or key in extras:
                raise ValueError(
                    f"{type(callback).__name__}.on_epoch_end returned {key!r}, which the metrics row already has; "
                    "a callback adds metrics under new names"
                )
            extras[key] = value
    return extras


def step_hook(callbacks: Iterable[Callback], trainer: RunState) -> Callable[[int, torch.Tensor], None] | None:
    """One function that calls every callback's `on_step`, or None when none overrides it (the
    training loop then pays nothing per step)."""
    stepping = [callback for callback in callbacks if type(callback).on_step is not Callback.on_step]
    if not stepping:
        return None

    def on_step(step: int, loss: torch.Tensor) -> None:
        for callback in stepping:
            callback.on_step(trainer, step, loss)

    return on_step
