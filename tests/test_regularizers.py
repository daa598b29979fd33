"""Denoising, sparse and contractive autoencoders (issue 13): the corruption leaves the targets
alone and is reproducible by seed and across a resume; each penalty's gradient matches
autograd's; the fast step equals autograd with each option on."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from aelab import RunConfig, load_dataset, load_run, resume, train
from aelab.cli import main
from aelab.errors import ConfigError
from aelab.evaluate.regularized import code_metrics, denoising_metrics
from aelab.nn.activations import ACTIVATIONS
from aelab.regularizers import (
    NOISES,
    PENALTIES,
    dense_jacobian_norm,
    encoder_jacobian_norm,
    jacobian_norm_by_autograd,
    parse_noise,
    parse_sparsity,
)
from aelab.train import RunState
from aelab.train.stacking import group_key
from aelab.train.steps import AutogradStep, FastStep, StackedStep, choose_engine, make_step, stack_order
from tests.conftest import NO_DOCTOR, TINY, TINY_FLAGS
from tests.test_resume import Stop, StopAfter, assert_same_run

BASE = RunConfig.from_dict(TINY).replace(train={"optimizer": "sgd", "learning_rate": 0.5})
NOISE_SPECS = ["gaussian:0.5", "mask:0.3", "salt_pepper:0.2"]


@pytest.fixture(scope="module")
def data():
    return load_dataset(BASE.data)


# --- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", NOISE_SPECS)
def test_corruption_is_a_copy_in_the_data_range_and_changes_the_share_asked(spec):
    images = torch.rand(64, 1, 28, 28)
    before = images.clone()
    noisy = parse_noise(spec).corrupt(images, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)  # the clean images (the targets) are untouched
    assert noisy.shape == images.shape and noisy.data_ptr() != images.data_ptr()
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0  # clipped to the data's range
    changed = float((noisy != images).float().mean())
    kind, level = spec.split(":")
    if kind == "gaussian":
        assert changed > 0.99
    else:  # mask and salt_pepper change about `level` of the pixels (fewer: some already 0 or 1)
        assert abs(changed - float(level)) < 0.02
    if kind == "salt_pepper":
        hit = noisy != images
        assert abs(float((noisy[hit] == 1.0).float().mean()) - 0.5) < 0.05  # salt and pepper alike


def test_noise_is_reproducible_by_seed_and_differs_across_seeds_and_steps():
    noise = parse_noise("gaussian:0.5")
    images = torch.rand(8, 1, 28, 28)
    first = noise.corrupt(images, 1.0, torch.Generator().manual_seed(3))
    again = noise.corrupt(images, 1.0, torch.Generator().manual_seed(3))
    other = noise.corrupt(images, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    generator = torch.Generator().manual_seed(3)
    assert not torch.equal(noise.corrupt(images, 1.0, generator), noise.corrupt(images, 1.0, generator))


@pytest.mark.parametrize("engine", ["autograd", "fast"])
def test_the_step_trains_on_noisy_inputs_against_the_clean_targets(data, engine):
    config = BASE.replace(train={"noise": "gaussian:0.5", "engine": engine, "loss": "mse"})
    state = RunState(config, data)
    images = state.batch(torch.arange(32))[None]
    before = images.clone()
    # What the step must compute: the loss of the noisy input's reconstruction against the clean
    # images, with the draw the run's generator gives next.
    generator = torch.Generator().set_state(state.noise_generator.get_state())
    noisy = state.regularization.noise.corrupt(images[0], 1.0, generator)
    with torch.no_grad():
        output, logits = state.model.loss_input(state.model(noisy))
        expected = float(state.likelihood.nll(output, images[0], logits=logits).mean())
        as_if_noisy_targets = float(state.likelihood.nll(output, noisy, logits=logits).mean())
    loss = float(make_step([state])(images)[0])
    assert torch.equal(images, before)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert abs(loss - as_if_noisy_targets) > 0.02


def test_bad_noise_and_sparsity_specs_are_one_clear_line(data):
    for spec, words in [
        ("blur:0.5", "KIND one of gaussian, mask, salt_pepper"),
        ("gaussian", "KIND:LEVEL"),
        ("mask:1.5", "must be in (0, 1)"),
        ("mask:lots", "must be a finite number"),
    ]:
        with pytest.raises(ConfigError, match=r"train\.noise") as error:
            parse_noise(spec)
        assert words in str(error.value)
    for spec, words in [("l2", "l1:WEIGHT"), ("kl", "kl:RHO"), ("kl:1.5", "(0, 1)"), ("l1:-1", "positive")]:
        with pytest.raises(ConfigError, match=r"train\.sparsity") as error:
            parse_sparsity(spec)
        assert words in str(error.value)
    relu_code = BASE.replace(model={"code_activation": "relu"}, train={"sparsity": "kl:0.05"})
    with pytest.raises(ConfigError, match=r"needs a code in \(0, 1\).*model.code_activation: sigmoid"):
        RunState(relu_code, data)
    assert parse_sparsity("l1").weight == 1e-4  # the Keras blog's activity_regularizer
    assert parse_noise("salt-pepper:0.1").noise is NOISES["salt_pepper"]


# --- penalties against autograd ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(PENALTIES))
def test_each_sparsity_penalty_gradient_is_autograds(kind):
    spec = parse_sparsity("kl:0.1:0.3" if kind == "kl" else "l1:0.01")
    code = torch.rand(16, 6, dtype=torch.float64) * 0.9 + 0.05
    code[0, 0] = 0.0  # |x| at 0: autograd's subgradient is 0, as sign(0)
    leaf = code.clone().requires_grad_()
    (expected,) = torch.autograd.grad(spec.value(leaf), leaf)
    assert torch.allclose(spec.gradient(code), expected, rtol=1e-10, atol=1e-14)
    assert float(spec.value(code)) > 0


@pytest.mark.parametrize("activations", [["sigmoid"], ["sigmoid", "sigmoid"], ["relu", "tanh"], ["elu", "sigmoid"]])
def test_the_contractive_closed_form_is_the_jacobians_norm_and_its_gradient_autograds(activations):
    torch.manual_seed(0)
    dims = [7, 5, 4][: len(activations) + 1]
    layers = [
        (torch.randn(b, a, dtype=torch.float64, requires_grad=True), torch.randn(b, dtype=torch.float64), name)
        for a, b, name in zip(dims, dims[1:], activations, strict=False)
    ]
    images = torch.rand(3, dims[0], dtype=torch.float64)

    def encode(x):
        for weight, bias, name in layers:
            x = ACTIVATIONS[name].function(x @ weight.t() + bias)
        return x

    code, norm = dense_jacobian_norm(layers, images)
    jacobians = torch.stack([torch.autograd.functional.jacobian(encode, image[None])[0, :, 0] for image in images])
    assert torch.allclose(code, encode(images))
    assert torch.allclose(norm, jacobians.square().sum((1, 2)), rtol=1e-10)
    # The gradient through the closed form (one ordinary backward) is double backward's.
    weights = [weight for weight, _, _ in layers]
    closed = torch.autograd.grad(norm.sum(), weights)
    _, by_autograd = jacobian_norm_by_autograd(encode, images)
    reference = torch.autograd.grad(by_autograd.sum(), weights)
    for a, b in zip(closed, reference, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_the_contractive_penalty_of_a_model_takes_the_closed_form_for_dense_and_autograd_for_conv(data):
    for model in ({}, {"kind": "conv", "hidden_dims": [2], "latent_dim": 3}):
        state = RunState(BASE.replace(model=model), data)
        images = state.batch(torch.arange(4))
        _, norm = encoder_jacobian_norm(state.model, images)
        _, reference = jacobian_norm_by_autograd(state.model.encode, images)
        assert torch.allclose(norm, reference, rtol=1e-4), model


# --- the fast step equals autograd ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        *({"noise": spec} for spec in NOISE_SPECS),
        {"sparsity": "l1:0.01"},
        {"sparsity": "kl:0.05:0.1"},
        {"noise": "mask:0.2", "sparsity": "kl:0.2"},
        {"noise": "gaussian:0.3", "sparsity": "l1:0.001", "loss": "mse", "optimizer": "adam", "learning_rate": 0.01},
    ],
)
def test_the_fast_step_equals_autograd_with_each_option_on(data, options):
    config = BASE.replace(train=options)
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config.replace(train={"engine": "fast"}), data)
    reference_step, fast_step = make_step([reference]), make_step([fast])
    assert isinstance(reference_step, AutogradStep) and isinstance(fast_step, FastStep)
    for step in range(3):
        images = reference.batch(torch.arange(step * 32, step * 32 + 32))[None]
        assert float(fast_step(images)[0]) == pytest.approx(float(reference_step(images)[0]), rel=1e-5, abs=1e-6)
    for (name, a), b in zip(reference.model.state_dict().items(), fast.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    assert torch.equal(reference.noise_generator.get_state(), fast.noise_generator.get_state())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    noise=st.sampled_from(["none", *NOISE_SPECS, "mask:0.6", "gaussian:2"]),
    sparsity=st.sampled_from(["none", "l1", "l1:0.05", "kl:0.05:0.1", "kl:0.3"]),
    activation=st.sampled_from(["sigmoid", "relu", "tanh", "elu"]),
    loss=st.sampled_from(["bce", "mse", "mae", "cb"]),
    momentum=st.sampled_from([0.0, 0.9]),
    tied=st.booleans(),
    hidden=st.sampled_from([[], [12], [12, 8]]),
)
def test_random_regularised_configs_train_alike_on_both_engines(
    data, noise, sparsity, activation, loss, momentum, tied, hidden
):
    # SGD: adaptive optimizers (Adam, RMSprop) turn rounding-size gradient differences near zero
    # into steps of the learning rate's size, on either engine alike (test_steps.py uses SGD too).
    config = BASE.replace(
        model={"activation": activation, "code_activation": "sigmoid", "tied": tied, "hidden_dims": hidden},
        train={"noise": noise, "sparsity": sparsity, "loss": loss, "momentum": momentum},
    )
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config.replace(train={"engine": "fast"}), data)
    reference_step, fast_step = make_step([reference]), make_step([fast])
    assert isinstance(fast_step, FastStep)
    for step in range(2):
        images = reference.batch(torch.arange(step * 32, step * 32 + 32))[None]
        assert float(fast_step(images)[0]) == pytest.approx(float(reference_step(images)[0]), rel=1e-5, abs=1e-6)
    for (name, a), b in zip(reference.model.state_dict().items(), fast.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def test_the_contractive_penalty_is_refused_by_the_fast_step_and_trains_alone(data):
    config = BASE.replace(train={"contractive": 0.1})
    state = RunState(config, data)
    assert state.engine == "autograd" and group_key(config) is None
    with pytest.raises(ConfigError, match=r"it does not implement train\.contractive"):
        choose_engine(config.replace(train={"engine": "fast"}), state.model)
    plain = RunState(BASE.replace(train={"engine": "autograd"}), data)
    images = state.batch(torch.arange(32))[None]
    assert float(make_step([state])(images)[0]) > float(make_step([plain])(images)[0])  # the penalty counts


def test_stacked_members_with_their_own_noise_and_penalties_step_as_alone(data):
    configs = [
        BASE,
        BASE.replace(train={"noise": "gaussian:0.5"}),
        BASE.replace(train={"noise": "mask:0.3", "seed": 1}),
        BASE.replace(train={"sparsity": "l1:0.01"}),
    ]
    assert len({group_key(config) for config in configs}) == 1  # noise and sparsity are per member
    solo = [RunState(config, data) for config in configs]
    stacked = [RunState(config, data) for config in configs]
    order = stack_order(stacked)
    step = StackedStep([stacked[m] for m in order])
    solo_steps = [make_step([state]) for state in solo]
    for index in range(2):
        images = solo[0].batch(torch.arange(index * 32, index * 32 + 32))[None]
        losses = step(images)
        for position, m in enumerate(order):
            assert float(losses[position]) == pytest.approx(float(solo_steps[m](images)[0]), rel=1e-5)
    for a, b in zip(solo, stacked, strict=True):
        assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())


# --- runs: resume, metrics, command line ------------------------------------------------------

RESUME = {
    "data": {"train_limit": 96, "val_limit": 32},
    "model": {"hidden_dims": [8], "latent_dim": 3},
    "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
}


@pytest.mark.parametrize(
    "options", [{"noise": "salt_pepper:0.2", "sparsity": "l1"}, {"noise": "gaussian:0.5", "contractive": 0.01}]
)
def test_a_stopped_denoising_run_resumes_bit_identically(tmp_path, options):
    config = RunConfig.from_dict(RESUME).replace(train=options)
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    resume(tmp_path / "stopped", progress=False)
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")
    assert "rng/noise" in load_file(tmp_path / "whole" / "checkpoint.safetensors")


def test_plain_runs_keep_their_checkpoint_metrics_keys_and_report(tmp_path):
    from aelab import evaluate_run

    train(RunConfig.from_dict(RESUME), tmp_path / "plain", progress=False, doctor=False)
    assert "<h2>Denoising</h2>" not in (tmp_path / "plain" / "report.html").read_text()
    assert evaluate_run(tmp_path / "plain").sample_noisy is None
    assert "rng/noise" not in load_file(tmp_path / "plain" / "checkpoint.safetensors")
    assert not any(key.startswith(("val_noisy", "val_code")) for key in load_run(tmp_path / "plain").history[-1])


def test_denoising_scores_are_fixed_by_seed_and_worse_than_clean_ones(data):
    state = RunState(BASE, data)
    noise = parse_noise("gaussian:0.5")
    first = denoising_metrics(state.model, state.likelihood, state.validation, noise, seed=4)
    assert first == denoising_metrics(state.model, state.likelihood, state.validation, noise, seed=4)
    assert first != denoising_metrics(state.model, state.likelihood, state.validation, noise, seed=5)
    codes = code_metrics(state.model, state.validation)
    assert 0.0 < codes["val_code_mean"] < 1.0 and 0.0 <= codes["val_code_near_zero"] <= 1.0


def test_cli_trains_a_denoising_sparse_run_and_records_its_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--noise", "gaussian:0.5", "--sparsity", "l1:1e-3", "--no-report"]
    assert main(["train", *TINY_FLAGS, *flags, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_noisy_loss", "val_noisy_mse", "val_code_mean", "val_code_near_zero"} <= set(row) for row in rows)
    assert rows[-1]["val_noisy_mse"] > rows[-1]["val_mse"]  # noisy inputs are harder to reconstruct from
    config = load_run(out).config
    assert (config.train.noise, config.train.sparsity) == ("gaussian:0.5", "l1:1e-3")
    from aelab import evaluate_run, render_report

    evaluation = evaluate_run(out)
    assert evaluation.metrics["noisy_mse"] == pytest.approx(rows[-1]["val_noisy_mse"], rel=1e-5)  # same seed
    assert evaluation.sample_noisy.shape == evaluation.sample_targets.shape
    assert not torch.equal(evaluation.sample_noisy, evaluation.sample_targets)
    assert "noisy inputs, reconstructions and originals" in render_report(out).read_text()
    capsys.readouterr()
    assert main(["train", *TINY_FLAGS, "--noise", "blur:1", "--out", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "gaussian, mask, salt_pepper" in error


def test_the_doctor_names_the_flags_for_a_wide_code_and_is_quiet_for_a_constrained_one(tmp_path, capsys):
    from aelab.doctor import check_setup

    wide = RunConfig.from_dict(TINY).replace(model={"hidden_dims": [], "latent_dim": 784})
    data = load_dataset(wide.data)
    (finding,) = [f for f in check_setup(wide, data) if f.id == "code-too-wide"]
    assert "train.noise: gaussian:0.5" in finding.fix and "train.sparsity: l1" in finding.fix
    for options in ({"noise": "mask:0.3"}, {"sparsity": "l1"}, {"contractive": 0.1}):
        assert "code-too-wide" not in {f.id for f in check_setup(wide.replace(train=options), data)}, options
    flags = [*TINY_FLAGS, "--hidden", "none", "--latent", "784", "--epochs", "1", "--no-report"]
    main(["train", *flags, "--out", str(tmp_path / "wide")])
    assert "--noise gaussian:0.5" in capsys.readouterr().out + (tmp_path / "wide" / "findings.json").read_text()


def test_compare_takes_the_options_as_grid_keys_and_stacks_them(tmp_path):
    from aelab.sweep.grid import parse_grid, parse_value, resolve_key

    grid = parse_grid(["noise=none,gaussian:0.5", "sparsity=l1,kl:0.05:0.1", "contractive=0,0.1"])
    assert grid == {"noise": ("none", "gaussian:0.5"), "sparsity": ("l1", "kl:0.05:0.1"), "contractive": ("0", "0.1")}
    assert [resolve_key(key) for key in grid] == [("train", "noise"), ("train", "sparsity"), ("train", "contractive")]
    assert parse_value("contractive", "0.1") == 0.1
    sweep = tmp_path / "sweep"
    grid = ["--grid", "noise=none,mask:0.3", "sparsity=none,l1", "--epochs", "1", "--no-report"]
    assert main(["compare", *TINY_FLAGS, *grid, "--out", str(sweep)]) == 0
    folders = sorted(path.name for path in sweep.iterdir() if (path / "config.yaml").exists())
    assert folders == ["noise-mask-0.3_sparsity-l1", "noise-mask-0.3_sparsity-none", "noise-none_sparsity-l1",
                       "noise-none_sparsity-none"]  # fmt: skip
    run = load_run(sweep / "noise-mask-0.3_sparsity-l1")
    assert (run.config.train.noise, run.config.train.sparsity) == ("mask:0.3", "l1")
    assert "val_noisy_mse" in run.history[-1] and "val_noisy_mse" not in load_run(sweep / folders[-1]).history[-1]
    results = {row["run"]: row for row in json.loads((sweep / "results.json").read_text())}
    assert results["noise-mask-0.3_sparsity-l1"]["noisy_mse"] > 0 and "noisy_mse" not in results[folders[-1]]


@pytest.mark.parametrize("loss", ["bce", "cb", "mse"])
def test_every_option_at_once_trains_a_conv_model_through_autograd(data, loss):
    options = {"noise": "salt_pepper:0.1", "sparsity": "kl:0.1", "contractive": 0.01, "loss": loss}
    config = BASE.replace(model={"kind": "conv", "hidden_dims": [2], "latent_dim": 3}, train=options)
    state = RunState(config, data)
    step = make_step([state])
    assert isinstance(step, AutogradStep)
    before = [p.detach().clone() for p in state.model.parameters()]
    images = state.batch(torch.arange(16))[None]
    loss_value = float(step(images)[0])
    plain = RunState(config.replace(train={"noise": "none", "sparsity": "none", "contractive": 0.0}), data)
    assert torch.isfinite(torch.tensor(loss_value)) and loss_value != float(make_step([plain])(images)[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


def test_a_noise_kind_registered_from_outside_trains_on_both_engines(data, monkeypatch):
    from aelab.regularizers import Noise

    def invert(images, level, high, generator):
        flip = torch.rand(images.shape, generator=generator, device=images.device) < level
        return torch.where(flip, high - images, images)

    monkeypatch.setitem(NOISES, "invert", Noise("invert", invert, "the share of pixels inverted", (0, 1, True)))
    config = BASE.replace(train={"noise": "invert:0.25"})
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config, data)
    images = fast.batch(torch.arange(32))[None]
    step = make_step([fast])
    assert isinstance(step, FastStep)
    assert float(step(images)[0]) == pytest.approx(float(make_step([reference])(images)[0]), rel=1e-5)
