"""Train several runs at once: dense runs with the same layer sizes share batched matmuls.

`train_ensemble(configs, outs)` is a drop-in for calling `train(config, out, doctor=False,
report=False)` on each pair (pass a doctor through `make_callbacks`): it returns the same
`TrainResult`s in the same order and writes the same run folders. Runs that agree on every
"shared" field of `aelab.train.steps.STACKING` (data, layer sizes, batch size, epochs, device,
threads) form a group whose weights are stacked
(M, out, in), so one `torch.baddbmm` serves every member; each member still has its own
hidden, code and output activation, loss, initialisation, optimizer (type, settings and
state), learning rate and data order (its own seed), so its numbers equal those of the same
run trained alone, to float tolerance. Everything else (conv models, early stopping, the
autograd engine) falls back to `train()`.

How: each member is an ordinary `RunState` (its model, optimizer, generators, validation and
checkpoints are the solo ones), trained by the one loop (`aelab.train.loop.fit`) with a
`StackedStep` (`aelab.train.steps`); members on the same validation targets share one
`Validation`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from aelab.callbacks import Callback, check_loggers
from aelab.config import RunConfig
from aelab.data import ImageData, load_dataset
from aelab.errors import DivergenceError
from aelab.evaluate.validation import Validation
from aelab.runs import check_free_space, claim_run_dir, load_run, save_config, write_status
from aelab.train.loop import Member, TrainResult, fit
from aelab.train.run import REPORT_BYTES, run_callbacks, train, warn_of_large_batches
from aelab.train.state import RunState, check_config, resolve_device
from aelab.train.steps import STACKING, StackedStep, config_fields, config_step_problem, stack_order
from aelab.train.threads import thread_count, torch_threads

log = logging.getLogger(__name__)


def group_key(config: RunConfig) -> str | None:
    """Runs with equal keys can train stacked: the values of their "shared" fields
    (`aelab.train.steps.STACKING`). None for a run that trains alone: one the fast step cannot
    train, or with a non-default value of an "alone" field (early stopping)."""
    if config_step_problem(config) is not None:
        return None
    shared = {}
    for key in config_fields():
        role = STACKING[key]
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if role == "alone" and value != getattr(type(getattr(config, section))(), name):
            return None
        if role == "shared":
            shared[key] = value
    return json.dumps(shared, sort_keys=True, default=list)


def train_ensemble(
    configs: Sequence[RunConfig],
    outs: Sequence[str | Path | None] | None = None,
    *,
    data: ImageData | None = None,
    progress: bool = True,
    overwrite: bool = False,
    share_batches: bool = False,
    callbacks: Iterable[Callback] = (),
    make_callbacks: Callable[[], Iterable[Callback]] | None = None,
    loggers: Iterable[str] = (),
) -> list[TrainResult]:
    """Train every config (into `outs[i]` when given), stacking the runs that can share
    matmuls. Returns one `TrainResult` per config, in order.

    A run that diverges does not stop the others: its folder is marked diverged with the last
    good checkpoint kept (as `train` does), and its result carries the message in
    `extras["diverged"]` instead of raising.

    share_batches: members of a group see the same batches (the first member's data order)
        instead of each following its own seed; faster input handling, different numbers.
    data: the images for every config (else each distinct data config is loaded once).
    callbacks: stateless callbacks shared by every run; make_callbacks: called once per run for
        callbacks that keep per-run state (such as `aelab.doctor.Doctor`); stacked runs call
        every member's callbacks as `train` would, `on_step` included.
    loggers: names in `aelab.LOGGERS`, one of each built for every run folder (besides
        metrics.jsonl, which every run folder has)."""
    configs = list(configs)
    outs = list(outs) if outs is not None else [None] * len(configs)
    if len(outs) != len(configs):
        raise ValueError(f"train_ensemble got {len(configs)} configs but {len(outs)} output folders")
    loggers = check_loggers(loggers, has_folder=all(out is not None for out in outs))
    shared_callbacks = list(callbacks)

    def callbacks_for_run() -> list[Callback]:
        return shared_callbacks + (list(make_callbacks()) if make_callbacks is not None else [])

    for config in configs:
        check_config(config, data_keys=data is None)
    groups: dict[str, list[int]] = {}
    alone: list[int] = []
    for index, config in enumerate(configs):
        key = group_key(config)
        if key is None:
            alone.append(index)
        else:
            groups.setdefault(key, []).append(index)
    loaded: dict[str, ImageData] = {}

    def data_for(config: RunConfig) -> ImageData:
        if data is not None:
            return data
        key = json.dumps(config.data.__dict__, sort_keys=True)
        if key not in loaded:
            loaded[key] = load_dataset(config.data)
        return loaded[key]

    results: list[TrainResult | None] = [None] * len(configs)
    for indices in groups.values():
        if len(indices) == 1:
            alone.append(indices[0])
            continue
        members = [configs[i] for i in indices]
        group_results = _train_group(
            members,
            [outs[i] for i in indices],
            data_for(members[0]),
            progress,
            overwrite,
            share_batches,
            [callbacks_for_run() for _ in indices],
            loggers,
        )
        for index, result in zip(indices, group_results, strict=True):
            results[index] = result
    for index in sorted(alone):
        try:
            results[index] = train(
                configs[index], outs[index], data=data_for(configs[index]), progress=progress, overwrite=overwrite,
                callbacks=callbacks_for_run(), loggers=loggers, doctor=False, report=False,
            )  # fmt: skip
        except DivergenceError as error:
            results[index] = _diverged_result(outs[index], error)
    return [result for result in results if result is not None]


def _diverged_result(out: str | Path | None, error: DivergenceError | None) -> TrainResult:
    """The result standing for a run that diverged (its folder already says so): the model and
    history of its last good checkpoint when it has a folder, else no model."""
    extras = {"diverged": str(error)}
    if out is None:
        return TrainResult(None, [], None, 0, extras=extras)  # type: ignore[arg-type]
    run = load_run(out)  # an unfinished run loads from its last checkpoint
    losses = [row["val_loss"] for row in run.history]
    best_epoch = losses.index(min(losses)) + 1 if losses else 0
    return TrainResult(run.model, run.history, Path(out), best_epoch, extras=extras)


def _train_group(
    configs: list[RunConfig],
    outs: list[str | Path | None],
    data: ImageData,
    progress: bool,
    overwrite: bool,
    share_batches: bool,
    callbacks: list[list[Callback]],
    loggers: list[str],
) -> list[TrainResult]:
    first = configs[0]
    warn_of_large_batches(first, data)  # the members share batch size and data (group_key)
    # One count for the whole stacked step, recorded in every member's folder: a member
    # resumed on its own (`aelab.train.resume`) continues on the count it trained with.
    threads = thread_count(first, data, members=len(configs))
    with contextlib.ExitStack() as locks:  # each folder locked before it is checked or cleared, as in `train`
        run_dirs = [
            locks.enter_context(claim_run_dir(out, overwrite=overwrite)) if out is not None else None for out in outs
        ]
        locks.enter_context(torch_threads(threads))
        callbacks = [run_callbacks(c, run_dir, loggers) for c, run_dir in zip(callbacks, run_dirs, strict=True)]
        return _train_locked_group(configs, run_dirs, data, progress, share_batches, callbacks)


def _train_locked_group(
    configs: list[RunConfig],
    run_dirs: list[Path | None],
    data: ImageData,
    progress: bool,
    share_batches: bool,
    callbacks: list[list[Callback]],
) -> list[TrainResult]:
    validations: dict[str, Validation] = {}

    def validation_for(config: RunConfig) -> Validation | None:
        # Members on the same data share one validation set; binarised targets are drawn with
        # each run's own seed, so those members build their own.
        if config.data.binarize != "none":
            return None
        key = json.dumps(config.data.__dict__, sort_keys=True, default=list)
        if key not in validations:
            device = resolve_device(config.train.device)
            validations[key] = Validation.build(data, config.data, config.train.seed + 2, device)
        return validations[key]

    states = [RunState(config, data, validation=validation_for(config)) for config in configs]
    members = [Member(state, run_dir, c) for state, run_dir, c in zip(states, run_dirs, callbacks, strict=True)]
    for member in members:
        if member.run_dir is not None:
            check_free_space(member.run_dir, member.state.estimate_run_bytes(REPORT_BYTES))
            save_config(member.run_dir, member.state.config)
            write_status(member.run_dir, "running", epochs_done=0, threads=member.state.threads)
    step = StackedStep([states[m] for m in stack_order(states)])
    log.info("training %d runs stacked", len(states))
    fit(members, step, progress=progress, share_batches=share_batches)
    return [
        member.result if member.result is not None else _diverged_result(member.run_dir, member.error)
        for member in members
    ]
