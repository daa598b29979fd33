"""The numbers a regularised run adds to its validation metrics (`aelab.regularizers`).

- `denoising_metrics`: a denoising run scored on corrupted validation inputs, the clean images
  its targets: how well it reconstructs a clean image from a noisy one. The noise is drawn from
  a generator seeded with a fixed seed on every call, so every epoch (and every later
  evaluation) corrupts the validation set identically.
- `code_metrics`: the code's mean activation and the share of its values near zero, over the
  clean validation images (what a sparsity penalty changes).
"""

from __future__ import annotations

from typing import Any

import torch

from aelab.evaluate.validation import Validation, model_forward, reconstruct
from aelab.likelihoods import LIKELIHOODS, Likelihood
from aelab.regularizers import NoiseSpec

# The corrupted validation inputs are drawn with train.seed + this (one of a run's seed offsets,
# listed in `aelab.train.state`): training and a later evaluation of the folder corrupt alike.
NOISY_VALIDATION_SEED_OFFSET = 4

CODE_NEAR_ZERO = 1e-2  # |activation| at or below this counts as a silent code unit


@torch.no_grad()
def noisy_validation(validation: Validation, noise: NoiseSpec, seed: int) -> list[torch.Tensor]:
    """Each chunk of `validation` corrupted by `noise`, from a generator seeded with `seed`."""
    generator = torch.Generator(device=validation.device).manual_seed(seed)
    return [noise.corrupt(chunk, validation.data_range, generator) for _, chunk in validation.chunks()]


@torch.no_grad()
def denoising_metrics(
    model: torch.nn.Module, likelihood: Likelihood | str, validation: Validation, noise: NoiseSpec, seed: int
) -> dict[str, float]:
    """val_noisy_loss and val_noisy_mse: the likelihood's NLL and the MSE (means over pixels and
    images) of the model's reconstruction of the clean validation images from their corrupted
    copies (`noisy_validation(validation, noise, seed)`). The model is run in eval mode and put
    back in the mode it had."""
    likelihood = LIKELIHOODS[likelihood] if isinstance(likelihood, str) else likelihood
    forward = model_forward(model)
    noisy = noisy_validation(validation, noise, seed)
    was_training = model.training
    model.eval()
    try:

        def chunk_metrics(index: int, targets: torch.Tensor) -> dict[str, Any]:
            output, logits = forward(noisy[index])
            losses = likelihood.nll(output, targets, logits=logits)
            pixels = likelihood.mean(output, logits=logits)
            return {"loss": losses.mean(), "mse": LIKELIHOODS["mse"].nll_from_pixels(pixels, targets).mean()}

        means = validation.means(chunk_metrics)
    finally:
        model.train(was_training)
    return {"val_noisy_loss": means["loss"], "val_noisy_mse": means["mse"]}


@torch.no_grad()
def code_metrics(model: torch.nn.Module, validation: Validation) -> dict[str, float]:
    """val_code_mean (the code's mean activation over units and images, the Keras blog's
    `encoded_imgs.mean()`) and val_code_near_zero (the share of code values with
    |activation| <= CODE_NEAR_ZERO) on the clean validation images."""
    was_training = model.training
    model.eval()
    try:

        def chunk_metrics(index: int, images: torch.Tensor) -> dict[str, Any]:
            code = model.encode(images)  # type: ignore[operator]
            return {"mean": code.mean(), "near_zero": (code.abs() <= CODE_NEAR_ZERO).float().mean()}

        means = validation.means(chunk_metrics)
    finally:
        model.train(was_training)
    return {"val_code_mean": means["mean"], "val_code_near_zero": means["near_zero"]}


def reconstruct_noisy(
    model: torch.nn.Module, likelihood: Likelihood | str, images: torch.Tensor, noise: NoiseSpec, seed: int, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy images, reconstructions as pixels) for clean float images (B, C, H, W): what the
    report shows for a denoising run."""
    likelihood = LIKELIHOODS[likelihood] if isinstance(likelihood, str) else likelihood
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noisy = noise.corrupt(images, high, generator)
    was_training = model.training
    model.eval()
    try:
        pixels, _ = reconstruct(model_forward(model), likelihood, noisy)
    finally:
        model.train(was_training)
    return noisy, pixels


__all__ = ["CODE_NEAR_ZERO", "code_metrics", "denoising_metrics", "noisy_validation", "reconstruct_noisy"]
