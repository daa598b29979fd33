"""The likelihood records as distributions: each one's density integrates to one over its
support, matches torch.distributions, has finite gradients at extreme parameters, reduces to one
value per image, and never goes below its floor."""

import math

import pytest
import torch

from aelab.likelihoods import LIKELIHOODS, get_likelihood
from aelab.losses import (
    BETA_EDGE,
    LOG_CONCENTRATION_MAX,
    LOG_CONCENTRATION_MIN,
    LOG_SCALE_MIN,
    beta_shapes,
    bounded_log_concentration,
    bounded_log_scale,
)

NEW = ["gaussian", "gaussian-pixel", "laplace", "laplace-pixel", "beta"]


def output_for(name: str, location: float, *others: float, count: int = 1) -> torch.Tensor:
    """An output (count, P) for targets (count, 1): the location logit, then the raw other
    parameters (the record's layout, one pixel per image)."""
    record = LIKELIHOODS[name]
    values = [location, *others][: record.parameters_per_pixel]
    assert len(values) == record.parameters_per_pixel
    return torch.tensor(values, dtype=torch.float64).repeat(count, 1)


def grid(support: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, trapezoid weights) covering the support."""
    if support == "binary":
        xs = torch.tensor([0.0, 1.0], dtype=torch.float64)
        return xs, torch.ones(2, dtype=torch.float64)
    low, high = (0.0, 1.0) if support == "unit" else (-200.0, 200.0)
    xs = torch.linspace(low, high, 800_001, dtype=torch.float64)
    weights = torch.full_like(xs, (high - low) / (xs.numel() - 1))
    weights[0] = weights[-1] = weights[0] / 2
    return xs, weights


# (location logit, raw second parameter): for the Beta, shapes alpha, beta > 1 (the density
# is bounded, so the trapezoid rule converges; alpha < 1 is checked against torch below).
PARAMETERS = [(-2.0, 1.0), (0.3, -1.5), (1.5, 2.0)]  # scales 2.7, 0.22, 7.4
BETA_PARAMETERS = [(-0.5, 4.0), (0.3, 6.0), (0.8, 4.0)]


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_every_density_integrates_to_one_over_its_support(name):
    record = LIKELIHOODS[name]
    xs, weights = grid(record.support)
    for location, other in BETA_PARAMETERS if name == "beta" else PARAMETERS:
        output = output_for(name, location, other, count=xs.numel())
        nll = record.nll(output, xs.reshape(-1, 1), logits=True) + record.density_constant
        total = float((torch.exp(-nll) * weights).sum())
        assert total == pytest.approx(1.0, abs=1e-4), (name, location, other)


def test_the_beta_with_both_shapes_above_one_is_inside_its_squeeze():
    # The integral above reads the density at [0, BETA_EDGE] as at BETA_EDGE: harmless only when
    # the shapes make the density vanish at the edges, as these do.
    for location, raw in BETA_PARAMETERS:
        alpha, beta = beta_shapes(torch.sigmoid(torch.tensor(location)), torch.tensor(raw))
        assert alpha > 1 and beta > 1


def test_supports_say_where_each_density_lives():
    supports = {name: record.support for name, record in LIKELIHOODS.items()}
    assert supports == {
        "bce": "binary",
        "mse": "real",
        "mae": "real",
        "cb": "unit",
        "gaussian": "real",
        "gaussian-pixel": "real",
        "laplace": "real",
        "laplace-pixel": "real",
        "beta": "unit",
    }
    for name in NEW:
        assert LIKELIHOODS[name].density_constant == 0.0  # their numbers are true densities already
        assert LIKELIHOODS[name].parameters_per_pixel == 2 and LIKELIHOODS[name].fused_head is None
    assert [name for name in NEW if LIKELIHOODS[name].shared_parameters] == ["gaussian", "laplace"]


LOCATIONS = torch.tensor([[-4.0, -0.7, 0.0, 0.4, 2.5, 6.0]], dtype=torch.float64)
RAWS = torch.tensor([[-3.0, -8.0, 0.0, 1.3, 4.0, -0.2]], dtype=torch.float64)
TARGETS = torch.tensor([[0.0, 0.02, 0.3, 0.5, 0.93, 1.0]], dtype=torch.float64)


def reference(name: str, location: torch.Tensor, raw: torch.Tensor) -> torch.distributions.Distribution:
    mean = torch.sigmoid(location)
    if name.startswith("gaussian"):
        return torch.distributions.Normal(mean, bounded_log_scale(raw).exp())
    if name.startswith("laplace"):
        return torch.distributions.Laplace(mean, bounded_log_scale(raw).exp())
    return torch.distributions.Beta(*beta_shapes(mean, raw))


@pytest.mark.parametrize("name", NEW)
def test_new_likelihoods_match_torch_distributions(name):
    record = LIKELIHOODS[name]
    output = torch.cat([LOCATIONS, RAWS], dim=1)
    targets = TARGETS.clamp(BETA_EDGE, 1 - BETA_EDGE) if name == "beta" else TARGETS
    expected = -reference(name, LOCATIONS, RAWS).log_prob(targets).mean(1)
    assert torch.allclose(record.nll(output, TARGETS, logits=True), expected, atol=1e-9)
    # from pixels: the location given as the mean itself
    pixels = torch.cat([torch.sigmoid(LOCATIONS), RAWS], dim=1)
    assert torch.allclose(record.nll(pixels, TARGETS, logits=False), expected, atol=1e-9)
    # the pixels shown are the distribution's mean
    assert torch.allclose(record.mean(output, logits=True), reference(name, LOCATIONS, RAWS).mean, atol=1e-12)
    assert torch.allclose(record.mean(pixels, logits=False), torch.sigmoid(LOCATIONS), atol=1e-12)


def test_concentrations_stay_inside_their_bounds_and_follow_values_inside():
    raw = torch.tensor([-1e4, -20.0, 0.0, 3.0, 30.0, 1e4])
    log_kappa = bounded_log_concentration(raw)
    assert (log_kappa >= LOG_CONCENTRATION_MIN).all() and (log_kappa <= LOG_CONCENTRATION_MAX).all()
    assert log_kappa[0] == LOG_CONCENTRATION_MIN and log_kappa[-1] == LOG_CONCENTRATION_MAX
    assert log_kappa[2] == pytest.approx(0.0, abs=1e-2) and log_kappa[3] == pytest.approx(3.0, abs=0.01)


def test_scales_never_go_below_their_bound_and_follow_large_values():
    raw = torch.tensor([-1e4, -20.0, 0.0, 30.0, 1e4])
    log_scale = bounded_log_scale(raw)
    assert (log_scale >= LOG_SCALE_MIN).all() and log_scale[0] == LOG_SCALE_MIN
    assert log_scale[3] == pytest.approx(30.0) and log_scale[-1] == 1e4


@pytest.mark.parametrize("name", NEW)
def test_finite_losses_and_gradients_at_extreme_parameters_and_binary_targets(name):
    record = LIKELIHOODS[name]
    location = torch.tensor([[-50.0, 50.0, -50.0, 50.0, 0.0, 1e-4, 30.0, -30.0]])
    raw = torch.tensor([[-100.0, 100.0, 100.0, -100.0, -1e4, 1e4, -60.0, 60.0]])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    for logits in (True, False):
        output = torch.cat([location if logits else torch.sigmoid(location), raw], dim=1).requires_grad_()
        value = record.nll(output, target, logits=logits)
        (gradient,) = torch.autograd.grad(value.sum(), output)
        assert torch.isfinite(value).all() and torch.isfinite(gradient).all(), (name, logits)


@pytest.mark.parametrize("name", NEW)
def test_one_value_per_image_and_images_do_not_mix(name):
    record = LIKELIHOODS[name]
    output = torch.randn(5, 2, 4, 4)  # (B, 2C, H, W) for C = 1
    target = torch.rand(5, 1, 4, 4)
    values = record.nll(output, target, logits=True)
    assert values.shape == (5,)
    assert torch.allclose(values[:2], record.nll(output[:2], target[:2], logits=True))
    assert record.mean(output, logits=True).shape == target.shape
    three = torch.randn(2, 6, 3, 3)  # C = 3: channels [0, 3) locations, [3, 6) the other parameter
    target3 = torch.rand(2, 3, 3, 3)
    swapped = torch.cat([three[:, 3:], three[:, :3]], dim=1)
    assert not torch.allclose(record.nll(three, target3, logits=True), record.nll(swapped, target3, logits=True))
    assert torch.equal(record.mean(three, logits=True), torch.sigmoid(three[:, :3]))


@pytest.mark.parametrize("name", NEW)
def test_an_output_without_its_parameters_is_refused(name):
    with pytest.raises(ValueError, match="2 parameters per pixel"):
        LIKELIHOODS[name].nll(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), logits=True)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_no_output_goes_below_the_floor(name):
    record = LIKELIHOODS[name]
    torch.manual_seed(0)
    target = torch.rand(4, 10, dtype=torch.float64)
    target[0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    floor = record.lowest(target)
    if record.floor is None:  # unknown (beta): NaN for every sample, never a number
        assert torch.isnan(floor).all()
        return
    for _ in range(20):
        output = torch.randn(4, 10 * record.parameters_per_pixel, dtype=torch.float64) * 6
        assert (record.nll(output, target, logits=True) >= floor - 1e-9).all(), name


@pytest.mark.parametrize("name", ["gaussian", "gaussian-pixel", "laplace", "laplace-pixel"])
def test_the_floor_is_approached_at_the_target_with_the_smallest_scale(name):
    record = LIKELIHOODS[name]
    target = torch.tensor([[0.2, 0.5, 0.7]], dtype=torch.float64)
    output = torch.cat([torch.logit(target), torch.full_like(target, -50.0)], dim=1)
    assert float(record.nll(output, target, logits=True)[0]) == pytest.approx(float(record.lowest(target)[0]))
    assert float(record.lowest(target)[0]) < 0  # a density: the NLL goes negative


@pytest.mark.parametrize("name", NEW)
def test_a_bare_prediction_is_scored_at_its_best_other_parameter(name):
    # `prediction_nll` (aelab loss, the doctor's mean-image baseline) reads a prediction as the
    # mean and takes the best scale or concentration: no choice of that parameter does better,
    # and the closed forms are reached.
    record = LIKELIHOODS[name]
    torch.manual_seed(1)
    target = torch.rand(3, 8, dtype=torch.float64)
    mean = (target + 0.2 * torch.randn_like(target)).clamp(0.01, 0.99)
    best = record.prediction_nll(mean, target)
    for raw in torch.linspace(-8, 8, 33, dtype=torch.float64):
        output = torch.cat([mean, torch.full_like(mean, float(raw))], dim=1)
        assert (record.nll(output, target, logits=False) >= best - 1e-3).all(), (name, float(raw))
    if name in ("gaussian", "laplace"):  # the shared closed form: sigma^2 = MSE, b = MAE
        error = (mean - target).square().mean(1) if name == "gaussian" else (mean - target).abs().mean(1)
        log_scale = 0.5 * error.log() if name == "gaussian" else error.log()
        raw = log_scale + torch.log(-torch.expm1(LOG_SCALE_MIN - log_scale))  # softplus inverse, shifted
        output = torch.cat([mean, raw[:, None].expand_as(mean)], dim=1)
        assert torch.allclose(record.nll(output, target, logits=False), best, atol=1e-9)


def test_nats_per_image_adds_the_constant_and_sums_over_pixels():
    target = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    logits = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    mse = get_likelihood("mse")
    expected = -torch.distributions.Normal(torch.sigmoid(logits), 1 / math.sqrt(2)).log_prob(target).sum((1, 2, 3))
    assert torch.allclose(mse.nats_per_image(logits, target, logits=True), expected)
    output = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    gaussian = get_likelihood("gaussian-pixel")
    per_pixel = gaussian.nll(output, target, logits=True)
    assert torch.allclose(gaussian.nats_per_image(output, target, logits=True), per_pixel * 16)
