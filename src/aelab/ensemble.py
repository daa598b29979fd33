"""Train several runs at once: dense runs with the same layer sizes share batched matmuls.

`train_ensemble(configs, outs)` is a drop-in for calling `train(config, out, doctor=False,
report=False)` on each pair (pass a doctor through `make_callbacks`): it returns the same
`TrainResult`s in the same order and writes the same run folders. Runs that share data,
layer sizes, batch size, epochs and device form a group whose weights are stacked
(M, out, in), so one `torch.baddbmm` serves every member; each member still has its own
hidden, code and output activation, loss, initialisation, optimizer (type, settings and
state), learning rate and data order (its own seed), so its numbers equal those of the same
run trained alone, to float tolerance. Everything else (conv models, early stopping, the
autograd engine) falls back to `train()`.

How: each member is an ordinary `Trainer` (its model, optimizer, generators, validation and
checkpoints are the solo ones); its parameters are rebound to slices of the stacked tensors,
and its optimizer's state is a slice of one optimizer that steps a whole run of members with
equal optimizer settings in one fused call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aelab.callbacks import check_loggers, step_hook
from aelab.config import RunConfig
from aelab.data import ImageData, load_dataset, prepare_batch
from aelab.errors import DivergenceError
from aelab.fast import DenseStep, dense_parameters, fast_optimizer, fast_step_problem, optimizer_step, torch_threads
from aelab.models import DenseAutoencoder
from aelab.runs import check_free_space, claim_run_dir, load_run, save_config, write_status
from aelab.train import (
    Callback,
    Trainer,
    TrainResult,
    check_config,
    end_epoch,
    estimate_run_bytes,
    finish_run,
    record_divergence,
    run_callbacks,
    thread_count,
    train,
    warn_of_large_batches,
)

log = logging.getLogger(__name__)


def group_key(config: RunConfig) -> str | None:
    """Runs with equal keys can train stacked; None for a run that trains alone."""
    train_config, model = config.train, config.model
    if model.kind != "dense" or train_config.engine == "autograd" or train_config.patience is not None:
        return None
    shared = {
        "data": config.data.__dict__,
        "layers": [model.hidden_dims, model.latent_dim, model.tied],
        "train": [train_config.batch_size, train_config.epochs, train_config.device, train_config.threads],
    }
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


def _diverged_result(out: str | Path | None, error: DivergenceError) -> TrainResult:
    """The result standing for a run that diverged (its folder already says so): the model and
    history of its last good checkpoint when it has a folder, else no model."""
    extras = {"diverged": str(error)}
    if out is None:
        return TrainResult(None, [], None, 0, extras=extras)  # type: ignore[arg-type]
    run = load_run(out)  # an unfinished run loads from its last checkpoint
    losses = [row["val_loss"] for row in run.history]
    best_epoch = losses.index(min(losses)) + 1 if losses else 0
    return TrainResult(run.model, run.history, Path(out), best_epoch, extras=extras)


def _member_order_key(trainer: Trainer) -> tuple[Any, ...]:
    # Members with equal activations, losses and optimizer settings sit next to each other, so
    # each of those is applied to one contiguous slice of the stack.
    model, train_config = trainer.config.model, trainer.config.train
    return (
        model.activation,
        model.code_activation or model.activation,
        model.output_activation,
        train_config.loss,
        _optimizer_key(trainer.optimizer),
    )


def _optimizer_key(optimizer: torch.optim.Optimizer) -> str:
    return json.dumps([type(optimizer).__name__, optimizer.defaults], sort_keys=True, default=str)


class _Group:
    """The stacked state of one group: parameters, their gradients, the shared optimizers."""

    def __init__(self, trainers: list[Trainer]) -> None:
        self.trainers = trainers
        models: list[DenseAutoencoder] = [t.model for t in trainers]  # type: ignore[misc]
        per_member = [dense_parameters(model) for model in models]
        self.stacked = [torch.stack([params[j].detach() for params in per_member]) for j in range(len(per_member[0]))]
        for m, params in enumerate(per_member):
            for j, param in enumerate(params):
                param.data = self.stacked[j][m]
        for trainer in trainers:
            trainer.fast_step = None  # its buffers viewed the old parameters; the group steps instead
        self.step = DenseStep(models, [t.config.train.loss for t in trainers], self.stacked)
        self.per_member = per_member
        # One optimizer per run of members with equal settings, over slices of the stack.
        self.optimizers: list[tuple[int, int, torch.optim.Optimizer, list[torch.Tensor]]] = []
        start = 0
        while start < len(trainers):
            end = start + 1
            key = _optimizer_key(trainers[start].optimizer)
            while end < len(trainers) and _optimizer_key(trainers[end].optimizer) == key:
                end += 1
            views = [stacked[start:end] for stacked in self.stacked]
            for view, stacked in zip(views, self.stacked, strict=True):
                view.grad = self.step.gradient(stacked)[start:end]
            self.optimizers.append((start, end, fast_optimizer(trainers[start].optimizer, views), views))
            start = end

    def optimizer_step(self) -> None:
        for _, _, optimizer, _ in self.optimizers:
            optimizer_step(optimizer)

    def share_state(self) -> None:
        """Give each member's own optimizer its slice of the shared state (views, no copies),
        so that its checkpoint holds exactly what a solo run's would."""
        for start, end, optimizer, views in self.optimizers:
            for j, view in enumerate(views):
                shared = optimizer.state.get(view, {})
                for m in range(start, end):
                    state = {}
                    for name, value in shared.items():
                        per_element = isinstance(value, torch.Tensor) and value.shape == view.shape
                        state[name] = value[m - start] if per_element else value
                    self.trainers[m].optimizer.state[self.per_member[m][j]] = state

    def release(self) -> None:
        """Give every member parameters of its own again, so results do not hold the stack."""
        self.share_state()
        for params in self.per_member:
            for param in params:
                param.data = param.data.clone()
        for trainer in self.trainers:
            for state in trainer.optimizer.state.values():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[name] = value.clone()


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
    first = configs[0]
    trainers = [Trainer(config, data) for config in configs]
    for trainer in trainers:
        problem = fast_step_problem(trainer.model)
        if problem is not None:  # pragma: no cover - group_key admits dense models only
            raise ValueError(f"cannot stack {trainer.config}: {problem}")
    for trainer, run_dir, member_callbacks in zip(trainers, run_dirs, callbacks, strict=True):
        if run_dir is not None:
            check_free_space(run_dir, estimate_run_bytes(trainer))
            save_config(run_dir, trainer.config)
            write_status(run_dir, "running", epochs_done=0, threads=trainer.threads)
            trainer.save_checkpoint(run_dir)  # the state to fall back on should epoch 1 diverge
        for callback in member_callbacks:
            callback.on_train_start(trainer, run_dir)
    order = sorted(range(len(trainers)), key=lambda m: _member_order_key(trainers[m]))
    sorted_trainers = [trainers[m] for m in order]
    group = _Group(sorted_trainers)
    log.info("training %d runs stacked", len(trainers))
    epochs, batch_size = first.train.epochs, first.train.batch_size
    diverged: list[DivergenceError | None] = [None] * len(trainers)
    hooks = [step_hook(callbacks[m], trainers[m]) for m in order]  # in the stack's order
    for epoch in range(epochs):
        started = time.perf_counter()
        live = [hook if diverged[m] is None else None for m, hook in zip(order, hooks, strict=True)]
        description, steps_before = f"epoch {epoch + 1}/{epochs}", epoch * trainers[0].steps_per_epoch
        losses, step_losses = _train_epoch(group, share_batches, batch_size, progress, description, steps_before, live)
        group.share_state()
        for m in order:  # rows and files in the caller's order
            trainer, run_dir = trainers[m], run_dirs[m]
            if diverged[m] is not None:
                continue  # its slice of the stack trains on, unread: members never mix
            try:
                trainer.check_losses(step_losses[order.index(m)], 0)  # the solo run's per-step check
                trainer.check_weights()
            except DivergenceError as error:
                diverged[m] = record_divergence(trainer, run_dir, error)
        recording = [m for m in order if diverged[m] is None]
        # One stacked step trained every member: each run that records the epoch is charged an
        # equal share of it plus its own validation, so the runs' seconds add up to the time
        # the group took instead of each counting all of it.
        share = (time.perf_counter() - started) / max(1, len(recording))
        for m in recording:
            trainer = trainers[m]
            trainer.record_epoch(losses[order.index(m)], time.perf_counter() - share)
            end_epoch(trainer, trainer.history[-1], run_dirs[m], progress, callbacks[m], echo=False)
        if progress:  # one line per epoch for the whole group
            rows = [
                f"{run_dir.name if run_dir is not None else m} "
                + ("diverged" if diverged[m] is not None else f"{trainers[m].history[-1]['val_loss']:.4f}")
                for m, run_dir in enumerate(run_dirs)
            ]
            tqdm.write(f"epoch {epoch + 1}/{epochs} val loss: {', '.join(rows)}")
    group.release()
    return [
        finish_run(trainer, run_dir, member_callbacks) if error is None else _diverged_result(run_dir, error)
        for trainer, run_dir, member_callbacks, error in zip(trainers, run_dirs, callbacks, diverged, strict=True)
    ]


def _train_epoch(
    group: _Group,
    share_batches: bool,
    batch_size: int,
    progress: bool,
    description: str,
    steps_before: int = 0,
    hooks: Sequence[Callable[[int, torch.Tensor], None] | None] = (),
) -> tuple[list[float], list[list[float]]]:
    """One epoch for every member: the members' mean training losses and, per member, its loss
    at every step (for the divergence check), read back in one synchronisation. hooks: per
    member (in the stack's order), None or its callbacks' `on_step`, called after each step
    with the step number (steps_before + 1, ...) and the member's loss as a 0-d tensor."""
    stepping = [(m, hook) for m, hook in enumerate(hooks) if hook is not None]
    trainers = group.trainers
    lead = trainers[0]
    data_config = lead.config.data
    count = lead.train_images.shape[0]
    device = lead.device
    for trainer in trainers:
        trainer.model.train()
    sources = trainers[:1] if share_batches else trainers
    orders = torch.stack([torch.randperm(count, generator=t.order_generator) for t in sources]).to(device)
    totals = torch.zeros(len(trainers), device=device)
    step_losses = torch.zeros(math.ceil(count / batch_size), len(trainers), device=device)
    # disable=None: no bar when stderr is not a terminal (logs, CI)
    bar = tqdm(total=count, desc=description, unit="img", leave=False, disable=None if progress else True)
    for start in range(0, count, batch_size):
        indices = orders[:, start : start + batch_size]  # (members or 1, B)
        size = indices.shape[1]
        if data_config.binarize == "bernoulli":  # each member draws from its own generator
            rows = indices.expand(len(trainers), -1)
            images = torch.stack([t.batch(rows[m]) for m, t in enumerate(trainers)])
        else:
            images = prepare_batch(
                lead.train_images.index_select(0, indices.reshape(-1)),
                lead.data.scale,
                data_config.binarize,
                data_config.threshold,
            ).view(indices.shape[0], size, *lead.data.image_shape)
        x = images.reshape(images.shape[0], size, -1).expand(len(trainers), -1, -1)  # (M, B, D)
        losses = group.step.gradients(x)
        group.optimizer_step()
        step_losses[start // batch_size] = losses.detach()
        if stepping:
            step = steps_before + start // batch_size + 1
            detached = losses.detach()
            for m, hook in stepping:
                hook(step, detached[m])
        totals += losses * size
        bar.update(size)
    bar.close()
    return (totals / count).tolist(), step_losses.t().tolist()
