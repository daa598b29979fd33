"""`train` and `resume`: one run, from a config or from its folder.

`train(config, out)` is the whole job behind `aelab train`: it claims the run folder, loads the
data, chooses the thread count, builds the run's state and trains it with `fit`.
`resume(run_dir)` continues a killed run from its last checkpoint, bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

from aelab.callbacks import Callback, build_loggers, check_loggers
from aelab.config import RunConfig
from aelab.data import ImageData, data_for_run, data_for_training, load_dataset
from aelab.data.datasets import ImagesLike
from aelab.errors import AelabError, DivergenceError, RunFolderError
from aelab.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    check_free_space,
    claim_run_dir,
    describe_entries,
    foreign_entries,
    load_config,
    load_run,
    read_status,
    read_threads,
    refuse_sweep_folder,
    remove_temporaries,
    run_lock,
    save_config,
    write_status,
)
from aelab.train.checkpoint import load_checkpoint
from aelab.train.loop import Member, TrainResult, fit
from aelab.train.state import RunState, check_config
from aelab.train.steps import make_step
from aelab.train.threads import thread_count, torch_threads

log = logging.getLogger(__name__)

# report.html (its figures as PNG: about 0.3 MB for one run) and findings.json, as `train` writes them.
REPORT_BYTES = 1 << 20


def train(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    data: ImagesLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Iterable[Callback] = (),
    loggers: Iterable[str] = (),
    doctor: bool = True,
    report: bool = True,
) -> TrainResult:
    """Train one autoencoder. With `out`, write a complete run folder there (see `aelab.runs`),
    the same files `aelab train` writes.

    data: the images to train on instead of loading `config.data`'s dataset: an `ImageData`, or
        a tensor / numpy array of images (N, H, W), (N, C, H, W) or (N, D), uint8 (0..255) or
        float (0..1), split as dataset "array" splits a file (the last data.val_fraction is
        validation; data.train_limit, val_limit and scale apply). The run folder's config.yaml
        then records data.name "in-memory" and the images' data.fingerprint; later calls on the
        folder take the same images as `data=` (`resume`, `aelab.doctor.recheck_run`,
        `aelab.report.render_report`). An ImageData from `load_dataset(config.data)` is recorded
        as that dataset.
    callbacks: `aelab.Callback`s called during the run, in order (see `aelab.callbacks`).
    loggers: with `out`, the names of loggers in `aelab.LOGGERS` that write every epoch's
        metrics row into the folder besides metrics.jsonl ("jsonl"), which every run folder has.
    doctor: with `out`, run the doctor (`aelab.doctor.Doctor`, unless `callbacks` holds one),
        which keeps findings.json in the folder and adds its doctor_* numbers to each metrics
        row; its findings go to `result.extras["findings"]`.
    report: with `out`, write report.html when the run finishes; `result.extras["report"]` is
        its path.
    Returns the trained model (the best epoch's weights when early stopping is on) and its
    per-epoch metrics history."""
    check_config(config, data_keys=data is None)
    loggers = check_loggers(loggers, has_folder=out is not None)
    data_config, data = data_for_training(config.data, data)
    config = dataclasses.replace(config, data=data_config)
    # The folder's lock is taken before `overwrite` clears it and held for the whole run.
    with claim_run_dir(out, overwrite=overwrite) if out is not None else contextlib.nullcontext() as run_dir:
        if data is None:
            data = load_dataset(config.data)
        warn_of_large_batches(config, data)
        with torch_threads(thread_count(config, data)):
            state = RunState(config, data)
            if run_dir is not None:
                check_free_space(run_dir, state.estimate_run_bytes(REPORT_BYTES))
                save_config(run_dir, config)
                write_status(run_dir, "running", epochs_done=0, threads=state.threads)
            callbacks = run_callbacks(callbacks, run_dir, loggers, doctor=doctor, report=report)
            return train_alone(state, run_dir, progress, callbacks)


def run_callbacks(
    callbacks: Iterable[Callback],
    run_dir: Path | None,
    loggers: Iterable[str] = (),
    *,
    doctor: bool = False,
    report: bool = False,
) -> list[Callback]:
    """The callbacks of one run: with a run folder its loggers first (metrics.jsonl and those
    named in `loggers`: on a resume they drop the rows of lost epochs before anything else
    runs), then the user's, then the doctor (unless one is among them) and the report
    writer, which comes last so that the report shows the final findings."""
    callbacks = list(callbacks)
    if run_dir is None:
        return callbacks
    # Imported here: the doctor and the report are built on top of training.
    from aelab.doctor import Doctor
    from aelab.report import ReportWriter

    if doctor and not any(isinstance(callback, Doctor) for callback in callbacks):
        callbacks.append(Doctor())
    if report:
        callbacks.append(ReportWriter())
    return [*build_loggers(loggers), *callbacks]


def resume(
    run_dir: str | Path,
    *,
    data: ImagesLike | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback] = (),
    loggers: Iterable[str] = (),
) -> TrainResult:
    """Continue a run folder from its last checkpoint and finish it, as `train` would have.

    Works on a folder killed at any instant: from the last epoch's checkpoint (weights,
    optimizer state, data order and binarisation generators, early-stopping state, history),
    or from scratch with the folder's config.yaml when no checkpoint was written yet. On CPU
    the final weights are bit-identical to a run that was never interrupted. A finished run is
    returned as it is, without training; a diverged run raises its DivergenceError again (it
    would diverge the same way). `data` skips reading the dataset (it must be config.data's);
    a run trained on images passed in memory needs them again (the same images: their
    fingerprint is checked). `result.extras["resumed_from_epoch"]` says where training picked up.
    callbacks and loggers as for `train` (no doctor and no report: `aelab.doctor.recheck_run`
    and `aelab.report.render_report` look at the finished folder).
    Raises RunFolderError when the folder has no usable config or its checkpoint does not match.
    """
    run_dir = Path(run_dir)
    loggers = check_loggers(loggers)
    if not run_dir.is_dir():
        raise RunFolderError(
            template="{folder} is not a run folder; pass the folder that {train} wrote", folder=run_dir
        )
    refuse_sweep_folder(run_dir)
    status = read_status(run_dir)
    call = f"aelab.resume({str(run_dir)!r}, data=images)"
    if status.get("state") == "finished":
        run = load_run(run_dir)
        if data is not None:
            data_for_run(run.config.data, data, str(run_dir), call)  # refuses images of another run
        best_epoch = int(status.get("best_epoch", len(run.history)))
        stopped_early = bool(status.get("stopped_early", False))
        extras = {"resumed_from_epoch": len(run.history)}
        return TrainResult(run.model, run.history, run_dir, best_epoch, stopped_early, extras)
    if status.get("state") == "diverged":
        reason = status.get("message") or "its training loss diverged"
        raise DivergenceError(f"{run_dir} diverged before and would again ({reason})")
    if not (run_dir / CONFIG_FILE).exists():
        foreign = foreign_entries(run_dir)
        if foreign:
            raise RunFolderError(
                template="{folder} is not a run folder (no {config_file}; it holds {entries}, which "
                "aelab did not write); pass the folder that {train} wrote",
                folder=run_dir,
                config_file=CONFIG_FILE,
                entries=describe_entries(foreign),
            )
        raise RunFolderError(
            template="{folder} has no {config_file}: it was stopped before training started, or is not a run "
            "folder; start it again with {retrain:{folder}}",
            folder=run_dir,
            config_file=CONFIG_FILE,
        )
    try:
        config = load_config(run_dir)
        check_config(config, data_keys=False)
    except AelabError as error:
        raise RunFolderError(
            f"{run_dir / CONFIG_FILE} does not validate ({error}); fix it or start a new run"
        ) from None
    with run_lock(run_dir):
        remove_temporaries(run_dir)  # torn writes of the killed process; the files they replace are whole
        data = data_for_run(config.data, data, str(run_dir), call)
        warn_of_large_batches(config, data)
        # The thread count the run recorded, whatever the load or the default says now: torch
        # rounds differently on another count, and the resume would no longer be bit-identical.
        # A folder from before aelab recorded it gets the config's choice.
        threads = read_threads(run_dir)
        with torch_threads(threads if threads is not None else thread_count(config, data)):
            state = RunState(config, data)
            if (run_dir / CHECKPOINT_FILE).exists():
                load_checkpoint(state, run_dir / CHECKPOINT_FILE)
            else:
                check_free_space(run_dir, state.estimate_run_bytes(REPORT_BYTES))
            resumed_from = state.epoch
            log.info(
                "resuming %s after epoch %d of %d on %d threads",
                run_dir, resumed_from, config.train.epochs, state.threads,
            )  # fmt: skip
            write_status(run_dir, "running", epochs_done=state.epoch, threads=state.threads)
            result = train_alone(state, run_dir, progress, run_callbacks(callbacks, run_dir, loggers))
    result.extras["resumed_from_epoch"] = resumed_from
    return result


def warn_of_large_batches(config: RunConfig, data: ImageData) -> None:
    """One warning line when train.batch_size is more than the training images: training goes
    on, with one step per epoch on all of them."""
    count = data.train.shape[0]
    if config.train.batch_size > count:
        log.warning(
            "train.batch_size %d is more than the %d training images: each epoch is one step on all %d",
            config.train.batch_size, count, count,
        )  # fmt: skip


def train_alone(state: RunState, run_dir: Path | None, progress: bool, callbacks: list[Callback]) -> TrainResult:
    """`fit` one run with its own step; a divergence is raised (after it is recorded)."""
    (member,) = fit([Member(state, run_dir, callbacks)], make_step([state]), progress=progress)
    if member.error is not None:
        raise member.error
    assert member.result is not None
    return member.result
