"""Metrics on equal footing: computed from the pixels a model outputs, whatever loss trained it.

All functions take `pixels` and `target` of shape (B, C, H, W) (or any (B, ...)) and return
per-image values (B,) or a float; the summary is the mean over images.
"""

from __future__ import annotations

import math

import torch

from aelab.losses import bce, bce_floor, cb, mae, mse


def psnr(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, 10 log10(range^2 / MSE). Identical images
    are capped at 100 dB (MSE floored at range^2 * 1e-10) so means stay finite."""
    error = mse(pixels, target, from_logits=False).clamp_min(data_range**2 * 1e-10)
    return 10 * torch.log10(data_range**2 / error)


def reconstruction_metrics(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> dict[str, float]:
    """Mean over images of MSE, MAE, BCE (pixels clipped as Keras does), BCE excess over the
    targets' entropy floor, continuous-Bernoulli NLL and PSNR."""
    bce_values = bce(pixels, target, from_logits=False)
    floor = bce_floor(target)
    return {
        "mse": float(mse(pixels, target, from_logits=False).mean()),
        "mae": float(mae(pixels, target, from_logits=False).mean()),
        "bce": float(bce_values.mean()),
        "bce_excess": float((bce_values - floor).mean()) if torch.isfinite(floor).all() else math.nan,
        "cb_nll": float(cb(pixels, target, from_logits=False).mean()),
        "psnr": float(psnr(pixels, target, data_range).mean()),
    }
