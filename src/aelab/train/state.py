"""One run's training state: its model, optimizer, generators, data on the device, validation
set, divergence guard, epoch counter, history and early-stopping bookkeeping.

`RunState` is what a checkpoint holds (`aelab.train.checkpoint`) and what callbacks see as
their `trainer` argument. It trains nothing itself: a step (`aelab.train.steps`) changes its
weights and the loop (`aelab.train.loop`) drives both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from aelab.config import RunConfig, TrainConfig
from aelab.data import ImageData, check_data_config, prepare_batch
from aelab.errors import ConfigError, DataError
from aelab.evaluate.regularized import NOISY_VALIDATION_SEED_OFFSET
from aelab.evaluate.validation import Validation, evaluate
from aelab.likelihoods import get_likelihood
from aelab.nn.models import build_model, check_model_fits_loss
from aelab.regularizers import Regularization
from aelab.runs import FolderWriter, atomic_write_bytes
from aelab.train.divergence import DivergenceGuard
from aelab.train.fast import fast_optimizer

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
    get_likelihood(config.train.loss)
    check_model_fits_loss(config.model, config.train.loss)
    if config.model.variational:  # VariationalStep trains on the clean ELBO: refused, never ignored
        for key in ("noise", "sparsity", "contractive"):
            if getattr(config.train, key) != getattr(TrainConfig, key):
                raise ConfigError(
                    template=f"train.{key} is not implemented for VAEs; drop {{train.{key}}} or {{model.variational}}"
                )
    if not config.model.variational:
        for key in ("beta", "kl_warmup_epochs", "free_bits"):
            if getattr(config.train, key) != getattr(TrainConfig, key):
                raise ConfigError(
                    template=f"train.{key} applies to VAEs only; drop {{train.{key}}} or add {{model.variational}}"
                )
    if config.train.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.train.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    Regularization.from_config(config.train, config.model.code_activation or config.model.activation)


# Seeds a run derives from train.seed: init (seed), data order (+0), binarisation (+1), binarised
# validation targets (+2), input noise (+3), the corrupted validation inputs (+4,
# `aelab.evaluate.regularized.NOISY_VALIDATION_SEED_OFFSET`), a VAE's reparameterisation draws (+5).
NOISE_SEED_OFFSET = 3
SAMPLE_SEED_OFFSET = 5


class RunState:
    """One run's state. validation: the run's validation set when the caller built it already
    (stacked runs on the same targets share one), else it is built here."""

    def __init__(
        self,
        config: RunConfig,
        data: ImageData,
        device: torch.device | None = None,
        validation: Validation | None = None,
    ) -> None:
        from aelab.train.steps import choose_engine

        check_config(config, data_keys=False)
        self.config = config
        self.data = data
        self.device = device or resolve_device(config.train.device)
        # The CPU threads this run computes with (set by `train`, `resume` or `train_ensemble`
        # before building the state); recorded in checkpoints and status.json for resume.
        self.threads = torch.get_num_threads()
        seed = config.train.seed
        self.likelihood = get_likelihood(config.train.loss)
        self.model = build_model(config.model, data.image_shape, seed=seed, loss=config.train.loss).to(self.device)
        self._check_fits()
        self.optimizer = OPTIMIZERS[config.train.optimizer](self.model.parameters(), config.train)
        # "fast" (the hand-written dense step) or "autograd", decided from the whole config.
        self.engine = choose_engine(config, self.model)
        if self.engine == "fast":
            self.optimizer = fast_optimizer(self.optimizer)  # the same update in one fused kernel
        # Separate generators: data order and binarisation draws never disturb each other.
        self.order_generator = torch.Generator().manual_seed(seed)
        self.binarize_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        # A VAE's reparameterisation draws (saved in its checkpoints, so a resume is exact).
        self.sample_generator = torch.Generator(device=self.device).manual_seed(seed + SAMPLE_SEED_OFFSET)
        self.train_images = data.train.to(self.device)
        self.validation = validation or Validation.build(data, config.data, seed + 2, self.device)
        # Denoising, sparse and contractive training (`aelab.regularizers`); the noise is drawn
        # from a generator of the run's own, saved in its checkpoints when the run uses it.
        self.regularization = Regularization.from_config(
            config.train, config.model.code_activation or config.model.activation
        )
        self.noise_generator = torch.Generator(device=self.device).manual_seed(seed + NOISE_SEED_OFFSET)
        self.guard = DivergenceGuard(config.train.learning_rate, self.steps_per_epoch)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        # While `fit` trains the run, the writer its folder's own files go through (in order, on
        # a background thread); None: they are written at once.
        self.writer: FolderWriter | None = None

    def write_file(self, path: Path, data: bytes) -> None:
        """One of the run folder's own files, replaced atomically: handed to `writer` while
        `fit` trains the run, else written now."""
        if self.writer is not None:
            self.writer.write(path, data)
        else:
            atomic_write_bytes(path, data)

    def flush_writes(self) -> None:
        """Wait until the files handed to `writer` are on disk (before reading the folder, or
        writing to it directly); raises a failed write's error."""
        if self.writer is not None:
            self.writer.flush()

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
        values = getattr(self.model, "output_values", 1)  # one value per pixel, or the likelihood's decoded ones
        expected = (sample.shape[0], sample.shape[1] * values, *sample.shape[2:])
        if tuple(logits.shape) != expected:  # pragma: no cover - the models mirror their input
            raise DataError(f"model outputs {tuple(logits.shape)} for inputs {tuple(sample.shape)}")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_images.shape[0] / self.config.train.batch_size)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Training images `indices` as model inputs (B, C, H, W), binarised as the config says
        (Bernoulli draws from this run's own generator)."""
        data = self.config.data
        return prepare_batch(
            # index_select: a dozen times faster than advanced indexing for a batch of uint8 rows
            self.train_images.index_select(0, indices),
            self.data.scale,
            data.binarize,
            data.threshold,
            self.binarize_generator,
        )

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """The model's inputs for training images (..., C, H, W): a fresh corruption from the
        run's noise generator for a denoising run (the images, the targets, stay as they were),
        else the images themselves."""
        noise = self.regularization.noise
        if noise is None:
            return images
        return noise.corrupt(images, self.validation.data_range, self.noise_generator)

    def regularization_metrics(self) -> dict[str, float]:
        """What a regularised run adds to each epoch's row (`aelab.evaluate.regularized`): the
        scores on noisy validation inputs for a denoising run, the code's activity for any."""
        from aelab.evaluate.regularized import code_metrics, denoising_metrics

        if not self.regularization.active:
            return {}
        metrics = {}
        noise = self.regularization.noise
        if noise is not None:
            seed = self.config.train.seed + NOISY_VALIDATION_SEED_OFFSET
            metrics.update(denoising_metrics(self.model, self.likelihood, self.validation, noise, seed))
        metrics.update(code_metrics(self.model, self.validation))
        return metrics

    def record_epoch(self, train_loss: float, train_seconds: float) -> dict[str, Any]:
        """Evaluate the epoch just trained, append its metrics row to the history and track the
        best epoch. Every epoch records the cheap validation numbers (`aelab.evaluate.CHEAP_METRICS`:
        the validation loss, as Keras' `fit(validation_data=...)` computes it, MSE and the blob
        score); the run's last epoch (its epochs reached, or early stopping ending it there) records
        every metric, so the last row of metrics.jsonl always holds the complete set."""
        started = time.perf_counter()
        full = self.epoch + 1 >= self.config.train.epochs
        metrics = evaluate(self.model, self.likelihood, self.validation, full=full)
        self.epoch += 1
        if metrics["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = metrics["val_loss"], self.epoch, 0
            if self.config.train.patience is not None:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if not full and self.should_stop:  # early stopping ends here: the last row is complete
            metrics = evaluate(self.model, self.likelihood, self.validation, full=True)
        metrics = {**metrics, **self.regularization_metrics()}
        row: dict[str, Any] = {"epoch": self.epoch, "train_loss": train_loss, **metrics}
        row["seconds"] = round(train_seconds + time.perf_counter() - started, 4)
        self.history.append(row)
        return row

    @property
    def should_stop(self) -> bool:
        patience = self.config.train.patience
        return self.epoch >= self.config.train.epochs or (patience is not None and self.bad_epochs >= patience)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def estimate_run_bytes(self, report_bytes: int) -> int:
        """An upper estimate of the disk space the run folder needs at its peak, in bytes:
        while a checkpoint is replaced the old and the new one exist side by side."""
        weight_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        # weights, up to two optimizer moments per weight, the best epoch's weights when early stopping
        copies = 3 + (1 if self.config.train.patience is not None else 0)
        history_bytes = 512 * self.config.train.epochs  # one metrics row per epoch, in two files
        checkpoint_bytes = copies * weight_bytes + history_bytes
        return 2 * checkpoint_bytes + weight_bytes + history_bytes + report_bytes + (1 << 16)
