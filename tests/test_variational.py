"""Variational autoencoders (issue 12): the model, its ELBO terms, training and its metrics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from aelab import RunConfig, load_dataset, train
from aelab.config import ModelConfig
from aelab.errors import ConfigError
from aelab.evaluate import Validation, evaluate
from aelab.evaluate.variational import (
    ACTIVE_UNIT_VARIANCE,
    bits_per_dimension,
    bpd_problem,
    dequantised,
)
from aelab.likelihoods import LIKELIHOODS
from aelab.losses import gaussian_kl
from aelab.nn.models import build_model
from aelab.nn.variational import (
    ConvVAE,
    DenseVAE,
    ElboTerms,
    elbo_terms,
    importance_weighted_nll,
    kl_weight,
    reconstruction_nats,
    training_objective,
)
from aelab.train import RunState
from aelab.train.steps import FastVariationalStep, VariationalStep, config_step_problem, make_step

from .conftest import NO_DOCTOR, TINY

VAE = {
    "data": {"name": "digits"},
    "model": {"hidden_dims": [32], "latent_dim": 4, "activation": "relu", "variational": True},
    "train": {"epochs": 2, "batch_size": 64, "learning_rate": 3e-3, "threads": 1},
}


def vae_config(**sections) -> RunConfig:
    return RunConfig.from_dict(VAE).replace(**sections)


def test_the_closed_form_kl_is_torch_distributions_kl():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(16, 5, generator=generator, dtype=torch.float64) * 3
    log_variance = torch.randn(16, 5, generator=generator, dtype=torch.float64) * 2
    reference = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0))
    assert torch.allclose(gaussian_kl(mean, log_variance), reference, rtol=1e-12, atol=1e-12)
    assert float(gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)).abs().max()) == 0.0  # q = p
    with pytest.raises(ValueError, match="does not match"):
        gaussian_kl(mean, log_variance[:, :4])


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_a_vae_is_an_autoencoder_whose_decoder_gives_the_likelihoods_parameters(kind, monkeypatch):
    config = ModelConfig(kind=kind, hidden_dims=(4, 8), latent_dim=3, activation="relu", variational=True)
    model = build_model(config, (1, 12, 10), loss="bce")
    assert isinstance(model, DenseVAE if kind == "dense" else ConvVAE)
    images = torch.rand(5, 1, 12, 10)
    mean, log_variance = model.posterior(images)
    assert mean.shape == log_variance.shape == (5, 3)
    assert torch.equal(model.encode(images), mean)
    assert torch.equal(model(images), model.decode(mean))  # forward: the posterior mean's decoding
    assert model(images).shape == images.shape
    # A likelihood with two parameters per pixel: the decoder is built with twice the outputs,
    # asked from the record (no likelihood is named in the model code); one whose second
    # parameter is shared decodes one value per pixel and holds the other as a model parameter.
    two = dataclasses.replace(LIKELIHOODS["gaussian-pixel"], name="two_parameters")
    monkeypatch.setitem(LIKELIHOODS, "two_parameters", two)
    wide = build_model(config, (1, 12, 10), loss="two_parameters")
    assert wide.parameters_per_pixel == 2
    assert wide.decode(torch.zeros(5, 3)).shape == (5, 2, 12, 10)
    output, _ = wide.loss_input(wide.decode(torch.zeros(5, 3)))
    assert LIKELIHOODS["two_parameters"].nll(output, images, logits=True).shape == (5,)
    shared = build_model(config, (1, 12, 10), loss="gaussian")
    assert shared.decode(torch.zeros(5, 3)).shape == (5, 1, 12, 10)
    assert shared.likelihood_parameters.shape == (1,)
    output, _ = shared.loss_input(shared.decode(torch.zeros(5, 3)))
    assert output.shape == (5, 2, 12, 10)


def test_a_vae_refuses_the_regularisers_its_step_does_not_implement():
    data = load_dataset(RunConfig.from_dict(TINY).data)
    vae = RunConfig.from_dict(TINY).replace(model={"variational": True})
    for key, value in (("noise", "gaussian:0.5"), ("sparsity", "l1"), ("contractive", 0.1)):
        with pytest.raises(ConfigError, match=rf"train\.{key} is not implemented for VAEs"):
            RunState(vae.replace(train={key: value}), data)


def test_building_a_vae_refuses_settings_that_do_not_apply():
    with pytest.raises(ConfigError, match=r"model\.tied applies to plain autoencoders only"):
        ModelConfig(variational=True, tied=True)
    with pytest.raises(ConfigError, match=r"model\.code_activation does not apply to a VAE"):
        ModelConfig(variational=True, code_activation="tanh")
    data = load_dataset(RunConfig.from_dict(TINY).data)
    for key, value in (("beta", 2.0), ("kl_warmup_epochs", 3), ("free_bits", 0.1)):
        config = RunConfig.from_dict(TINY).replace(train={key: value})
        with pytest.raises(ConfigError, match=rf"train.{key} applies to VAEs only; drop train.{key}"):
            RunState(config, data)


def test_the_reparameterisation_draws_from_the_given_generator_only():
    model = build_model(ModelConfig(variational=True, latent_dim=3), (1, 8, 8), loss="bce")
    images = torch.rand(4, 1, 8, 8)
    likelihood = LIKELIHOODS["bce"]
    before = torch.random.get_rng_state()
    first = elbo_terms(model, likelihood, images, torch.Generator().manual_seed(5))
    again = elbo_terms(model, likelihood, images, torch.Generator().manual_seed(5))
    other = elbo_terms(model, likelihood, images, torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first.recon, again.recon) and not torch.equal(first.recon, other.recon)
    assert torch.equal(first.kl, other.kl)  # the closed form depends on the posterior alone


def test_the_reconstruction_term_is_the_likelihoods_log_density_summed_over_pixels():
    model = build_model(ModelConfig(variational=True), (1, 8, 8), loss="mse")
    logits = torch.randn(3, 1, 8, 8)
    targets = torch.rand(3, 1, 8, 8)
    nats = reconstruction_nats(model, LIKELIHOODS["mse"], logits, targets)
    # Gaussian with sigma 1/sqrt(2) around the sigmoid: -log N(x; p, 1/2) summed over 64 pixels
    reference = -Normal(torch.sigmoid(logits), math.sqrt(0.5)).log_prob(targets).flatten(1).sum(1)
    assert torch.allclose(nats, reference, rtol=1e-5)


def test_kl_warm_up_and_free_bits():
    assert [kl_weight(2.0, 4, epoch) for epoch in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]
    assert kl_weight(0.5, 0, 1) == 0.5
    mean = torch.tensor([[0.01, 2.0], [0.02, -1.0]], requires_grad=True)
    log_variance = torch.zeros(2, 2, requires_grad=True)
    terms = ElboTerms(torch.zeros(2), gaussian_kl(mean, log_variance), mean, log_variance)
    loss = training_objective(terms, 1.0, free_bits=0.5)
    loss.backward()
    # dimension 0's KL (1e-4 nats) is under its free half nat: counted as 0.5, no gradient
    assert float(loss.detach()) == pytest.approx(0.5 + (4.0 + 1.0) / 4)
    assert float(mean.grad[:, 0].abs().max()) == 0.0 and float(mean.grad[:, 1].abs().min()) > 0


@pytest.mark.parametrize(("engine", "step"), [("auto", FastVariationalStep), ("autograd", VariationalStep)])
def test_a_vae_trains_through_its_own_step_and_records_every_term(tmp_path, engine, step):
    # a dense VAE takes the hand-written step unless train.engine says autograd
    # (tests/test_vae_fast.py checks the two compute the same)
    config = vae_config(train={"beta": 0.5, "engine": engine})
    assert (config_step_problem(config) is None) == (engine == "auto")
    state = RunState(config, load_dataset(config.data))
    assert type(make_step([state])) is step
    conv = config.replace(model={"kind": "conv", "hidden_dims": [4]}, train={"engine": "fast"})
    with pytest.raises(ConfigError, match="engine fast cannot train this model: it handles dense models only"):
        RunState(conv, load_dataset(config.data))
    result = train(config, tmp_path / "vae", progress=False, **NO_DOCTOR)
    first, last = result.history
    for row in result.history:
        assert row["val_loss"] == pytest.approx(-row["val_elbo"])
        assert row["val_elbo"] == pytest.approx(-(row["val_recon"] + row["val_kl"]))
        assert sum(row["val_kl_per_dim"]) == pytest.approx(row["val_kl"])
        assert len(row["val_kl_per_dim"]) == 4 and 0 <= row["val_active_units"] <= 4
    assert "val_nll" not in first and last["val_nll_samples"] == 100
    assert last["val_nll"] <= -last["val_elbo"] + 0.5  # IWAE under the one-sample bound (noise aside)
    assert last["val_loss"] < first["val_loss"]
    # digits are 0..16 levels, not 8-bit: no bits per dimension, and bce has none on grey data anyway
    assert math.isnan(last["val_bpd"])
    assert {"val_mse", "val_ssim", "val_blob_score"} <= set(last)  # the equal-footing metrics, from the mean


def test_plain_autoencoders_rows_have_no_vae_keys(tmp_path):
    result = train(RunConfig.from_dict(TINY), tmp_path / "plain", progress=False, **NO_DOCTOR)
    assert not any(key in row for row in result.history for key in ("val_elbo", "val_kl", "val_nll"))


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    config = vae_config(train={"epochs": 6})
    result = train(config, tmp_path_factory.mktemp("vae") / "run", progress=False, **NO_DOCTOR)
    data = load_dataset(config.data)
    return result.model.eval(), Validation.build(data, config.data, config.train.seed + 2)


def test_the_iwae_estimate_is_never_above_the_negative_elbo_and_falls_with_k(trained_vae):
    model, validation = trained_vae
    likelihood = LIKELIHOODS["bce"]
    images = validation.targets
    estimates = []
    for samples in (1, 5, 50, 500):
        nll, negative_elbo = importance_weighted_nll(
            model, likelihood, images, torch.Generator().manual_seed(1), samples, codes_per_pass=4096
        )
        assert bool((nll <= negative_elbo + 1e-4).all())  # Jensen, draw by draw
        estimates.append(float(nll.mean()))
    assert estimates == sorted(estimates, reverse=True)
    assert estimates[0] - estimates[-1] > 0.1  # a gap the samples close
    # K = 1 is the one-sample ELBO itself
    nll, negative_elbo = importance_weighted_nll(model, likelihood, images, torch.Generator().manual_seed(1), 1)
    assert torch.allclose(nll, negative_elbo, atol=1e-4)


def test_evaluation_is_a_function_of_the_weights(trained_vae):
    model, validation = trained_vae
    before = torch.random.get_rng_state()
    first = evaluate(model, "bce", validation, full=True)
    second = evaluate(model, "bce", validation, full=True)
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert value == pytest.approx(second[key], nan_ok=True), key
    assert torch.equal(torch.random.get_rng_state(), before)
    # the posterior means' spread says how many units are active
    means = model.encode(validation.targets)
    assert first["val_active_units"] == int((means.double().var(dim=0) > ACTIVE_UNIT_VARIANCE).sum())


def test_bits_per_dimension_of_the_uniform_density_is_eight():
    assert float(bits_per_dimension(torch.zeros(3), 784)[0]) == pytest.approx(8.0)
    # twice as likely as uniform everywhere (a density of 2 on half the unit cube): 7 bits
    assert float(bits_per_dimension(torch.tensor([-784 * math.log(2)]), 784)[0]) == pytest.approx(7.0)
    levels = torch.arange(256, dtype=torch.uint8).repeat(40)
    values = dequantised(levels, torch.Generator().manual_seed(0))
    assert bool(((values >= levels / 256) & (values < (levels.float() + 1) / 256)).all())


def test_bits_per_dimension_needs_a_density_on_eight_bit_pixels():
    grey = Validation(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8), 1 / 255)
    binary = Validation(torch.randint(0, 2, (8, 1, 4, 4), dtype=torch.uint8), 1.0)
    assert bpd_problem(LIKELIHOODS["cb"], grey) is None and bpd_problem(LIKELIHOODS["mse"], grey) is None
    assert "probability mass on {0, 1}" in bpd_problem(LIKELIHOODS["bce"], grey)
    assert "not 8-bit" in bpd_problem(LIKELIHOODS["cb"], binary)


def test_a_cb_vae_on_eight_bit_pixels_has_bits_per_dimension(tmp_path):
    config = RunConfig.from_dict(
        {**VAE, "data": {"train_limit": 512, "val_limit": 64}, "train": {**VAE["train"], "epochs": 1, "loss": "cb"}}
    )
    last = train(config, tmp_path / "cb", progress=False, **NO_DOCTOR).history[-1]
    pixels = 28 * 28
    # bpd is the IWAE NLL of dequantised pixels: close to that of the pixels themselves
    assert last["val_bpd"] == pytest.approx(last["val_nll"] / (pixels * math.log(2)) + 8, abs=0.3)
    assert 0 < last["val_bpd"] < 8


class ExampleVAE(torch.nn.Module):
    """pytorch/examples' VAE, as a user writes it: forward returns (recon, mu, logvar)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc21 = torch.nn.Linear(32, 4)
        self.fc22 = torch.nn.Linear(32, 4)
        self.fc3 = torch.nn.Linear(4, 32)
        self.fc4 = torch.nn.Linear(32, 64)

    def forward(self, x):
        h = torch.relu(self.fc1(x.view(-1, 64)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar


def test_the_doctor_finds_a_user_vaes_collapsed_posterior_and_explains_the_mean_reduction():
    from aelab.doctor import check

    data = load_dataset(RunConfig.from_dict(VAE).data)
    torch.manual_seed(0)
    model = ExampleVAE()
    with torch.no_grad():  # codes that vary across inputs, as a trained encoder's do
        model.fc21.weight.mul_(30)
    healthy = {f.id for f in check(model, data, "bce")}
    assert "posterior-collapse" not in healthy and "log-variance-blowup" not in healthy
    with torch.no_grad():  # the posterior is the prior whatever the input
        for layer in (model.fc21, model.fc22):
            layer.weight.zero_()
            layer.bias.zero_()
    before = [p.detach().clone() for p in model.parameters()]
    findings = {f.id: f for f in check(model, data, "bce")}
    collapse = findings["posterior-collapse"]
    assert collapse.severity == "error" and collapse.evidence["active_units"] == 0
    assert "64 times its weight" in collapse.explanation  # the 8x8 digits' pixel count
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        model.fc22.bias.fill_(20.0)
    assert "log-variance-blowup" in {f.id for f in check(model, data, "bce")}


def test_the_doctor_finds_posterior_collapse_in_training_and_names_beta(tmp_path):
    from aelab.findings import read_findings

    config = vae_config(train={"beta": 200.0, "epochs": 3})
    train(config, tmp_path / "collapsed", progress=False, report=False)
    findings = {f.id: f for f in read_findings(tmp_path / "collapsed")}
    collapse = findings["posterior-collapse"]
    assert "summed over pixels" in collapse.explanation and "beta = 200" in collapse.explanation
    assert "train.beta: 1" in collapse.fix
    healthy = vae_config(train={"epochs": 3})
    train(healthy, tmp_path / "healthy", progress=False, report=False)
    assert "posterior-collapse" not in {f.id for f in read_findings(tmp_path / "healthy")}


def test_kl_vanishing_after_the_warm_up_is_found():
    from aelab.doctor.posterior import PosteriorStats, posterior_findings

    stats = PosteriorStats(images=100, kl_per_dim=[0.2, 0.9], active_units=2, log_variance_min=-1, log_variance_max=0)
    history = [{"val_kl": kl} for kl in (5.0, 8.0, 3.0, 0.3)]
    found = {f.id for f in posterior_findings(stats, {"kl_warmup_epochs": 2}, history)}
    assert found == {"kl-vanishing"}
    assert not posterior_findings(stats, {"kl_warmup_epochs": 2}, history[:3])


def test_the_report_shows_what_a_vae_generates_and_its_honest_scale(tmp_path):
    config = vae_config(model={"latent_dim": 2})
    train(config, tmp_path / "vae", progress=False, doctor=False)
    page = (tmp_path / "vae" / "report.html").read_text()
    assert "<h2>Variational autoencoders</h2>" in page
    for figure in ("samples from the prior and interpolations", "the 2-D latent manifold", "ELBO terms by epoch"):
        assert f'alt="{figure}' in page
    assert "bce is a probability mass on {0, 1}" in page  # no bits per dimension, and why
    from aelab.evaluate import evaluate_run

    evaluation = evaluate_run(tmp_path / "vae")
    assert evaluation.generation.manifold.shape[:2] == (15, 15)
    assert evaluation.generation.samples.shape == (32, 1, 8, 8)
    pixels = evaluation.generation.samples
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1  # the likelihood's mean


def test_compare_grids_over_vae_and_beta(tmp_path, capsys):
    import json

    from aelab.cli import main

    flags = ["--dataset", "digits", "--hidden", "16", "--latent", "2", "--activation", "relu", "--epochs", "1"]
    flags += ["--lr", "3e-3", "--threads", "1", "--quiet", "--no-report"]
    assert main(["compare", *flags, "--grid", "vae=false,true", "--out", str(tmp_path / "vae")]) == 0
    rows = json.loads((tmp_path / "vae" / "results.json").read_text())
    assert [row.get("elbo") is not None for row in rows] == [False, True]
    assert main(["compare", *flags, "--vae", "--grid", "beta=0.5,4", "--out", str(tmp_path / "beta")]) == 0
    rows = json.loads((tmp_path / "beta" / "results.json").read_text())
    assert len(rows) == 2 and all(row["nll_samples"] == 100 for row in rows)
    assert rows[0]["kl"] > rows[1]["kl"]  # a heavier KL weight: less KL


@pytest.mark.slow
def test_a_cb_vaes_mean_reconstructs_better_than_lambda_on_mnist(tmp_path):
    # Loaiza-Ganem & Cunningham 2019: the continuous Bernoulli's mean, not its parameter lambda
    # (the sigmoid of the logits), is the reconstruction. Measured on mnist-10k's validation split.
    config = RunConfig.from_dict(
        {
            "model": {"hidden_dims": [400], "latent_dim": 20, "activation": "relu", "variational": True},
            "train": {"loss": "cb", "epochs": 3, "learning_rate": 1e-3, "batch_size": 128, "threads": 2},
        }
    )
    result = train(config, tmp_path / "cb", progress=False, **NO_DOCTOR)
    validation = Validation.build(load_dataset(config.data), config.data, config.train.seed + 2)
    with torch.no_grad():
        logits = result.model(validation.targets)
        through_lambda = float((torch.sigmoid(logits) - validation.targets).square().mean())
        through_mean = float((result.model.pixels(logits) - validation.targets).square().mean())
    assert through_mean == pytest.approx(result.history[-1]["val_mse"], rel=1e-4)
    assert through_mean < through_lambda
