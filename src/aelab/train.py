"""Training: data held in memory, a seeded permutation per epoch, one checkpoint per epoch.

`train(config, out)` is the whole job behind `aelab train`; `Trainer` holds the state of one
run (model, optimizer, generators, history) so that it can be checkpointed and resumed, and
`resume(run_dir)` continues a killed run from its last checkpoint, bit for bit on CPU.

Divergence: a training loss that is NaN or Inf, or that rises above DIVERGENCE_FACTOR times
the larger of 1 and the run's first loss, or weights that become NaN or Inf, stop the run
with a DivergenceError; the checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from tqdm.auto import tqdm

from aelab.callbacks import Callback, Logger, build_loggers, check_loggers, epoch_extras, step_hook
from aelab.config import RunConfig, TrainConfig
from aelab.data import ImageData, check_data_config, data_for_run, data_for_training, load_dataset, prepare_batch
from aelab.data.datasets import ImagesLike
from aelab.errors import AelabError, ConfigError, DataError, DivergenceError, RunFolderError
from aelab.fast import FastStep, choose_engine, choose_threads, fast_optimizer, optimizer_step, torch_threads
from aelab.findings import Finding, read_findings, save_findings
from aelab.likelihoods import get_likelihood
from aelab.losses import bce_floor
from aelab.metrics import SetStatistics, image_metrics
from aelab.models import Autoencoder, build_model
from aelab.runs import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    atomic_write_bytes,
    check_free_space,
    claim_run_dir,
    describe_entries,
    foreign_entries,
    load_config,
    load_run,
    load_weights,
    read_safetensors,
    read_status,
    read_threads,
    refuse_sweep_folder,
    remove_temporaries,
    run_lock,
    save_config,
    save_model,
    upgrade_config_dict,
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

EVAL_CHUNK = 256  # images per forward pass and metrics pass when evaluating: bounds the temporaries
# A training loss above this many times max(1, |first loss|) counts as divergence: learning
# rates far too high (1e4 on the Keras model) push BCE from 0.69 to 1e4-1e5 within two steps
# without ever producing a NaN, while no working run climbs that far above where it started.
DIVERGENCE_FACTOR = 1000.0
# report.html (its figures as PNG: about 0.3 MB for one run) and findings.json, as `train` writes them.
REPORT_BYTES = 1 << 20
# On an accelerator the step losses are read back this many times per epoch, not every step.
DIVERGENCE_CHECKS_PER_EPOCH = 8


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            template="train.device is cuda but no GPU is visible to torch; use {train.device:cpu} or auto"
        )
    return torch.device(name)


def check_config(config: RunConfig, *, data_keys: bool = True) -> None:
    """Name checks that need the registries; ranges are checked by the dataclasses.

    data_keys: also refuse data keys the dataset would ignore (`check_data_config`), as for a
    new run; False for a folder's own config (evaluation, resume: folders written before that
    check) and for data passed in memory."""
    if data_keys:
        check_data_config(config.data)
    likelihood = get_likelihood(config.train.loss)
    if likelihood.parameters_per_pixel != 1:
        raise ConfigError(
            f"train.loss {likelihood.name} needs {likelihood.parameters_per_pixel} output values per pixel; "
            "aelab's models output one"
        )
    if config.train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.train.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def loss_per_sample(model: Autoencoder, loss: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss per image (B,), from logits when the output activation allows."""
    output, from_logits = model.loss_input(logits)
    return get_likelihood(loss).nll(output, target, logits=from_logits)


def model_pixels(model: Autoencoder, loss: str, logits: torch.Tensor) -> torch.Tensor:
    """The images a model shows: the pixel mean of its likelihood (its output activation, or the
    cb mean for cb-trained models)."""
    output, from_logits = model.loss_input(logits)
    return get_likelihood(loss).mean(output, logits=from_logits)


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
        check_config(config, data_keys=False)
        self.config = config
        self.data = data
        self.device = device or resolve_device(config.train.device)
        # The CPU threads this run computes with (set by `train`, `resume` or `train_ensemble`
        # before building the trainer); recorded in checkpoints and status.json for resume.
        self.threads = torch.get_num_threads()
        seed = config.train.seed
        self.model = build_model(config.model, data.image_shape, seed=seed, loss=config.train.loss).to(self.device)
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
        self.val_stored, self.val_scale = self._validation_targets(seed + 2)
        # The BCE floor of every validation chunk, for the bce_excess metric: the targets never
        # change, so it is computed once rather than every epoch.
        self.val_bce_floors = [
            bce_floor(self.val_batch(start, start + EVAL_CHUNK)) for start in range(0, len(self.val_stored), EVAL_CHUNK)
        ]
        likelihood = get_likelihood(config.train.loss)

        def chunk_floor(index: int, chunk: torch.Tensor) -> torch.Tensor:
            return self.val_bce_floors[index] if likelihood.floor is bce_floor else likelihood.lowest(chunk)

        self.val_floor = self._chunked_means(lambda index, chunk: {"floor": chunk_floor(index, chunk).mean()})["floor"]
        stored_max = float(self.val_stored.max()) if self.val_stored.numel() else 1.0
        self.data_range = max(1.0, stored_max * self.val_scale)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.reference_loss: float | None = None  # the first step's loss: the divergence yardstick
        self.last_finite_loss: float | None = None

    def _validation_targets(self, seed: int) -> tuple[torch.Tensor, float]:
        """The validation targets as (stored, scale), kept in the data's own dtype (uint8 for
        images that came as uint8) and turned into floats a chunk at a time by `val_batch`.
        Binarised targets are drawn once, with a fixed seed, so every epoch is scored on the
        same targets, and kept as uint8 zeros and ones."""
        val = self.data.val.to(self.device)
        data = self.config.data
        if data.binarize == "none":
            return val, self.data.scale
        binary = torch.empty(val.shape, dtype=torch.uint8, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for start in range(0, val.shape[0], EVAL_CHUNK):
            chunk = val[start : start + EVAL_CHUNK]
            binary[start : start + EVAL_CHUNK] = prepare_batch(
                chunk, self.data.scale, data.binarize, data.threshold, generator
            ).to(torch.uint8)
        return binary, 1.0

    def val_batch(self, start: int, end: int) -> torch.Tensor:
        """Validation targets start:end as float model inputs (B, C, H, W)."""
        return prepare_batch(self.val_stored[start:end], self.val_scale)

    @property
    def val_targets(self) -> torch.Tensor:
        """All validation targets as floats (a full-size copy; evaluation works in chunks)."""
        return self.val_batch(0, self.val_stored.shape[0])

    def _chunked_means(self, means: Callable[[int, torch.Tensor], dict[str, Any]]) -> dict[str, float]:
        """`means(index, chunk)` (a dict of the means over the images of chunk number `index`)
        over the validation targets in EVAL_CHUNK-image chunks, weighted by chunk size: the
        means over all images, with temporaries the size of one chunk."""
        totals: dict[str, float] = {}
        count = self.val_stored.shape[0]
        for index, start in enumerate(range(0, count, EVAL_CHUNK)):
            chunk = self.val_batch(start, start + EVAL_CHUNK)
            for name, value in means(index, chunk).items():
                totals[name] = totals.get(name, 0.0) + float(value) * chunk.shape[0] / count
        return totals

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
            # index_select: a dozen times faster than advanced indexing for a batch of uint8 rows
            self.train_images.index_select(0, indices),
            self.data.scale,
            data.binarize,
            data.threshold,
            self.binarize_generator,
        )

    def train_epoch(self, progress: bool = False, on_step: Callable[[int, torch.Tensor], None] | None = None) -> float:
        """One pass over the training set in a fresh seeded order; the mean training loss.
        on_step(step, loss): called after every step with the run's step number (from 1, over
        all epochs) and the batch's mean loss as a 0-d tensor (`Callback.on_step`)."""
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
            disable=None if progress else True,  # None: no bar when stderr is not a terminal
        )
        steps = self.steps_per_epoch
        step_losses = torch.empty(steps, device=self.device)
        # CPU: look at every step's loss (cheap). Accelerators: read the losses back a few times
        # per epoch only, so the device is not synchronised on every step.
        check_every = 1 if self.device.type == "cpu" else max(1, steps // DIVERGENCE_CHECKS_PER_EPOCH)
        checked = 0
        first_step = self.epoch * steps + 1
        try:
            for step, start in enumerate(range(0, count, train.batch_size)):
                indices = order[start : start + train.batch_size]
                loss = self.train_step(self.batch(indices))
                step_losses[step] = loss
                if on_step is not None:
                    on_step(first_step + step, loss)
                total += loss * indices.shape[0]
                bar.update(indices.shape[0])
                if step + 1 - checked >= check_every or step + 1 == steps:
                    self.check_losses(step_losses[checked : step + 1].tolist(), checked)
                    checked = step + 1
        finally:
            bar.close()
        self.check_weights()
        return float(total) / count  # one host synchronisation per epoch

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_images.shape[0] / self.config.train.batch_size)

    def check_losses(self, losses: list[float], first_index: int) -> None:
        """Raise DivergenceError at the first of these step losses (this epoch's steps
        first_index, first_index + 1, ...) that is not finite or has exploded."""
        for offset, value in enumerate(losses):
            step = self.epoch * self.steps_per_epoch + first_index + offset + 1
            if self.reference_loss is None and math.isfinite(value):
                self.reference_loss = value
            if not math.isfinite(value):
                raise self.divergence(step, value, f"the training loss became {value}")
            limit = DIVERGENCE_FACTOR * max(1.0, abs(self.reference_loss or 0.0))
            if value > limit:
                raise self.divergence(
                    step,
                    value,
                    f"the training loss exploded to {value:.4g} (it started at {self.reference_loss:.4g}; "
                    f"the limit is {limit:.4g})",
                )
            self.last_finite_loss = value

    def check_weights(self) -> None:
        """Raise DivergenceError when any weight is NaN or Inf (one synchronisation)."""
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        if not bool(finite):
            step = (self.epoch + 1) * self.steps_per_epoch
            raise self.divergence(step, math.nan, "the weights became NaN or Inf")

    def divergence(self, step: int, loss: float, what: str) -> DivergenceError:
        """The error for a divergence seen at global step `step` (1-based), its numbers in `.evidence`."""
        learning_rate = self.config.train.learning_rate
        error = DivergenceError(
            f"training diverged at step {step} (epoch {self.epoch + 1}): {what}; lower the learning rate "
            f"(now {learning_rate:g}, try {learning_rate / 10:g}) or try another loss or activation"
        )
        error.evidence = {  # type: ignore[attr-defined]
            "step": step,
            "epoch": self.epoch + 1,
            "steps_per_epoch": self.steps_per_epoch,
            "learning_rate": learning_rate,
            "loss": loss if math.isfinite(loss) else str(loss),
            "first_loss": self.reference_loss,
            "last_finite_loss": self.last_finite_loss,
            "limit": DIVERGENCE_FACTOR * max(1.0, abs(self.reference_loss or 0.0)),
            "last_good_epoch": self.epoch,
        }
        return error

    def train_step(self, images: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (B, C, H, W) that is both input and target; returns
        the batch's mean loss as a 0-d tensor, without synchronising with the device."""
        if self.fast_step is not None:
            loss = self.fast_step(images)  # writes the gradients into .grad
            optimizer_step(self.optimizer)  # the fused kernel without Optimizer.step's Python
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
        statistics = SetStatistics()

        def chunk_metrics(index: int, targets: torch.Tensor) -> dict[str, Any]:
            pixels, losses = self.reconstruct(targets)
            statistics.update(pixels, targets)
            # The run's own loss column is its loss from the logits: the same quantity as
            # from the pixels, exact where they saturate, so that column equals val_loss.
            own = {self.config.train.loss: losses}
            metrics = image_metrics(
                pixels, targets, self.data_range, bce_floors=self.val_bce_floors[index], loss_values=own
            )
            return {"loss": losses.mean(), **metrics}

        # Per-image metrics are means over images, so chunk means weighted by chunk size give
        # the same values while the temporaries stay the size of one chunk; the set-level
        # ratios (blob score, sharpness) come from sums accumulated over the chunks.
        means = self._chunked_means(chunk_metrics)
        means.update(blob_score=statistics.blob_score(), sharpness=statistics.sharpness())
        val_loss = means.pop("loss")
        return {
            "val_loss": val_loss,
            "val_loss_excess": val_loss - self.val_floor if math.isfinite(self.val_floor) else math.nan,
            **{f"val_{name}": value for name, value in means.items()},
        }

    def run_epoch(
        self, progress: bool = False, on_step: Callable[[int, torch.Tensor], None] | None = None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        return self.record_epoch(self.train_epoch(progress, on_step), started)

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
            "image_shape": json.dumps(list(self.data.image_shape)),
            "epoch": str(self.epoch),
            "threads": str(self.threads),
            "param_groups": json.dumps(optimizer_state["param_groups"]),
            "optimizer_scalars": json.dumps(scalars),
            "trainer": json.dumps(
                {
                    "best_loss": self.best_loss,
                    "best_epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                    "history": self.history,
                    "reference_loss": self.reference_loss,
                    "last_finite_loss": self.last_finite_loss,
                }
            ),
        }
        return save(tensors, metadata)

    def save_checkpoint(self, run_dir: Path) -> None:
        atomic_write_bytes(run_dir / CHECKPOINT_FILE, self.checkpoint_bytes())

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state `save_checkpoint` wrote. A checkpoint that does not belong to this
        run (other config, missing or mis-shaped tensors, damaged metadata) is a RunFolderError
        that says why; nothing is unpickled."""
        tensors, metadata = read_safetensors(path)
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise RunFolderError(f"{path} is not an aelab checkpoint (format {metadata.get('format')!r})")
        try:
            saved_config = json.loads(metadata["config"])
        except (KeyError, json.JSONDecodeError):
            raise RunFolderError(f"{path}: its metadata lacks a readable config; the file is damaged") from None
        with contextlib.suppress(AelabError):  # fill in keys added since (data.fingerprint); invalid: differs
            saved_config = RunConfig.from_dict(upgrade_config_dict(saved_config)).to_dict()
        if saved_config != self.config.to_dict():
            changed = sorted(
                f"{section}.{key}"
                for section, values in self.config.to_dict().items()
                for key, value in values.items()
                if not isinstance(saved_config.get(section), dict) or saved_config[section].get(key) != value
            )
            raise RunFolderError(
                f"{path} was written for another config than this run's {CONFIG_FILE} "
                f"(differs in {', '.join(changed[:3]) or 'its sections'}); restore {CONFIG_FILE} or start a new run"
            )
        model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
        load_weights(self.model, model_state, path)
        best = {k.removeprefix("best/"): v for k, v in tensors.items() if k.startswith("best/")}
        if best:
            load_weights(self.model, best, path)  # checks names and shapes; the real weights follow
            load_weights(self.model, model_state, path)
        try:
            state: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer/"):
                    _, index, name = key.split("/", 2)
                    state.setdefault(int(index), {})[name] = value
            for index, values in json.loads(metadata["optimizer_scalars"]).items():
                state.setdefault(int(index), {}).update(values)
            parameters = list(self.model.parameters())
            for index, values in state.items():
                for name, value in values.items():
                    if isinstance(value, torch.Tensor) and value.ndim and value.shape != parameters[index].shape:
                        raise ValueError(
                            f"optimizer {name} of parameter {index} has shape {tuple(value.shape)}, "
                            f"the parameter has {tuple(parameters[index].shape)}"
                        )
            self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
            self.order_generator.set_state(tensors["rng/order"])
            self.binarize_generator.set_state(tensors["rng/binarize"].to(self.binarize_generator.device))
            trainer = json.loads(metadata["trainer"])
            epoch = int(metadata["epoch"])
            history = trainer["history"]
            if not isinstance(history, list) or len(history) != epoch:
                raise ValueError(f"epoch {epoch} but {len(history)} history rows")
            self.best_loss = float(trainer["best_loss"])
            self.best_epoch = int(trainer["best_epoch"])
            self.bad_epochs = int(trainer["bad_epochs"])
            self.reference_loss = trainer.get("reference_loss")
            self.last_finite_loss = trainer.get("last_finite_loss")
        except KeyError as error:
            raise RunFolderError(f"{path}: the checkpoint lacks {error}; the file is damaged") from None
        except (ValueError, TypeError, IndexError, RuntimeError, json.JSONDecodeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RunFolderError(f"{path}: the checkpoint does not match this run ({first})") from None
        self.best_state = {k: v.to(self.device) for k, v in best.items()} or None
        self.epoch = epoch
        self.history = history


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
            trainer = Trainer(config, data)
            if run_dir is not None:
                check_free_space(run_dir, estimate_run_bytes(trainer))
                save_config(run_dir, config)
                write_status(run_dir, "running", epochs_done=0, threads=trainer.threads)
            callbacks = run_callbacks(callbacks, run_dir, loggers, doctor=doctor, report=report)
            return _train_loop(trainer, run_dir, progress, callbacks)


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
            trainer = Trainer(config, data)
            if (run_dir / CHECKPOINT_FILE).exists():
                trainer.load_checkpoint(run_dir / CHECKPOINT_FILE)
            else:
                check_free_space(run_dir, estimate_run_bytes(trainer))
            resumed_from = trainer.epoch
            log.info(
                "resuming %s after epoch %d of %d on %d threads",
                run_dir, resumed_from, config.train.epochs, trainer.threads,
            )  # fmt: skip
            write_status(run_dir, "running", epochs_done=trainer.epoch, threads=trainer.threads)
            result = _train_loop(trainer, run_dir, progress, run_callbacks(callbacks, run_dir, loggers))
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


def estimate_run_bytes(trainer: Trainer) -> int:
    """An upper estimate of the disk space a run folder needs at its peak, in bytes: while a
    checkpoint is replaced the old and the new one exist side by side."""
    weight_bytes = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    # weights, up to two optimizer moments per weight, the best epoch's weights when early stopping
    copies = 3 + (1 if trainer.config.train.patience is not None else 0)
    history_bytes = 512 * trainer.config.train.epochs  # one metrics row per epoch, in two files
    checkpoint_bytes = copies * weight_bytes + history_bytes
    return 2 * checkpoint_bytes + weight_bytes + history_bytes + REPORT_BYTES + (1 << 16)


def thread_count(config: RunConfig, data: ImageData, members: int = 1) -> int:
    """The CPU threads a run trains with: `train.threads` when it is a count, else
    `choose_threads` by its rule ("auto" or "load") for one step of `members` stacked runs.
    Sets nothing; `aelab.fast.torch_threads` applies the count for a block."""
    threads = config.train.threads
    if isinstance(threads, int):
        return threads
    return choose_threads(members * config.train.batch_size * data.num_pixels, threads)


def _train_loop(trainer: Trainer, run_dir: Path | None, progress: bool, callbacks: list[Callback]) -> TrainResult:
    if run_dir is not None and trainer.epoch == 0:
        trainer.save_checkpoint(run_dir)  # the state to fall back on should epoch 1 diverge
    try:
        for callback in callbacks:
            callback.on_train_start(trainer, run_dir)
    except AelabError as error:  # a callback stopped the run before its first step (Doctor(strict=True))
        if run_dir is not None:
            write_status(run_dir, "stopped", epochs_done=trainer.epoch, message=str(error))
        raise
    on_step = step_hook(callbacks, trainer)
    while not trainer.should_stop:
        try:
            row = trainer.run_epoch(progress, on_step)
        except DivergenceError as error:
            raise record_divergence(trainer, run_dir, error) from None
        end_epoch(trainer, row, run_dir, progress, callbacks)
    return finish_run(trainer, run_dir, callbacks)


def end_epoch(
    trainer: Trainer,
    row: dict[str, Any],
    run_dir: Path | None,
    progress: bool,
    callbacks: list[Callback],
    echo: bool = True,
) -> None:
    """After an epoch's row is recorded: the callbacks' additions merged into the row (and so
    into the history), the log line, the checkpoint, then the loggers and the status. The
    checkpoint is written before the loggers, so metrics.jsonl never runs ahead of it."""
    config = trainer.config
    row.update(epoch_extras(callbacks, trainer, row, run_dir))
    message = (
        f"epoch {row['epoch']}/{config.train.epochs}  train {config.train.loss} {row['train_loss']:.4f}  "
        f"val {row['val_loss']:.4f}  val mse {row['val_mse']:.4f}  ({row['seconds']:.1f}s)"
    )
    if progress and echo:
        tqdm.write(message)
    log.info(message)
    if run_dir is not None:
        trainer.save_checkpoint(run_dir)
    logged = MappingProxyType(row)
    for callback in callbacks:
        if isinstance(callback, Logger):
            callback.log_epoch(trainer, logged, run_dir)
    if run_dir is not None:
        write_status(run_dir, "running", epochs_done=trainer.epoch, threads=trainer.threads)


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
            threads=trainer.threads,
        )
    trainer.model.eval()
    result = TrainResult(trainer.model, trainer.history, run_dir, trainer.best_epoch, stopped_early)
    for callback in callbacks:
        callback.on_train_end(trainer, result)
    return result


def record_divergence(trainer: Trainer, run_dir: Path | None, error: DivergenceError) -> DivergenceError:
    """Mark the run folder diverged and add a "divergence" finding; the checkpoint on disk is
    left as it is (the last good epoch). Returns the error to raise, naming that checkpoint."""
    evidence = dict(getattr(error, "evidence", {}))
    if run_dir is None:
        return error
    message = f"{error}; the last good checkpoint (epoch {trainer.epoch}) is kept in {run_dir}"

    def number(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    explanation = (
        f"At learning rate {number(evidence.get('learning_rate'))} the training loss went from "
        f"{number(evidence.get('first_loss'))} at the first step to {number(evidence.get('loss'))} at step "
        f"{evidence.get('step')} (last finite loss {number(evidence.get('last_finite_loss'))}). Steps that large "
        "overshoot, so the weights grow until the loss explodes or turns NaN."
    )
    finding = Finding(
        id="divergence",
        severity="error",
        title=f"training diverged at step {evidence.get('step')} (epoch {evidence.get('epoch')})",
        evidence=evidence,
        explanation=explanation,
        fix="lower the learning rate (10x is a good first step), or try another loss or activation",
        epoch=evidence.get("epoch"),
    )
    others = [f for f in read_findings(run_dir) if f.id != "divergence"]
    save_findings(run_dir, [*others, finding])
    write_status(
        run_dir, "diverged", epochs_done=trainer.epoch, step=evidence.get("step"), message=str(error),
        threads=trainer.threads,
    )  # fmt: skip
    diverged = DivergenceError(message)
    diverged.evidence = evidence  # type: ignore[attr-defined]
    return diverged
