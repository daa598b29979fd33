"""Metrics on equal footing: computed from the pixels a model outputs, whatever loss trained it.

All functions take `pixels` and `target` of shape (B, C, H, W) (or any (B, ...) where noted)
and return per-image values (B,) or, for statistics of a whole set of images, a float. The
summary of a per-image metric is its mean over images.

The pixels are what the model shows (its likelihood's mean, `Autoencoder.pixels`): the output activation's
values, or the continuous Bernoulli mean for a cb-trained model. A BCE-trained and an
MSE-trained model are therefore scored on the same images by the same rules.

Each loss column (mse, mae, bce, cb_nll) is that loss of the model's output as the loss reads
it: for mse, mae and bce the shown pixels (their parameter is their mean); for the continuous
Bernoulli its parameter lambda, the output activation's value, which is the shown pixel for
models trained with another loss but not for cb-trained ones (they show the cb mean). So a
run's own column is its validation loss; `image_metrics` takes that one from the logits
(`loss_values`), exact where float32 pixels saturate.

One definition of collapse serves the doctor and the report: blob score (`SetStatistics.blob_score`)
under `COLLAPSE_BLOB_SCORE`.
"""

from __future__ import annotations

import math
import warnings

import torch

from aelab.likelihoods import LIKELIHOODS
from aelab.losses import bce_floor, mse_from_pixels

SSIM_WINDOW = 7  # skimage's default window; shrunk to the image size for small images (8x8 digits)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004's constants
SSIM_SLICE = 64  # images per pass of the window sums

# Below this blob score the reconstructions vary across images less than a fifth as much as
# the images do: the model shows about the same picture whatever the input (a blob). The
# doctor's blob check (on its probe batch, every epoch) and the report's COLLAPSED badge (on
# the validation split) both use it.
COLLAPSE_BLOB_SCORE = 0.2

# The loss columns of every metrics row, each the named likelihood's loss of the pixels: a fixed
# set (the columns of metrics.jsonl and results.csv), whatever likelihood trained the model.
LOSS_COLUMNS = {"mse": "mse", "mae": "mae", "bce": "bce", "cb_nll": "cb"}


def is_collapsed(blob_score: float) -> bool:
    """Whether a blob score says the model collapsed to one image (NaN: unknown, not collapsed)."""
    return math.isfinite(blob_score) and blob_score < COLLAPSE_BLOB_SCORE


def psnr(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, 10 log10(range^2 / MSE). Identical images
    are capped at 100 dB (MSE floored at range^2 * 1e-10) so means stay finite."""
    error = mse_from_pixels(pixels, target).clamp_min(data_range**2 * 1e-10)
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
    # A slice of images at a time: the window sums' float64 temporaries stay a few MB.
    values = [
        _ssim_values(pixels[start : start + SSIM_SLICE], target[start : start + SSIM_SLICE], window, data_range)
        for start in range(0, pixels.shape[0], SSIM_SLICE)
    ]
    return torch.cat(values) if values else pixels.new_zeros(0)


def _ssim_values(pixels: torch.Tensor, target: torch.Tensor, window: int, data_range: float) -> torch.Tensor:
    x, y = pixels.double(), target.double()
    count = window * window

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        # window sums over valid positions, rows then columns (avg_pool2d in float64 was 5x
        # slower on a CPU)
        return t.unfold(-2, window, 1).sum(-1).unfold(-1, window, 1).sum(-1).div_(count)

    mean_x, mean_y = local_mean(x), local_mean(y)
    correction = count / (count - 1) if count > 1 else 1.0
    var_x = (local_mean(x * x) - mean_x * mean_x) * correction
    var_y = (local_mean(y * y) - mean_y * mean_y) * correction
    cov = (local_mean(x * y) - mean_x * mean_y) * correction
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).to(pixels.dtype)


def intensity_bias(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean output pixel minus mean target pixel, per image (B,). Negative: the model dims the
    image (MAE's median-seeking pull on mostly-black MNIST); positive: it brightens it."""
    return pixels.flatten(1).mean(dim=1) - target.flatten(1).mean(dim=1)


def edge_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (down and across), per image (B,)."""
    down = (images[..., 1:, :] - images[..., :-1, :]).square().flatten(1).mean(dim=1)
    across = (images[..., :, 1:] - images[..., :, :-1]).square().flatten(1).mean(dim=1)
    return down + across


class ImageSpread:
    """The per-pixel variance across a set of images and its edge energy, fed chunk by chunk
    (`update`). Per-pixel variances are merged as in Chan, Golub & LeVeque (1979), so a
    constant set has exactly 0 spread. edges=False skips the edge energy (sharpness)."""

    def __init__(self, edges: bool = True) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None  # per-pixel means so far, (D,) float64
        self.squares: torch.Tensor | None = None  # per-pixel sums of squared deviations, (D,)
        self.edges = 0.0
        self.has_edges = edges

    def update(self, images: torch.Tensor) -> None:
        added = images.shape[0]
        if added == 0:
            return
        total = self.count + added
        flat = images.flatten(1).double()
        mean = flat.mean(0)
        squares = (flat - mean).square().sum(0)
        if self.count:
            assert self.mean is not None and self.squares is not None
            delta = mean - self.mean
            self.squares = self.squares + squares + delta.square() * (self.count * added / total)
            self.mean = self.mean + delta * (added / total)
        else:
            self.mean, self.squares = mean, squares
        if images.ndim != 4:
            self.has_edges = False
        elif self.has_edges:
            self.edges += float(edge_energy(images).sum(dtype=torch.float64))
        self.count = total

    def spread(self) -> float:
        """Per-pixel sample variance across images, summed over pixels."""
        assert self.squares is not None
        return float(self.squares.sum()) / (self.count - 1)


class SetStatistics:
    """The metrics that describe a whole set of images rather than one image at a time: blob
    score and sharpness are ratios of sums over the set, so they cannot be averaged over
    chunks. Feed every chunk to `update`, then read `blob_score` and `sharpness`; the result
    is the same as for the whole set in one piece (up to float64 rounding).

    target: the targets' `ImageSpread` when it is known already (a validation set's, computed
    once); `update` then takes the reconstructions alone. edges=False: no sharpness."""

    def __init__(self, target: ImageSpread | None = None, edges: bool = True) -> None:
        self.pixels = ImageSpread(edges=edges)
        self.target = target if target is not None else ImageSpread(edges=edges)
        self._own_target = target is None

    @property
    def count(self) -> int:
        return self.pixels.count

    def update(self, pixels: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self.pixels.update(pixels)
        if self._own_target:
            if target is None:
                raise ValueError("SetStatistics without a known target spread needs the targets of every chunk")
            self.target.update(target)

    def blob_score(self) -> float:
        """How much the reconstructions vary from image to image, relative to the data: the
        per-pixel variance across images, summed over pixels, of the reconstructions divided by
        that of the targets. 0 for a model that outputs the same image whatever the input (a
        blob); about 1 when the reconstructions vary as much as the images do; a linear
        projection onto k directions scores the share of variance those k directions explain.
        NaN when the targets do not vary (fewer than two images, or identical images)."""
        if self.count < 2 or self.target.count < 2:
            return math.nan
        data_spread = self.target.spread()
        return self.pixels.spread() / data_spread if data_spread > 0 else math.nan

    def sharpness(self) -> float:
        """Edge energy of the reconstructions over that of the targets (means over images): 1
        means edges as crisp as the data's, below 1 blurred, above 1 noisier than the data. NaN
        when the targets have no edges at all, or are not (B, C, H, W) images."""
        data = self.target.edges
        usable = self.pixels.has_edges and self.target.has_edges
        return self.pixels.edges / data if usable and data > 0 else math.nan


def blob_score(pixels: torch.Tensor, target: torch.Tensor) -> float:
    """`SetStatistics.blob_score` of one set given in one piece."""
    statistics = SetStatistics()
    statistics.update(pixels, target)
    return statistics.blob_score()


def sharpness(pixels: torch.Tensor, target: torch.Tensor) -> float:
    """`SetStatistics.sharpness` of one set given in one piece."""
    statistics = SetStatistics()
    statistics.update(pixels, target)
    return statistics.sharpness()


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


def image_metrics(
    pixels: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    bce_floors: torch.Tensor | None = None,
    loss_values: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Means over images of the per-image metrics: MSE, MAE, BCE (pixels clipped as Keras
    does), BCE excess over the targets' entropy floor, continuous-Bernoulli NLL with the pixels
    as its parameter lambda (clipped likewise), PSNR, SSIM and intensity bias. Means of chunks
    weighted by their sizes give the means of the whole set. SSIM needs (B, C, H, W) images; it
    is NaN otherwise. `bce_floors`: `bce_floor(target)` when the caller has it already (it
    depends on the targets only).

    `loss_values`: per-image values (B,) of losses (by `aelab.LIKELIHOODS` name) that the
    caller computed from the model's output, used instead of the pixel-based ones: a run's own
    loss, so that its column is its validation loss. A cb-trained model must pass its "cb": its
    pixels are cb means, not lambda, and reading them as lambda gives another number."""
    given = loss_values or {}
    values = {
        name: given[name] if name in given else LIKELIHOODS[name].nll_from_pixels(pixels, target)
        for name in LOSS_COLUMNS.values()
    }
    floor = bce_floor(target) if bce_floors is None else bce_floors
    return {
        "mse": float(values["mse"].mean()),
        "mae": float(values["mae"].mean()),
        "bce": float(values["bce"].mean()),
        "bce_excess": float((values["bce"] - floor).mean()) if torch.isfinite(floor).all() else math.nan,
        "cb_nll": float(values["cb"].mean()),
        "psnr": float(psnr(pixels, target, data_range).mean()),
        "ssim": float(ssim(pixels, target, data_range).mean()) if pixels.ndim == 4 else math.nan,
        "intensity_bias": float(intensity_bias(pixels, target).mean()),
    }


def reconstruction_metrics(pixels: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> dict[str, float]:
    """`image_metrics` plus the set's blob score and sharpness, for a set given in one piece."""
    statistics = SetStatistics()
    statistics.update(pixels, target)
    return {
        **image_metrics(pixels, target, data_range),
        "blob_score": statistics.blob_score(),
        "sharpness": statistics.sharpness(),
    }
