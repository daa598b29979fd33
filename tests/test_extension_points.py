"""Extension points: a likelihood (and an activation) is one record in one registry.

A new likelihood registered here, in this file alone, trains (autograd and the fast step),
evaluates, reports and shows in `aelab loss`; a new activation trains on both engines; and
every built-in record gives the numbers of the distribution or function it names.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import aelab
from aelab import RunConfig, load_run, train
from aelab.cli import main
from aelab.errors import ConfigError
from aelab.evaluate import evaluate_run
from aelab.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from aelab.losses import LOSS_FLOORS, LOSSES, get_loss
from aelab.nn.activations import ACTIVATIONS, Activation, get_activation_record
from aelab.nn.models import MODELS, DenseAutoencoder
from aelab.report import render_report
from aelab.runs import read_metrics

from .conftest import TINY

SCALE = 0.1  # the logistic's fixed scale s


def _logistic_from_pixels(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logistic NLL with location = the pixel and scale SCALE, less log(s), mean over pixels:
    -log p(x) = z + 2 log(1 + exp(-z)) + log s, z = (x - mu) / s."""
    if pixels.shape != target.shape:
        raise ValueError(f"output shape {tuple(pixels.shape)} does not match target shape {tuple(target.shape)}")
    z = (target - pixels) / SCALE
    return (z + 2 * F.softplus(-z)).flatten(1).mean(dim=1)


LOGISTIC = Likelihood(
    name="logistic",
    distribution="logistic with location p and fixed scale 0.1",
    nll_from_logits=lambda logits, target: _logistic_from_pixels(torch.sigmoid(logits), target),
    nll_from_pixels=_logistic_from_pixels,
    mean_from_logits=torch.sigmoid,
    floor=lambda target: torch.full((target.shape[0],), 2 * math.log(2.0), dtype=target.dtype),
    density_constant=math.log(SCALE),
    minimum_text=lambda targets: "prediction = target (the logistic's location)",
    unit="nats",
)


@pytest.fixture
def logistic(monkeypatch):
    monkeypatch.setitem(LIKELIHOODS, "logistic", LOGISTIC)
    return LOGISTIC


BUILT_IN = "bce, mse, mae, cb, gaussian, gaussian-pixel, laplace, laplace-pixel, beta"  # the registry's names, in order


def tiny(**train_options) -> RunConfig:
    config = RunConfig.from_dict(TINY)
    return config.replace(train={"loss": "logistic", **train_options})


def test_a_likelihood_registered_in_a_test_trains_evaluates_reports_and_prints(logistic, tmp_path, capsys):
    result = train(tiny(engine="autograd"), tmp_path / "run", progress=False)
    history = read_metrics(tmp_path / "run")
    assert len(history) == 2 and history[-1]["val_loss"] < history[0]["train_loss"]  # it learned
    # The run's own loss is the logistic NLL of the model's output, and its floor is 2 log 2.
    run = load_run(tmp_path / "run")
    evaluation = evaluate_run(tmp_path / "run")
    assert evaluation.error is None
    from aelab.train import RunState

    targets = RunState(run.config, aelab.load_dataset(run.config.data)).validation.targets
    with torch.no_grad():
        expected = float(_logistic_from_pixels(torch.sigmoid(run.model(targets)), targets).mean())
    assert history[-1]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert evaluation.metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert history[-1]["val_loss_excess"] == pytest.approx(expected - 2 * math.log(2.0), rel=1e-5)
    assert result.model.loss == "logistic"
    assert run.config.train.loss == "logistic" and run.model.loss == "logistic"  # the folder says so

    # The report names it and draws its curve panel beside the others.
    report = render_report(tmp_path / "run", tmp_path / "again.html")
    assert "logistic" in report.read_text()

    # `aelab loss` prints a line for it, with its value, floor and words.
    assert main(["loss", "--target", "0.5,0.3", "--pred", "0.1,0.3"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("logistic"))
    words = line.split()
    z = torch.tensor([0.4, 0.0]) / SCALE
    value = float((z + 2 * F.softplus(-z)).mean())
    assert float(words[1]) == pytest.approx(value, abs=6e-5)
    assert float(words[2]) == pytest.approx(2 * math.log(2.0), abs=6e-5)
    assert "the logistic's location" in line
    assert "in nats for bce, cb, gaussian, gaussian-pixel, laplace, laplace-pixel, beta and logistic" in out


def test_the_fast_step_trains_a_likelihood_without_a_fused_head_on_its_own_loss(logistic, tmp_path):
    fast = train(tiny(engine="fast"), progress=False, doctor=False, report=False)
    slow = train(tiny(engine="autograd"), progress=False, doctor=False, report=False)
    for fast_row, slow_row in zip(fast.history, slow.history, strict=True):
        assert fast_row["train_loss"] == pytest.approx(slow_row["train_loss"], rel=1e-4)
        assert fast_row["val_loss"] == pytest.approx(slow_row["val_loss"], rel=1e-4)
    # not some other head's loss: bce of the same model is a different number
    assert fast.history[-1]["val_loss"] != pytest.approx(fast.history[-1]["val_bce"], rel=1e-2)


def test_a_registered_likelihood_joins_the_old_views_and_the_error_message(logistic):
    assert "logistic" in LOSSES and "logistic" in LOSS_FLOORS and "logistic" in aelab.LOSSES
    with pytest.raises(ConfigError, match=f"valid: {BUILT_IN}, logistic"):
        get_likelihood("hinge")
    target = torch.rand(3, 5)
    assert torch.equal(get_loss("logistic")(target, target, False), _logistic_from_pixels(target, target))


def test_unregistered_after_the_test():
    assert "logistic" not in LIKELIHOODS and ", ".join(LOSSES) == BUILT_IN


def test_a_likelihood_needing_two_values_per_pixel_gets_them_from_the_models(monkeypatch, tmp_path):
    # A record with parameters_per_pixel 2 makes aelab's models decode two values per pixel; a
    # model kind whose builder cannot is refused by name before anything is written.
    two = dataclasses.replace(LIKELIHOODS["gaussian-pixel"], name="gaussian2")
    monkeypatch.setitem(LIKELIHOODS, "gaussian2", two)
    result = train(tiny(loss="gaussian2"), tmp_path / "run", progress=False, doctor=False, report=False)
    assert result.model.output_values == 2 and math.isfinite(result.history[-1]["val_loss"])
    monkeypatch.setitem(MODELS, "plain", lambda config, shape: DenseAutoencoder(config, shape))
    with pytest.raises(
        ConfigError, match=r"model\.kind: plain outputs one value per pixel, and train\.loss: gaussian2 needs 2"
    ):
        train(tiny(loss="gaussian2").replace(model={"kind": "plain"}), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_a_likelihood_without_a_floor_reports_no_excess(monkeypatch):
    monkeypatch.setitem(LIKELIHOODS, "nofloor", dataclasses.replace(LOGISTIC, name="nofloor", floor=None))
    result = train(tiny(loss="nofloor"), progress=False, doctor=False, report=False)
    assert math.isnan(result.history[-1]["val_loss_excess"]) and math.isfinite(result.history[-1]["val_loss"])


# --- the built-in records against the distributions they name

LOGITS = torch.tensor([[-30.0, -3.0, -0.4, 0.0, 1e-3, 0.7, 2.5, 30.0]], dtype=torch.float64)
TARGETS = torch.tensor([[0.0, 0.1, 0.3, 0.5, 0.5, 0.8, 0.95, 1.0]], dtype=torch.float64)


def test_records_losses_from_logits_and_pixels_match_the_formulas():
    p = torch.sigmoid(LOGITS)
    clipped = p.clamp(1e-7, 1 - 1e-7)
    expected = {
        "bce": (
            F.binary_cross_entropy_with_logits(LOGITS, TARGETS, reduction="none").mean(1),
            -(TARGETS * clipped.log() + (1 - TARGETS) * (1 - clipped).log()).mean(1),
        ),
        "mse": (((p - TARGETS) ** 2).mean(1), ((p - TARGETS) ** 2).mean(1)),
        "mae": ((p - TARGETS).abs().mean(1), (p - TARGETS).abs().mean(1)),
        "cb": (
            -torch.distributions.ContinuousBernoulli(logits=LOGITS).log_prob(TARGETS).mean(1),
            -torch.distributions.ContinuousBernoulli(probs=clipped).log_prob(TARGETS).mean(1),
        ),
    }
    for name, (from_logits, from_pixels) in expected.items():
        record = LIKELIHOODS[name]
        assert torch.allclose(record.nll(LOGITS, TARGETS, logits=True), from_logits, atol=1e-6), name
        assert torch.allclose(record.nll(p, TARGETS, logits=False), from_pixels, atol=1e-6), name
        assert LOSSES[name](LOGITS, TARGETS, True).tolist() == record.nll_from_logits(LOGITS, TARGETS).tolist()


def test_mse_of_pixels_applies_no_sigmoid():
    pixels = torch.tensor([[0.2, 0.9]])
    target = torch.tensor([[0.0, 1.0]])
    assert LIKELIHOODS["mse"].nll_from_pixels(pixels, target).item() == pytest.approx((0.04 + 0.01) / 2)
    with pytest.raises(TypeError):
        aelab.losses.mse(pixels, target)  # no from_logits default: say which the output is


def test_records_pixel_means_are_the_distributions_means():
    p = torch.sigmoid(LOGITS)
    for name in ("bce", "mse", "mae"):
        assert torch.equal(LIKELIHOODS[name].mean(LOGITS, logits=True), p)
        assert torch.equal(LIKELIHOODS[name].mean(p, logits=False), p)
    inside = LOGITS[:, 1:-1]  # the cb mean's reference is inexact at |logit| = 30
    reference = torch.distributions.ContinuousBernoulli(logits=inside).mean
    assert torch.allclose(LIKELIHOODS["cb"].mean(inside, logits=True), reference, atol=1e-9)
    lam = torch.sigmoid(inside)
    assert torch.allclose(LIKELIHOODS["cb"].mean(lam, logits=False), reference, atol=1e-6)


def test_records_floors_are_their_lowest_values():
    target = torch.tensor([[0.2, 0.5, 0.7]], dtype=torch.float64)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).mean(1)
    assert torch.allclose(LIKELIHOODS["bce"].lowest(target), entropy)
    assert LIKELIHOODS["mse"].lowest(target).item() == 0 and LIKELIHOODS["mae"].lowest(target).item() == 0
    best = LIKELIHOODS["cb"].prediction_nll(target, target)  # at cb mean = target
    assert torch.allclose(LIKELIHOODS["cb"].lowest(target), best)
    for name, record in LIKELIHOODS.items():
        if record.floor is None:
            continue  # beta: its floor is not computed (tests/test_likelihoods.py)
        for _ in range(3):
            logits = torch.randn(1, 3 * record.parameters_per_pixel, dtype=torch.float64) * 3
            assert (record.nll(logits, target, logits=True) >= record.lowest(target) - 1e-9).all(), name


@pytest.mark.parametrize("name", ["bce", "mse", "mae", "cb"])
def test_each_density_with_its_constant_integrates_to_one(name):
    record = LIKELIHOODS[name]
    for logit in (-2.0, 0.3, 1.5):
        if record.support == "binary":
            xs = torch.tensor([0.0, 1.0], dtype=torch.float64)
            weights = torch.ones(2, dtype=torch.float64)
        else:
            low, high = (0.0, 1.0) if record.support == "unit" else (-40.0, 40.0)
            xs = torch.linspace(low, high, 400_001, dtype=torch.float64)
            weights = torch.full_like(xs, (high - low) / (xs.numel() - 1))
            weights[0] = weights[-1] = weights[0] / 2  # the trapezoid rule
        logits = torch.full((xs.numel(), 1), logit, dtype=torch.float64)
        nll = record.nll(logits, xs.reshape(-1, 1), logits=True) + record.density_constant
        assert float((torch.exp(-nll) * weights).sum()) == pytest.approx(1.0, abs=1e-6), (name, logit)


def test_the_test_logistic_is_an_honest_density():
    xs = torch.linspace(-10.0, 11.0, 400_001, dtype=torch.float64)
    step = float(xs[1] - xs[0])
    nll = LOGISTIC.nll(torch.full((xs.numel(), 1), 0.7, dtype=torch.float64), xs.reshape(-1, 1), logits=False)
    assert float(torch.exp(-(nll + LOGISTIC.density_constant)).sum()) * step == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["bce", "mse", "mae", "cb"])
def test_fused_heads_give_the_records_loss_and_its_gradient(name):
    record = LIKELIHOODS[name]
    assert record.fused_head is not None
    torch.manual_seed(0)
    z = torch.randn(2, 5, 7, dtype=torch.float64) * 3  # (members, images, pixels)
    x = torch.rand(2, 5, 7, dtype=torch.float64)
    x[0, 0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    leaf = z.clone().requires_grad_()
    value = torch.stack([record.nll_from_logits(leaf[m], x[m]).mean() for m in range(2)])
    (gradient,) = torch.autograd.grad(value.sum(), leaf)
    overwritten = z.clone()
    fused = record.fused_head(overwritten, x)
    assert torch.allclose(fused, value.detach(), atol=1e-12)
    assert torch.allclose(overwritten, gradient, atol=1e-12)


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=f"unknown loss 'hinge'; valid: {BUILT_IN}$"):
        get_likelihood("hinge")


# --- activations: one record each, and a new one registered here alone


def _softplus_gradient(g: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return g * torch.sigmoid(z)


SOFTPLUS = Activation("softplus", F.softplus, (0.0, math.inf), gradient=_softplus_gradient)


def test_an_activation_registered_in_a_test_trains_on_both_engines(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, "softplus", SOFTPLUS)
    config = RunConfig.from_dict(TINY).replace(model={"activation": "softplus"})
    fast = train(config.replace(train={"engine": "fast"}), progress=False, doctor=False, report=False)
    slow = train(config.replace(train={"engine": "autograd"}), progress=False, doctor=False, report=False)
    assert fast.history[-1]["val_loss"] == pytest.approx(slow.history[-1]["val_loss"], rel=1e-4)
    assert fast.history[-1]["val_loss"] < fast.history[0]["train_loss"]
    codes = fast.model.encode(torch.rand(3, 1, 28, 28))
    assert bool((codes > 0).all())  # softplus codes, positive


def test_an_activation_without_a_gradient_is_refused_by_the_fast_step_by_name(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS, "softplus", dataclasses.replace(SOFTPLUS, gradient=None))
    config = RunConfig.from_dict(TINY).replace(model={"activation": "softplus"}, train={"engine": "fast"})
    with pytest.raises(ConfigError, match="no gradient for the 'softplus' activation"):
        train(config, progress=False, doctor=False, report=False)
    auto = train(config.replace(train={"engine": "auto"}), progress=False, doctor=False, report=False)
    assert math.isfinite(auto.history[-1]["val_loss"])


@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if not ACTIVATIONS[name].output_only])
def test_activation_records_gradients_and_in_place_forms_match_autograd(name):
    record = ACTIVATIONS[name]
    z = torch.linspace(-6, 6, 97, dtype=torch.float64).reshape(1, -1)
    leaf = z.clone().requires_grad_()
    out = record.function(leaf)
    g = torch.rand_like(z)
    (expected,) = torch.autograd.grad(out, leaf, g)
    a = out.detach()
    assert torch.allclose(record.gradient(g, a, z), expected, atol=1e-12)
    low, high = record.output_range
    assert bool((a >= low - 1e-12).all() and (a <= high + 1e-12).all())
    if record.in_place is not None:
        inside = z.clone()
        record.in_place(inside)
        assert torch.equal(inside, a)
        overwritten = g.clone()
        record.gradient_in_place(overwritten, a)
        assert torch.allclose(overwritten, expected, atol=1e-12)
    if record.saturation is not None:
        bound = record.saturation(0.01)
        span = high - low
        edge = record.function(torch.tensor([bound, -bound], dtype=torch.float64))
        assert float(high - edge[0]) == pytest.approx(0.01 * span) and float(edge[1] - low) == pytest.approx(
            0.01 * span
        )


def test_softmax_is_for_outputs_only():
    assert ACTIVATIONS["softmax"].output_only
    with pytest.raises(ConfigError, match="unknown hidden activation 'softmax'"):
        get_activation_record("softmax")
    pixels = get_activation_record("softmax", output=True)(torch.randn(2, 1, 3, 3))
    assert torch.allclose(pixels.flatten(1).sum(1), torch.ones(2))
