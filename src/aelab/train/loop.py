"""The training loop: `fit` trains one run or several stacked ones, epoch by epoch, with one
step object (`aelab.train.steps`) whatever the engine.

Each epoch: every member's data order drawn from its own generator, the batches fed to the
step, `on_step` hooks after each step, the divergence guard on the step losses (every step on
a CPU, a few times per epoch on an accelerator) and on the weights; then for each member still
training: its evaluation (`RunState.record_epoch`), the callbacks' additions to its row, its
log line, checkpoint, loggers and status, in that order, so metrics.jsonl never runs ahead of
the checkpoint a resume starts from. A member that diverges is marked so in its folder (the
last good checkpoint kept) and the others go on; its slice of a stack trains on unread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from tqdm.auto import tqdm

from aelab.callbacks import Callback, Logger, epoch_extras, step_hook
from aelab.data import prepare_batch
from aelab.errors import AelabError, DivergenceError
from aelab.nn.models import Autoencoder
from aelab.runs import CHECKPOINT_FILE, STATUS_FILE, FolderWriter, save_model, status_bytes, write_status
from aelab.train.checkpoint import checkpoint_bytes, save_checkpoint
from aelab.train.divergence import DIVERGENCE_CHECKS_PER_EPOCH, record_divergence
from aelab.train.state import RunState
from aelab.train.steps import Step, make_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: Autoencoder
    history: list[dict[str, Any]]
    run_dir: Path | None
    best_epoch: int
    stopped_early: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Member:
    """One run in the loop: its state, folder, callbacks and, once it diverged, the error."""

    state: RunState
    run_dir: Path | None
    callbacks: list[Callback]
    error: DivergenceError | None = None
    hook: Callable[[int, torch.Tensor], None] | None = None
    result: TrainResult | None = None

    @property
    def training(self) -> bool:
        return self.error is None and not self.state.should_stop


def fit(members: list[Member], step: Step, *, progress: bool, share_batches: bool = False) -> list[Member]:
    """Train every member to its end (its epochs, early stopping, or divergence) with `step`,
    whose `states` are the members' states in the step's order. Returns the members; each
    diverged one holds its error (already recorded in its folder), the others are finished
    (`finish_run`).

    The runs' checkpoints, metrics.jsonl and status.json are written by one `FolderWriter`
    (in order, on a background thread) while the next epoch trains; every write is on disk
    before `fit` returns or raises, and before a run's divergence or end is written."""
    by_state = {id(member.state): member for member in members}
    stack = [by_state[id(state)] for state in step.states]  # the members in the step's order
    with FolderWriter() as writer:
        for member in stack:
            member.state.writer = writer if member.run_dir is not None else None
        try:
            _train(members, stack, step, progress, share_batches)
        finally:
            for member in stack:
                member.state.writer = None
    return members


def _train(members: list[Member], stack: list[Member], step: Step, progress: bool, share_batches: bool) -> None:
    for member in stack:
        start(member)
    while any(member.training for member in stack):
        started = time.perf_counter()
        losses = train_epoch(stack, step, progress, share_batches)
        step.sync()
        recording = []
        for member, loss in zip(stack, losses, strict=True):
            if not member.training:
                continue  # diverged: its slice of the stack trains on, unread; members never mix
            try:
                member.state.guard.check_weights(member.state.model, member.state.epoch)
            except DivergenceError as error:
                diverge(member, error)
                continue
            recording.append((member, loss))
        # One step trained every member: each run that records the epoch is charged an equal
        # share of it plus its own validation, so the runs' seconds add up to the time taken.
        share = (time.perf_counter() - started) / max(1, len(recording))
        for member, loss in recording:
            row = member.state.record_epoch(loss, share)
            end_epoch(member, row, progress, echo=len(members) == 1)
        if progress and len(members) > 1:  # one line per epoch for the whole group
            epoch, epochs = stack[0].state.epoch, stack[0].state.config.train.epochs
            rows = [
                f"{m.run_dir.name if m.run_dir is not None else i} "
                + ("diverged" if m.error is not None else f"{m.state.history[-1]['val_loss']:.4f}")
                for i, m in enumerate(members)
            ]
            tqdm.write(f"epoch {epoch}/{epochs} val loss: {', '.join(rows)}")
    step.release()
    for member in members:
        if member.error is None:
            finish_run(member)


def start(member: Member) -> None:
    """The checkpoint to fall back on should the first epoch diverge, then `on_train_start`;
    a callback that stops the run there (an AelabError, as `Doctor(strict=True)` raises)
    marks the folder "stopped"."""
    state, run_dir = member.state, member.run_dir
    state.flush_writes()
    if run_dir is not None and state.epoch == 0:
        save_checkpoint(state, run_dir)
    try:
        for callback in member.callbacks:
            callback.on_train_start(state, run_dir)
    except AelabError as error:
        if run_dir is not None:
            write_status(run_dir, "stopped", epochs_done=state.epoch, message=str(error))
        raise
    member.hook = step_hook(member.callbacks, state)


def diverge(member: Member, error: DivergenceError) -> None:
    state = member.state
    state.flush_writes()  # the last good epoch's files, before the folder says it diverged
    member.error = record_divergence(member.run_dir, error, state.epoch, state.threads)


def train_epoch(stack: list[Member], step: Step, progress: bool, share_batches: bool) -> list[float]:
    """One pass over the training set for every member, each in its own seeded order (or the
    first member's with share_batches). Returns the members' mean training losses; members
    that diverge during the epoch are marked so and their hooks stop."""
    states = [member.state for member in stack]
    lead = states[0]
    train, data_config = lead.config.train, lead.config.data
    count, device = lead.train_images.shape[0], lead.device
    for state in states:
        state.model.train()
    sources = states[:1] if share_batches else states
    orders = torch.stack([torch.randperm(count, generator=s.order_generator) for s in sources]).to(device)
    totals = torch.zeros(len(states), device=device)
    steps = lead.steps_per_epoch
    step_losses = torch.empty(steps, len(states), device=device)
    # CPU: look at every step's losses (cheap). Accelerators: read them back a few times per
    # epoch only, so the device is not synchronised on every step.
    check_every = 1 if device.type == "cpu" else max(1, steps // DIVERGENCE_CHECKS_PER_EPOCH)
    checked = 0
    first_step = lead.epoch * steps + 1
    bar = tqdm(
        total=count,
        desc=f"epoch {lead.epoch + 1}/{train.epochs}",
        unit="img",
        leave=False,
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
    )
    try:
        for index, begin in enumerate(range(0, count, train.batch_size)):
            indices = orders[:, begin : begin + train.batch_size]  # (members or 1, B)
            size = indices.shape[1]
            if data_config.binarize == "bernoulli":  # each member draws from its own generator
                rows = indices.expand(len(states), -1)
                images = torch.stack([s.batch(rows[m]) for m, s in enumerate(states)])
            else:
                images = prepare_batch(
                    lead.train_images.index_select(0, indices.reshape(-1)),
                    lead.data.scale,
                    data_config.binarize,
                    data_config.threshold,
                ).view(indices.shape[0], size, *lead.data.image_shape)
            losses = step(images)
            step_losses[index] = losses
            for member, loss in zip(stack, losses, strict=True):
                if member.hook is not None and member.error is None:
                    member.hook(first_step + index, loss)
            totals += losses * size
            bar.update(size)
            if index + 1 - checked >= check_every or index + 1 == steps:
                columns = step_losses[checked : index + 1].t().tolist()
                for member, values in zip(stack, columns, strict=True):
                    if member.error is None:
                        try:
                            member.state.guard.check_losses(values, member.state.epoch, checked)
                        except DivergenceError as error:
                            diverge(member, error)
                checked = index + 1
                if all(member.error is not None for member in stack):
                    break
    finally:
        bar.close()
    return [float(total) / count for total in totals]  # one host synchronisation per epoch


def end_epoch(member: Member, row: dict[str, Any], progress: bool, echo: bool = True) -> None:
    """After an epoch's row is recorded: the callbacks' additions merged into the row (and so
    into the history), the log line, the checkpoint, then the loggers and the status. The
    checkpoint is written before the loggers, so metrics.jsonl never runs ahead of it; all three
    go through the run's writer (`RunState.write_file`), in that order."""
    state, run_dir, callbacks = member.state, member.run_dir, member.callbacks
    config = state.config
    row.update(epoch_extras(callbacks, state, row, run_dir))
    if "val_elbo" in row:  # a VAE: its objective and terms, nats per image
        message = (
            f"epoch {row['epoch']}/{config.train.epochs}  train objective {row['train_loss']:.2f}  "
            f"val -ELBO {row['val_loss']:.2f} (recon {row['val_recon']:.2f}, KL {row['val_kl']:.2f}, "
            f"{row['val_active_units']} active units)  val mse {row['val_mse']:.4f}  ({row['seconds']:.1f}s)"
        )
    else:
        message = (
            f"epoch {row['epoch']}/{config.train.epochs}  train {config.train.loss} {row['train_loss']:.4f}  "
            f"val {row['val_loss']:.4f}  val mse {row['val_mse']:.4f}  ({row['seconds']:.1f}s)"
        )
    if progress and echo:
        tqdm.write(message)
    log.info(message)
    if run_dir is not None:
        state.write_file(run_dir / CHECKPOINT_FILE, checkpoint_bytes(state))
    logged = MappingProxyType(row)
    for callback in callbacks:
        if isinstance(callback, Logger):
            if callback.flush_first:
                state.flush_writes()
            callback.log_epoch(state, logged, run_dir)
    if run_dir is not None:
        state.write_file(run_dir / STATUS_FILE, status_bytes("running", epochs_done=state.epoch, threads=state.threads))


def finish_run(member: Member) -> TrainResult:
    """Keep the best weights, write the model and the finished status, call `on_train_end`;
    the result is also kept in `member.result`."""
    state, run_dir = member.state, member.run_dir
    config = state.config
    state.flush_writes()
    stopped_early = state.epoch < config.train.epochs
    state.restore_best()
    if run_dir is not None:
        digest = save_model(run_dir, state.model, config)
        write_status(
            run_dir,
            "finished",
            epochs_done=state.epoch,
            best_epoch=state.best_epoch,
            stopped_early=stopped_early,
            threads=state.threads,
            model_sha256=digest,
        )
    state.model.eval()
    result = TrainResult(state.model, state.history, run_dir, state.best_epoch, stopped_early)
    member.result = result
    # The loggers end last, so that what they record of the end (the findings, say) is what
    # the other callbacks (the doctor's final check among them) left.
    loggers = [callback for callback in member.callbacks if isinstance(callback, Logger)]
    for callback in [*(c for c in member.callbacks if not isinstance(c, Logger)), *loggers]:
        callback.on_train_end(state, result)
    return result


def run_epoch(state: RunState, step: Step | None = None, progress: bool = False) -> dict[str, Any]:
    """Train `state` one more epoch, without a folder or callbacks, and record it (a notebook's
    "one more epoch"); returns its metrics row. Raises DivergenceError as `train` would."""
    started = time.perf_counter()
    member = Member(state, None, [])
    (loss,) = train_epoch([member], step or make_step([state]), progress, share_batches=False)
    if member.error is None:
        try:
            state.guard.check_weights(state.model, state.epoch)
        except DivergenceError as error:
            member.error = error
    if member.error is not None:
        raise member.error
    return state.record_epoch(loss, time.perf_counter() - started)
