import math

import pytest
import torch

from aelab.errors import ConfigError
from aelab.likelihoods import LIKELIHOODS
from aelab.losses import (
    LOSS_FLOORS,
    LOSSES,
    bce,
    bce_floor,
    cb,
    cb_floor,
    cb_log_normalizer,
    cb_logits_for_mean,
    cb_mean,
    expected_pixels,
    get_loss,
    mae,
    mse,
)

TARGET = torch.tensor([[0.5, 0.3, 0.5, 0.9]], dtype=torch.float64)
PRED = torch.tensor([[0.1, 0.3, 0.5, 0.8]], dtype=torch.float64)
# The losses whose output is one value per pixel, like the target (the others take P values).
ONE_PARAMETER = {name: loss for name, loss in LOSSES.items() if LIKELIHOODS[name].parameters_per_pixel == 1}


def test_bce_reference_values_from_logits_and_from_pixels():
    # Keras and PyTorch agree on these (the reference values).
    assert bce(torch.logit(PRED), TARGET, from_logits=True).item() == pytest.approx(0.7174393, abs=1e-7)
    assert bce(PRED, TARGET, from_logits=False).item() == pytest.approx(0.7174393, abs=1e-7)
    at_target = bce(TARGET, TARGET, from_logits=False).item()
    assert at_target == pytest.approx(0.5805604, abs=1e-7)
    # The second value is the floor: the targets' mean binary entropy, so the excess is zero.
    assert bce_floor(TARGET).item() == pytest.approx(at_target, abs=1e-12)


def test_bce_probability_path_clips_like_keras():
    target = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pixels = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # certain and wrong: log(0) without clipping
    value = bce(pixels, target, from_logits=False).item()
    assert value == pytest.approx(-math.log(1e-7), rel=1e-4)


def test_mse_mae_reference_values():
    assert mse(PRED, TARGET, from_logits=False).item() == pytest.approx((0.16 + 0 + 0 + 0.01) / 4)
    assert mae(PRED, TARGET, from_logits=False).item() == pytest.approx((0.4 + 0 + 0 + 0.1) / 4)
    # From logits the sigmoid is applied first.
    assert mse(torch.logit(PRED), TARGET, from_logits=True).item() == pytest.approx(0.0425)


def test_losses_return_one_value_per_sample():
    logits = torch.randn(5, 1, 4, 4)
    target = torch.rand(5, 1, 4, 4)
    for name, loss in ONE_PARAMETER.items():  # the others: tests/test_likelihoods.py
        values = loss(logits, target, True)
        assert values.shape == (5,), name
        # per-sample mean over pixels: sample i's loss does not depend on sample j
        alone = loss(logits[:1], target[:1], True)
        assert torch.allclose(values[:1], alone), name


@pytest.mark.parametrize("name", list(ONE_PARAMETER))
def test_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match="does not match"):
        LOSSES[name](torch.zeros(2, 4), torch.zeros(2, 5), True)


@pytest.mark.parametrize("name", list(ONE_PARAMETER))
def test_finite_gradients_at_binary_targets_and_extreme_logits(name):
    logits = torch.tensor([[-50.0, 50.0, -50.0, 50.0, 0.0, 1e-4]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]])
    (gradient,) = torch.autograd.grad(LOSSES[name](logits, target, True).sum(), logits)
    assert torch.isfinite(gradient).all()
    assert torch.isfinite(LOSSES[name](logits, target, True)).all()


def test_cb_log_normalizer_matches_torch_distribution_float64():
    lam = torch.cat(
        [
            torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64),
            torch.tensor([0.5, 0.4999, 0.5001], dtype=torch.float64),
        ]
    )
    reference = torch.distributions.ContinuousBernoulli(probs=lam)._cont_bern_log_norm()
    ours = cb_log_normalizer(torch.logit(lam))
    assert (ours - reference).abs().max().item() < 1e-5
    assert cb_log_normalizer(torch.zeros(1)).item() == pytest.approx(math.log(2.0))


def test_cb_log_normalizer_float32_near_half_is_stable():
    lam = torch.linspace(0.01, 0.99, 9801, dtype=torch.float64)
    lam = torch.cat([lam, torch.tensor([0.5, 0.5 + 1e-6, 0.5 - 1e-6], dtype=torch.float64)])
    reference = torch.distributions.ContinuousBernoulli(probs=lam)._cont_bern_log_norm()
    ours = cb_log_normalizer(torch.logit(lam).float()).double()
    assert (ours - reference).abs().max().item() < 1e-5


def test_cb_nll_matches_torch_log_prob():
    lam = torch.rand(3, 7, dtype=torch.float64) * 0.98 + 0.01
    x = torch.rand(3, 7, dtype=torch.float64)
    reference = -torch.distributions.ContinuousBernoulli(probs=lam).log_prob(x).mean(dim=1)
    assert torch.allclose(cb(torch.logit(lam), x, True), reference, atol=1e-9)
    assert torch.allclose(cb(lam, x, False), reference, atol=1e-6)


def test_cb_mean_matches_torch_and_inverts():
    lam = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    reference = torch.distributions.ContinuousBernoulli(probs=lam).mean
    assert (cb_mean(torch.logit(lam)) - reference).abs().max().item() < 1e-9
    means = torch.tensor([0.05, 0.3, 0.5, 0.8], dtype=torch.float64)
    assert torch.allclose(cb_mean(cb_logits_for_mean(means)), means, atol=1e-9)


def test_cb_floor_sits_where_mean_equals_target():
    target = torch.tensor([[0.3, 0.8]], dtype=torch.float64)
    floor = cb_floor(target).item()
    best = cb(cb_logits_for_mean(target), target, True).item()
    assert floor == pytest.approx(best)
    for shift in (-0.1, 0.1):
        assert cb(cb_logits_for_mean(target) + shift, target, True).item() > floor
    # A pixel exactly 0 lets the density grow without bound.
    assert cb_floor(torch.tensor([[0.0, 0.5]])).item() == -math.inf


def test_floors_are_minima():
    target = torch.rand(4, 10, dtype=torch.float64)
    for name, floor in LOSS_FLOORS.items():
        if name not in ONE_PARAMETER:
            continue  # tests/test_likelihoods.py checks every record's floor
        low = floor(target)
        for _ in range(5):
            logits = torch.randn(4, 10, dtype=torch.float64) * 3
            assert (LOSSES[name](logits, target, True) >= low - 1e-9).all(), name


def test_bce_floor_is_minus_infinity_outside_unit_range():
    assert bce_floor(torch.tensor([[255.0, 0.0]])).item() == -math.inf


def test_expected_pixels_cb_uses_mean_not_lambda():
    logits = torch.tensor([[2.0, -1.0]])
    assert torch.allclose(expected_pixels("cb", logits, True), cb_mean(logits))
    assert not torch.allclose(expected_pixels("cb", logits, True), torch.sigmoid(logits))
    assert torch.allclose(expected_pixels("bce", logits, True), torch.sigmoid(logits))


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError, match="bce, mse, mae, cb"):
        get_loss("hinge")
