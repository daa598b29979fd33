"""Training: data held in memory, a seeded permutation per epoch, one checkpoint per epoch.

`train(config, out)` is the whole job behind `aelab train`; `Trainer` holds the state of one
run (model, optimizer, generators, history) so that it can be checkpointed and resumed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from aelab.config import RunConfig, TrainConfig
from aelab.data import ImageData, load_dataset, prepare_batch
from aelab.errors import ConfigError, DataError
from aelab.fast import FastStep, choose_engine, choose_threads, fast_optimizer
from aelab.losses import LOSS_FLOORS, expected_pixels, get_loss
from aelab.metrics import reconstruction_metrics
from aelab.models import Autoencoder, build_model
from aelab.runs import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    atomic_write_bytes,
    prepare_run_dir,
    read_safetensors,
    save_config,
    save_model,
    write_metrics,
    write_status,
)

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], TrainConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.learning_rate, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay
    ),
    "rmsprop": lambda params, c: torch.optim.RMSprop(
        params, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay
    ),
    "adadelta": lambda params, c: torch.optim.Adadelta(params, lr=c.learning_rate, weight_decay=c.weight_decay),
    "adagrad": lambda params, c: torch.optim.Adagrad(params, lr=c.learning_rate, weight_decay=c.weight_decay),
}

EVAL_CHUNK = 512  # images per forward pass and metrics pass when evaluating: bounds the temporaries


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no GPU is visible to torch; use --device cpu or auto")
    return torch.device(name)


def check_config(config: RunConfig) -> None:
    """Name checks that need the registries; ranges are checked by the dataclasses."""
    get_loss(config.train.loss)
    if config.train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.train.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def loss_per_sample(model: Autoencoder, loss: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss per image (B,), from logits when the output activation allows."""
    output, from_logits = model.loss_input(logits)
    return get_loss(loss)(output, target, from_logits)


def model_pixels(model: Autoencoder, loss: str, logits: torch.Tensor) -> torch.Tensor:
    """The images a model shows: its output activation, or the cb mean for cb-trained models."""
    output, from_logits = model.loss_input(logits)
    return expected_pixels(loss, output, from_logits)


@dataclass
class TrainResult:
    model: Autoencoder
    history: list[dict[str, Any]]
    run_dir: Path | None
    best_epoch: int
    stopped_early: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One run's state. `run_epoch()` trains one epoch and returns its metrics row."""

    def __init__(self, config: RunConfig, data: ImageData, device: torch.device | None = None) -> None:
        check_config(config)
        self.config = config
        self.data = data
        self.device = device or resolve_device(config.train.device)
        seed = config.train.seed
        self.model = build_model(config.model, data.image_shape, seed=seed).to(self.device)
        self._check_fits()
        self.optimizer = OPTIMIZERS[config.train.optimizer](self.model.parameters(), config.train)
        # The fast engine: a hand-written dense step and the optimizer's fused kernel.
        self.engine = choose_engine(config.train.engine, self.model)
        self.fast_step: FastStep | None = None
        if self.engine == "fast":
            self.optimizer = fast_optimizer(self.optimizer)
            self.fast_step = FastStep(self.model, config.train.loss)  # type: ignore[arg-type]
        # Separate generators: data order and binarisation draws never disturb each other.
        self.order_generator = torch.Generator().manual_seed(seed)
        self.binarize_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.train_images = data.train.to(self.device)
        self.val_targets = prepare_batch(
            data.val.to(self.device),
            data.scale,
            config.data.binarize,
            config.data.threshold,
            torch.Generator(device=self.device).manual_seed(seed + 2),
        )
        self.val_floor = _chunked_means(
            self.val_targets, lambda chunk: {"floor": LOSS_FLOORS[config.train.loss](chunk).mean()}
        )["floor"]
        self.data_range = max(1.0, float(self.val_targets.max())) if self.val_targets.numel() else 1.0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def _check_fits(self) -> None:
        sample = self.data.val[:1].to(self.device).float()
        try:
            with torch.no_grad():
                logits = self.model(sample)
        except RuntimeError as error:
            raise DataError(
                f"images of shape {tuple(self.data.image_shape)} do not fit the {self.config.model.kind} model "
                f"({str(error).splitlines()[0]}); change the model or the data"
            ) from None
        if logits.shape != sample.shape:  # pragma: no cover - the models mirror their input
            raise DataError(f"model outputs {tuple(logits.shape)} for inputs {tuple(sample.shape)}")

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        data = self.config.data
        return prepare_batch(
            self.train_images[indices], self.data.scale, data.binarize, data.threshold, self.binarize_generator
        )

    def train_epoch(self, progress: bool = False) -> float:
        """One pass over the training set in a fresh seeded order; the mean training loss."""
        self.model.train()
        train = self.config.train
        count = self.train_images.shape[0]
        order = torch.randperm(count, generator=self.order_generator).to(self.device)
        total = torch.zeros((), device=self.device)
        bar = tqdm(
            total=count,
            desc=f"epoch {self.epoch + 1}/{train.epochs}",
            unit="img",
            leave=False,
            disable=not progress,
        )
        for start in range(0, count, train.batch_size):
            indices = order[start : start + train.batch_size]
            total += self.train_step(self.batch(indices)) * indices.shape[0]
            bar.update(indices.shape[0])
        bar.close()
        return float(total) / count  # one host synchronisation per epoch

    def train_step(self, images: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (B, C, H, W) that is both input and target; returns
        the batch's mean loss as a 0-d tensor, without synchronising with the device."""
        if self.fast_step is not None:
            loss = self.fast_step(images)  # writes the gradients into .grad
            self.optimizer.step()
            return loss
        loss = loss_per_sample(self.model, self.config.train.loss, self.model(images), images).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, per-image loss) for float images, in chunks."""
        self.model.eval()
        pixels, losses = [], []
        for start in range(0, images.shape[0], EVAL_CHUNK):
            chunk = images[start : start + EVAL_CHUNK]
            logits = self.model(chunk)
            losses.append(loss_per_sample(self.model, self.config.train.loss, logits, chunk))
            pixels.append(model_pixels(self.model, self.config.train.loss, logits))
        return torch.cat(pixels), torch.cat(losses)

    def evaluate(self) -> dict[str, float]:
        def chunk_metrics(targets: torch.Tensor) -> dict[str, Any]:
            pixels, losses = self.reconstruct(targets)
            return {"loss": losses.mean(), **reconstruction_metrics(pixels, targets, self.data_range)}

        # Metrics are means over images, so chunk means weighted by chunk size give the same
        # values while the temporaries stay the size of one chunk.
        means = _chunked_means(self.val_targets, chunk_metrics)
        val_loss = means.pop("loss")
        return {
            "val_loss": val_loss,
            "val_loss_excess": val_loss - self.val_floor if math.isfinite(self.val_floor) else math.nan,
            **{f"val_{name}": value for name, value in means.items()},
        }

    def run_epoch(self, progress: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        return self.record_epoch(self.train_epoch(progress), started)

    def record_epoch(self, train_loss: float, started: float) -> dict[str, Any]:
        """Evaluate, append the epoch's metrics row to the history and track the best epoch."""
        row: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": train_loss, **self.evaluate()}
        row["seconds"] = round(time.perf_counter() - started, 4)
        self.epoch += 1
        self.history.append(row)
        if row["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = row["val_loss"], self.epoch, 0
            if self.config.train.patience is not None:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return row

    @property
    def should_stop(self) -> bool:
        patience = self.config.train.patience
        return self.epoch >= self.config.train.epochs or (patience is not None and self.bad_epochs >= patience)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # --- checkpoints: safetensors tensors plus JSON metadata; no pickle anywhere.

    def checkpoint_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        if self.best_state is not None:
            tensors.update({f"best/{k}": v for k, v in self.best_state.items()})
        optimizer_state = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{index}/{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensors["rng/order"] = self.order_generator.get_state()
        tensors["rng/binarize"] = self.binarize_generator.get_state()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "epoch": str(self.epoch),
            "param_groups": json.dumps(optimizer_state["param_groups"]),
            "optimizer_scalars": json.dumps(scalars),
            "trainer": json.dumps(
                {
                    "best_loss": self.best_loss,
                    "best_epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                    "history": self.history,
                }
            ),
        }
        return save(tensors, metadata)

    def save_checkpoint(self, run_dir: Path) -> None:
        atomic_write_bytes(run_dir / CHECKPOINT_FILE, self.checkpoint_bytes())

    def load_checkpoint(self, path: Path) -> None:
        tensors, metadata = read_safetensors(path)
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} is not an aelab checkpoint")
        model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(model_state)
        best = {k.removeprefix("best/"): v.to(self.device) for k, v in tensors.items() if k.startswith("best/")}
        self.best_state = best or None
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in json.loads(metadata["optimizer_scalars"]).items():
            state.setdefault(int(index), {}).update(values)
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        self.order_generator.set_state(tensors["rng/order"])
        self.binarize_generator.set_state(tensors["rng/binarize"].to(self.binarize_generator.device))
        trainer = json.loads(metadata["trainer"])
        self.epoch = int(metadata["epoch"])
        self.best_loss = trainer["best_loss"]
        self.best_epoch = trainer["best_epoch"]
        self.bad_epochs = trainer["bad_epochs"]
        self.history = trainer["history"]


def _chunked_means(images: torch.Tensor, means: Callable[[torch.Tensor], dict[str, Any]]) -> dict[str, float]:
    """`means(chunk)` (a dict of per-chunk means over images) averaged over EVAL_CHUNK-image
    chunks, weighted by chunk size: the means over all images, with chunk-sized temporaries."""
    totals: dict[str, float] = {}
    count = images.shape[0]
    for start in range(0, count, EVAL_CHUNK):
        chunk = images[start : start + EVAL_CHUNK]
        for name, value in means(chunk).items():
            totals[name] = totals.get(name, 0.0) + float(value) * chunk.shape[0] / count
    return totals


class Callback:
    """Hooks into a training run; override what you need. Raising an AelabError stops the run."""

    def on_train_start(self, trainer: Trainer, run_dir: Path | None) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], run_dir: Path | None) -> None:
        pass

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        pass


def train(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    data: ImageData | None = None,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Iterable[Callback] = (),
) -> TrainResult:
    """Train one autoencoder. With `out`, write a complete run folder there (see `aelab.runs`).

    Returns the trained model (the best epoch's weights when early stopping is on) and its
    per-epoch metrics history."""
    check_config(config)
    run_dir = prepare_run_dir(out, overwrite=overwrite) if out is not None else None
    if data is None:
        data = load_dataset(config.data)
    set_threads(config, data)
    trainer = Trainer(config, data)
    if run_dir is not None:
        save_config(run_dir, config)
        write_status(run_dir, "running", epochs_done=0)
    return _train_loop(trainer, run_dir, progress, list(callbacks))


def set_threads(config: RunConfig, data: ImageData, members: int = 1) -> int:
    """Set torch's CPU threads: `train.threads` when given, else `choose_threads` for the
    work of one step of `members` stacked runs. Returns the number set."""
    threads = config.train.threads
    if threads is None:
        threads = choose_threads(members * config.train.batch_size * data.num_pixels)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def _train_loop(trainer: Trainer, run_dir: Path | None, progress: bool, callbacks: list[Callback]) -> TrainResult:
    for callback in callbacks:
        callback.on_train_start(trainer, run_dir)
    while not trainer.should_stop:
        row = trainer.run_epoch(progress)
        end_epoch(trainer, row, run_dir, progress, callbacks)
    return finish_run(trainer, run_dir, callbacks)


def end_epoch(
    trainer: Trainer, row: dict[str, Any], run_dir: Path | None, progress: bool, callbacks: list[Callback]
) -> None:
    """After an epoch's row is recorded: callbacks, the log line, and the run folder's files."""
    config = trainer.config
    for callback in callbacks:
        callback.on_epoch_end(trainer, row, run_dir)
    message = (
        f"epoch {row['epoch']}/{config.train.epochs}  train {config.train.loss} {row['train_loss']:.4f}  "
        f"val {row['val_loss']:.4f}  val mse {row['val_mse']:.4f}  ({row['seconds']:.1f}s)"
    )
    if progress:
        tqdm.write(message)
    log.info(message)
    if run_dir is not None:
        write_metrics(run_dir, trainer.history)
        trainer.save_checkpoint(run_dir)
        write_status(run_dir, "running", epochs_done=trainer.epoch)


def finish_run(trainer: Trainer, run_dir: Path | None, callbacks: list[Callback]) -> TrainResult:
    """Keep the best weights, write the model and the finished status, and build the result."""
    config = trainer.config
    stopped_early = trainer.epoch < config.train.epochs
    trainer.restore_best()
    if run_dir is not None:
        save_model(run_dir, trainer.model, config)
        write_status(
            run_dir,
            "finished",
            epochs_done=trainer.epoch,
            best_epoch=trainer.best_epoch,
            stopped_early=stopped_early,
        )
    trainer.model.eval()
    result = TrainResult(trainer.model, trainer.history, run_dir, trainer.best_epoch, stopped_early)
    for callback in callbacks:
        callback.on_train_end(trainer, result)
    return result
