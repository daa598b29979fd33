import math

import numpy as np
import pytest
import torch

from aelab.evaluate.metrics import (
    blob_score,
    intensity_bias,
    probe_accuracy,
    psnr,
    reconstruction_metrics,
    sharpness,
    ssim,
)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray, window: int, data_range: float = 1.0) -> float:
    """Wang et al. 2004 with a uniform window over valid positions, sample (co)variances."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i : i + window, j : j + window].ravel(), y[i : i + window, j : j + window].ravel()
            mu_a, mu_b = a.mean(), b.mean()
            var_a, var_b = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - mu_a) * (b - mu_b)).sum() / (a.size - 1)
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("size", [28, 8, 7, 4])
def test_identical_images_give_mse_0_and_ssim_1(size):
    images = torch.rand(5, 1, size, size, generator=torch.Generator().manual_seed(size))
    metrics = reconstruction_metrics(images, images)
    assert metrics["mse"] == 0 and metrics["mae"] == 0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["psnr"] == pytest.approx(100.0)  # the documented cap
    assert metrics["blob_score"] == pytest.approx(1.0) and metrics["sharpness"] == pytest.approx(1.0)
    assert metrics["intensity_bias"] == 0


@pytest.mark.parametrize(("size", "window"), [(28, 7), (8, 7), (5, 5)])
def test_ssim_matches_the_formula_computed_by_hand(size, window):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, size, size, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(2, 1, size, size, generator=generator, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y)
    for index in range(2):
        assert float(got[index]) == pytest.approx(_ssim_by_hand(x[index, 0].numpy(), y[index, 0].numpy(), window))
    assert float(got.max()) < 1


def test_ssim_of_unrelated_noise_is_near_zero_and_of_inverted_image_negative():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(4, 1, 28, 28, generator=generator), torch.rand(4, 1, 28, 28, generator=generator)
    assert abs(float(ssim(x, y).mean())) < 0.05
    assert float(ssim(x, 1 - x).mean()) < -0.5


def test_psnr_by_hand():
    target = torch.zeros(1, 1, 4, 4)
    pixels = torch.full((1, 1, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    assert float(psnr(pixels, target)) == pytest.approx(20.0, abs=1e-5)


def test_bce_excess_is_zero_when_the_output_equals_grey_targets():
    target = torch.tensor([[[[0.3, 0.5], [0.8, 0.1]]]])
    metrics = reconstruction_metrics(target, target)
    entropy = -sum(t * math.log(t) + (1 - t) * math.log(1 - t) for t in (0.3, 0.5, 0.8, 0.1)) / 4
    assert metrics["bce"] == pytest.approx(entropy, rel=1e-6)  # not zero: the floor
    assert metrics["bce_excess"] == pytest.approx(0.0, abs=1e-6)
    worse = reconstruction_metrics(torch.full_like(target, 0.5), target)
    assert worse["bce_excess"] > 0.01


def test_blob_score_is_zero_for_a_constant_output_and_scales_with_variance():
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(50, 1, 8, 8, generator=generator)
    mean_image = target.mean(dim=0, keepdim=True).expand_as(target)
    assert blob_score(mean_image, target) == pytest.approx(0.0, abs=1e-12)
    assert reconstruction_metrics(mean_image, target)["blob_score"] == pytest.approx(0.0, abs=1e-12)
    # Halving each image's deviation from the mean quarters the variance.
    shrunk = mean_image + 0.5 * (target - mean_image)
    assert blob_score(shrunk, target) == pytest.approx(0.25)
    assert math.isnan(blob_score(target[:1], target[:1]))


def test_intensity_bias_and_sharpness_by_hand():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, :, 2:] = 1.0  # one vertical edge
    dim = 0.5 * target
    assert intensity_bias(dim, target).tolist() == pytest.approx([-0.25, -0.25])
    assert sharpness(dim, target) == pytest.approx(0.25)  # edges half as high: a quarter of the energy
    assert sharpness(torch.full_like(target, 0.5), target) == 0.0


def test_probe_accuracy_reads_separable_codes_and_falls_to_the_majority_for_constant_codes():
    labels = torch.tensor([0, 1] * 20)
    codes = torch.stack([labels.float() * 4 - 2, torch.zeros(40)], dim=1) + 0.1 * torch.randn(
        40, 2, generator=torch.Generator().manual_seed(4)
    )
    assert probe_accuracy(codes, labels, codes, labels) == 1.0
    constant_train, train_labels = torch.zeros(4, 3), torch.tensor([0, 1, 1, 1])
    val_labels = torch.tensor([1, 1, 0, 0])
    assert probe_accuracy(constant_train, train_labels, torch.zeros(4, 3), val_labels) == 0.5
    assert math.isnan(probe_accuracy(codes, torch.zeros(40, dtype=torch.long), codes, labels))
