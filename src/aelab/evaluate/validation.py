"""The validation set, built once per run, and `evaluate(model, likelihood, validation)`.

Training (every epoch), folder evaluation (`aelab.evaluate.evaluate_run`), the report and the
doctor all score a model with the functions here, so a number means the same everywhere.

`Validation` holds a run's validation targets as stored (uint8 for images that came as uint8;
binarised targets drawn once with a fixed seed and kept as uint8 zeros and ones), turned into
floats one chunk of EVAL_CHUNK images at a time, and what depends on the targets alone, computed
once: each chunk's BCE floor, each likelihood's floor, the targets' spread (for the blob score
and sharpness) and the data range.

A VAE (`aelab.nn.variational`) is scored through its posterior mean's reconstruction like any
model, and gets its own metrics besides (`aelab.evaluate.variational`): its val_loss is then its
negative ELBO in nats per image.

`evaluate(..., full=False)` gives the numbers a training epoch needs (CHEAP_METRICS: the
validation loss and its excess over the floor, MSE and the blob score, the curves the report
draws); `full=True` adds every equal-footing metric. Both share one pass, so the cheap numbers
are the same digits in either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from aelab.config import DataConfig
from aelab.data import ImageData, prepare_batch
from aelab.evaluate.metrics import ImageSpread, SetStatistics, image_metrics
from aelab.likelihoods import LIKELIHOODS, Likelihood
from aelab.losses import bce_floor
from aelab.nn.variational import VariationalAutoencoder, is_variational

EVAL_CHUNK = 256  # images per forward pass and metrics pass: bounds the temporaries

# The numbers every training epoch records; the others come with `full=True` (see `evaluate`).
CHEAP_METRICS = ("val_loss", "val_loss_excess", "val_mse", "val_blob_score")

# (output, logits) for `Likelihood.nll` / `Likelihood.mean` from a batch of images: how a model
# is run (`model_forward` for aelab's models; the doctor's `Subject.loss_input` for any module).
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, bool]]


class Validation:
    """One run's validation targets and what depends on them alone.

    stored: (N, C, H, W) in the data's own dtype; scale: the factor that makes them floats in
    the model's range (1.0 for binarised targets)."""

    def __init__(self, stored: torch.Tensor, scale: float, chunk: int = EVAL_CHUNK) -> None:
        self.stored = stored
        self.scale = scale
        self.chunk = chunk
        self.bce_floors: list[torch.Tensor] = []  # (B,) per chunk
        self.spread = ImageSpread()  # the targets' per-pixel variance and edge energy
        for _, batch in self.chunks():  # one pass over the targets for both
            self.bce_floors.append(bce_floor(batch))
            self.spread.update(batch)
        stored_max = float(stored.max()) if stored.numel() else 1.0
        self.data_range = max(1.0, stored_max * scale)
        self._floors: dict[str, float] = {}

    @classmethod
    def build(cls, data: ImageData, config: DataConfig, seed: int, device: torch.device | str = "cpu") -> Validation:
        """The validation set of a run on `data` with data settings `config`; binarised targets
        are drawn once from a generator seeded with `seed` (a run uses its train.seed + 2)."""
        val = data.val.to(device)
        if config.binarize == "none":
            return cls(val, data.scale)
        binary = torch.empty(val.shape, dtype=torch.uint8, device=val.device)
        generator = torch.Generator(device=val.device).manual_seed(seed)
        for start in range(0, val.shape[0], EVAL_CHUNK):
            chunk = val[start : start + EVAL_CHUNK]
            binary[start : start + EVAL_CHUNK] = prepare_batch(
                chunk, data.scale, config.binarize, config.threshold, generator
            ).to(torch.uint8)
        return cls(binary, 1.0)

    @property
    def count(self) -> int:
        return self.stored.shape[0]

    @property
    def device(self) -> torch.device:
        return self.stored.device

    def batch(self, start: int, end: int) -> torch.Tensor:
        """Validation targets start:end as float model inputs (B, C, H, W)."""
        return prepare_batch(self.stored[start:end], self.scale)

    @property
    def targets(self) -> torch.Tensor:
        """All validation targets as floats (a full-size copy; evaluation works in chunks)."""
        return self.batch(0, self.count)

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, float targets) for each chunk of `chunk` images, in order."""
        for index, start in enumerate(range(0, self.count, self.chunk)):
            yield index, self.batch(start, start + self.chunk)

    def means(self, means: Callable[[int, torch.Tensor], dict[str, Any]]) -> dict[str, float]:
        """`means(index, chunk)` (a dict of means over the images of chunk `index`) over every
        chunk, weighted by chunk size: the means over all images, with temporaries the size of
        one chunk."""
        totals: dict[str, float] = {}
        for index, chunk in self.chunks():
            for name, value in means(index, chunk).items():
                totals[name] = totals.get(name, 0.0) + float(value) * chunk.shape[0] / self.count
        return totals

    def floor(self, likelihood: Likelihood) -> float:
        """The mean over images of the likelihood's floor on these targets (NaN when unknown)."""
        if likelihood.name not in self._floors:

            def chunk_floor(index: int, chunk: torch.Tensor) -> dict[str, Any]:
                floor = self.bce_floors[index] if likelihood.floor is bce_floor else likelihood.lowest(chunk)
                return {"floor": floor.mean()}

            self._floors[likelihood.name] = self.means(chunk_floor)["floor"]
        return self._floors[likelihood.name]


def model_forward(model: torch.nn.Module) -> Forward:
    """How an aelab `Autoencoder` is scored: its logits as its likelihood reads them (a VAE's:
    those of its posterior mean's decoding)."""
    return lambda images: model.loss_input(model(images))  # type: ignore[operator]


@torch.no_grad()
def reconstruct(
    forward: Forward, likelihood: Likelihood, images: torch.Tensor, chunk: int = EVAL_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, per-image NLL (B,)) for float images, in chunks: the pixels are the
    likelihood's mean, what the model shows."""
    pixels, losses = [], []
    for start in range(0, images.shape[0], chunk):
        output, logits = forward(images[start : start + chunk])
        losses.append(likelihood.nll(output, images[start : start + chunk], logits=logits))
        pixels.append(likelihood.mean(output, logits=logits))
    if len(pixels) == 1:  # one chunk (as `evaluate` calls it): no copy
        return pixels[0], losses[0]
    return torch.cat(pixels), torch.cat(losses)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    likelihood: Likelihood | str,
    validation: Validation,
    *,
    full: bool = True,
    forward: Forward | None = None,
) -> dict[str, float]:
    """A model's validation metrics, keyed as in metrics.jsonl (val_*).

    full=False: CHEAP_METRICS only. full=True: also every metric of `image_metrics` and the
    sharpness. A VAE also gets `aelab.evaluate.variational`'s metrics (cheap or full alike)
    unless `forward` is given. The model is run in eval mode and put back in the mode it had. `forward`: how
    to run it (default `model_forward(model)`)."""
    likelihood = LIKELIHOODS[likelihood] if isinstance(likelihood, str) else likelihood
    as_aelab_runs_it = forward is None  # a VAE's own metrics need its posterior
    forward = forward or model_forward(model)
    statistics = SetStatistics(target=validation.spread, edges=full)
    was_training = model.training
    model.eval()
    try:

        def chunk_metrics(index: int, targets: torch.Tensor) -> dict[str, Any]:
            pixels, losses = reconstruct(forward, likelihood, targets, chunk=targets.shape[0])
            statistics.update(pixels)
            if not full:
                mse = losses if likelihood.name == "mse" else LIKELIHOODS["mse"].nll_from_pixels(pixels, targets)
                return {"loss": losses.mean(), "mse": mse.mean()}
            # The run's own loss column is its loss from the logits: the same quantity as from
            # the pixels, exact where they saturate, so that column equals val_loss.
            own = {likelihood.name: losses}
            metrics = image_metrics(
                pixels, targets, validation.data_range, bce_floors=validation.bce_floors[index], loss_values=own
            )
            return {"loss": losses.mean(), **metrics}

        # Per-image metrics are means over images, so chunk means weighted by chunk size give
        # the same values; the set-level ratios (blob score, sharpness) come from sums
        # accumulated over the chunks.
        means = validation.means(chunk_metrics)
    finally:
        model.train(was_training)
    means["blob_score"] = statistics.blob_score()
    if full:
        means["sharpness"] = statistics.sharpness()
    val_loss = means.pop("loss")
    floor = validation.floor(likelihood)
    metrics: dict[str, Any] = {
        "val_loss": val_loss,
        "val_loss_excess": val_loss - floor if math.isfinite(floor) else math.nan,
        **{f"val_{name}": value for name, value in means.items()},
    }
    if as_aelab_runs_it and is_variational(model):
        metrics.update(_variational_rows(model, likelihood, validation, floor, full))  # type: ignore[arg-type]
    return metrics


def _variational_rows(
    model: VariationalAutoencoder, likelihood: Likelihood, validation: Validation, floor: float, full: bool
) -> dict[str, Any]:
    """A VAE's metrics (`aelab.evaluate.variational`); its val_loss is its negative ELBO in nats
    per image (what it trains on, at beta 1), and val_loss_excess that less the likelihood's
    floor summed over pixels, a lower bound of the negative ELBO since the KL is >= 0."""
    from aelab.evaluate.variational import variational_metrics

    was_training = model.training
    model.eval()
    try:
        rows = variational_metrics(model, likelihood, validation, full=full)
    finally:
        model.train(was_training)
    val_loss = -rows["val_elbo"]
    pixels = validation.stored[0].numel()
    floor_nats = (floor + likelihood.density_constant) * pixels
    rows["val_loss"] = val_loss
    rows["val_loss_excess"] = val_loss - floor_nats if math.isfinite(floor) else math.nan
    return rows
