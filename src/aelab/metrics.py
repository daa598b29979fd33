"""Metrics on equal footing: computed from the pixels a model outputs, whatever loss trained it.

All functions take `pixels` and `target` of shape (B, C, H, W) (or any (B, ...) where noted)
and return per-image values (B,) or, for statistics of a whole set of images, a float. The
summary of a per-image metric is its mean over images.

The pixels are what the model shows (`aelab.train.model_pixels`): the output activation's
values, or the continuous Bernoulli mean for a cb-trained model. A BCE-trained and an
MSE-trained model are therefore scored on the same images by the same rules.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from aelab.losses import bce, bce_floor, cb, mae, mse

SSIM_WINDOW = 7  # skimage's default window; shrunk to the image size for small images (8x8 digits)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004's constants


def psnr(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, 10 log10(range^2 / MSE). Identical images
    are capped at 100 dB (MSE floored at range^2 * 1e-10) so means stay finite."""
    error = mse(pixels, target, from_logits=False).clamp_min(data_range**2 * 1e-10)
    return 10 * torch.log10(data_range**2 / error)


def ssim(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (Wang, Bovik, Sheikh & Simoncelli, "Image quality
    assessment: from error visibility to structural similarity", IEEE TIP 2004). Shape (B,).

    Convention (skimage's `structural_similarity` defaults): a w x w uniform window with
    w = min(7, H, W), so it fits 8x8 digits (and anything down to 1x1) where the Gaussian 11x11
    window of the paper does not; only window positions that lie wholly inside the image
    ("valid", no padding); sample (co)variances (divided by w*w - 1); C1 = (0.01 L)^2,
    C2 = (0.03 L)^2 with L = data_range. The SSIM map is averaged over positions and
    channels. Identical images score exactly 1; independent noise scores about 0.
    """
    if pixels.shape != target.shape or pixels.ndim != 4:
        shapes = f"{tuple(pixels.shape)} and {tuple(target.shape)}"
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {shapes}")
    window = min(SSIM_WINDOW, pixels.shape[-2], pixels.shape[-1])
    x, y = pixels.double(), target.double()
    count = window * window
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731 - valid positions only
    mean_x, mean_y = pool(x), pool(y)
    correction = count / (count - 1) if count > 1 else 1.0
    var_x = (pool(x * x) - mean_x * mean_x) * correction
    var_y = (pool(y * y) - mean_y * mean_y) * correction
    cov = (pool(x * y) - mean_x * mean_y) * correction
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).to(pixels.dtype)


def intensity_bias(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean output pixel minus mean target pixel, per image (B,). Negative: the model dims the
    image (MAE's median-seeking pull on mostly-black MNIST); positive: it brightens it."""
    return pixels.flatten(1).mean(dim=1) - target.flatten(1).mean(dim=1)


def blob_score(pixels: torch.Tensor, target: torch.Tensor) -> float:
    """How much the reconstructions vary from image to image, relative to the data: the
    per-pixel variance across images, summed over pixels, of `pixels` divided by that of
    `target`. 0 for a model that outputs the same image whatever the input (a blob); about 1
    when the reconstructions vary as much as the images do; a linear projection onto k
    directions scores the share of variance those k directions explain. NaN when the targets
    do not vary (fewer than two images, or identical images)."""
    if pixels.shape[0] < 2:
        return math.nan
    spread = pixels.flatten(1).double().var(dim=0).sum()
    data_spread = target.flatten(1).double().var(dim=0).sum()
    return float(spread / data_spread) if data_spread > 0 else math.nan


def edge_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (down and across), per image (B,)."""
    down = (images[..., 1:, :] - images[..., :-1, :]).square().flatten(1).mean(dim=1)
    across = (images[..., :, 1:] - images[..., :, :-1]).square().flatten(1).mean(dim=1)
    return down + across


def sharpness(pixels: torch.Tensor, target: torch.Tensor) -> float:
    """Edge energy of the reconstructions over that of the targets (means over images): 1 means
    edges as crisp as the data's, below 1 blurred, above 1 noisier than the data. NaN when the
    targets have no edges at all."""
    data = float(edge_energy(target.double()).mean())
    return float(edge_energy(pixels.double()).mean()) / data if data > 0 else math.nan


def probe_accuracy(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    val_codes: torch.Tensor,
    val_labels: torch.Tensor,
    max_iter: int = 200,
) -> float:
    """Linear-probe accuracy of codes: a logistic regression (scikit-learn, L2, C=1) fitted on
    standardised training codes (N, latent_dim) and their labels, scored on validation codes.
    It says how much label information a straight line can read from the codes. NaN with
    fewer than two classes in the training labels."""
    from sklearn.exceptions import ConvergenceWarning  # deferred: scikit-learn imports slowly
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    labels = train_labels.cpu().numpy()
    if len(set(labels.tolist())) < 2:
        return math.nan
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    # One BLAS thread: the problem is small, and BLAS threads spinning against torch's own
    # made the fit 40x slower on 2 cores (1 s instead of 0.03 s for 5,000 codes of 50).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # A probe that has not fully converged still measures what it should; collapsed codes
        # (all equal) make the scaler divide by zero, which it handles.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        probe.fit(train_codes.double().cpu().numpy(), labels)
        return float(probe.score(val_codes.double().cpu().numpy(), val_labels.cpu().numpy()))


def reconstruction_metrics(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> dict[str, float]:
    """Mean over images of MSE, MAE, BCE (pixels clipped as Keras does), BCE excess over the
    targets' entropy floor, continuous-Bernoulli NLL, PSNR, SSIM and intensity bias; plus the
    set's blob score and sharpness. SSIM needs (B, C, H, W) images; it is NaN otherwise."""
    bce_values = bce(pixels, target, from_logits=False)
    floor = bce_floor(target)
    return {
        "mse": float(mse(pixels, target, from_logits=False).mean()),
        "mae": float(mae(pixels, target, from_logits=False).mean()),
        "bce": float(bce_values.mean()),
        "bce_excess": float((bce_values - floor).mean()) if torch.isfinite(floor).all() else math.nan,
        "cb_nll": float(cb(pixels, target, from_logits=False).mean()),
        "psnr": float(psnr(pixels, target, data_range).mean()),
        "ssim": float(ssim(pixels, target, data_range).mean()) if pixels.ndim == 4 else math.nan,
        "intensity_bias": float(intensity_bias(pixels, target).mean()),
        "blob_score": blob_score(pixels, target),
        "sharpness": sharpness(pixels, target) if pixels.ndim == 4 else math.nan,
    }
