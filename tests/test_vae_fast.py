"""The dense VAE's hand-written step (`aelab.train.fast_variational.DenseVAEStep`) computes what
`VariationalStep` computes through autograd: the same objective, every parameter's gradient and,
over whole runs, the same metrics and generator states; it resumes exactly (issue 12's speed goal)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from aelab import RunConfig, load_dataset, resume, train
from aelab.errors import ConfigError
from aelab.losses import gaussian_kl
from aelab.nn.variational import kl_weight
from aelab.train import RunState
from aelab.train.fast_variational import DenseVAEStep
from aelab.train.steps import FastVariationalStep, VariationalStep, make_step

from .conftest import NO_DOCTOR
from .test_resume import Stop, StopAfter, assert_same_run

BASE = {
    "data": {"train_limit": 256, "val_limit": 64},
    "model": {"hidden_dims": [32], "latent_dim": 4, "activation": "relu", "variational": True},
    "train": {"epochs": 3, "batch_size": 64, "learning_rate": 3e-3, "threads": 1},
}

# (model, train) settings over the space the step covers: hidden activations with and without
# an in-place form, several hidden layers or none, beta, warm-up and free bits, likelihoods
# with a fused head (bce, cb, mse) and one through the autograd head (a linear output).
CASES = {
    "relu": ({}, {}),
    "elu-two-layers-beta-warmup": (
        {"activation": "elu", "hidden_dims": [32, 16]},
        {"beta": 2.0, "kl_warmup_epochs": 3},
    ),
    "tanh-mse-beta": ({"activation": "tanh"}, {"loss": "mse", "beta": 0.5}),
    "gelu-no-hidden-layer-cb": ({"activation": "gelu", "hidden_dims": []}, {"loss": "cb"}),
    "linear-output-mse": ({"output_activation": "linear", "hidden_dims": [16, 8, 16]}, {"loss": "mse"}),
    "sigmoid-mae-free-bits": ({"activation": "sigmoid"}, {"loss": "mae", "free_bits": 0.05}),
}


# Trainers built directly do not apply train.threads; on a busy 2-core machine two threads are
# many times slower (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def config_of(model: dict, train_values: dict, **extra: dict) -> RunConfig:
    raw = {
        "data": {**BASE["data"], **extra.get("data", {})},
        "model": {**BASE["model"], **model},
        "train": {**BASE["train"], **train_values, **extra.get("train", {})},
    }
    return RunConfig.from_dict(raw)


def both_states(config: RunConfig) -> tuple[RunState, RunState]:
    data = load_dataset(config.data)
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config.replace(train={"engine": "fast"}), data)
    return reference, fast


def one_step_gradients(reference: RunState, fast: RunState, images: torch.Tensor) -> tuple[float, float]:
    """The objective of one batch (B, C, H, W) through autograd and through the fast step, each
    leaving its gradients in its own model's .grad; no update."""
    objective = VariationalStep(reference).objective(reference, images)
    reference.model.zero_grad(set_to_none=True)
    objective.backward()
    step = DenseVAEStep(fast.model, fast.config.train.loss)  # type: ignore[arg-type]
    for param, grad in step.grads:
        param.grad = grad
    train = fast.config.train
    weight = kl_weight(train.beta, train.kl_warmup_epochs, fast.epoch + 1)
    value = step.gradients(images.flatten(1), fast.sample_generator, weight, train.free_bits)
    return float(objective.detach()), float(value[0])


def assert_same_gradients(reference: RunState, fast: RunState) -> None:
    for (name, a), b in zip(reference.model.named_parameters(), fast.model.parameters(), strict=True):
        assert b.grad is not None and float(b.grad.abs().max()) > 0, name
        scale = float(a.grad.abs().max())
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale), (
            f"{name}: {(a.grad - b.grad).abs().max():.2e} of {scale:.2e}"
        )


@pytest.mark.parametrize("case", list(CASES))
def test_one_step_has_autograds_objective_and_gradients(case):
    model, train_values = CASES[case]
    reference, fast = both_states(config_of(model, train_values))
    images = reference.batch(torch.arange(64))
    for state in (reference, fast):
        state.epoch = 1  # the second epoch: a warm-up's weight is 2/3 of beta there
    expected, value = one_step_gradients(reference, fast, images)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert_same_gradients(reference, fast)
    # the same codes were drawn: the generators moved alike
    assert torch.equal(reference.sample_generator.get_state(), fast.sample_generator.get_state())


def test_free_bits_hold_the_dimensions_below_them_as_autograds_clamp_does():
    config = config_of({"hidden_dims": [32], "latent_dim": 8}, {})
    reference, fast = both_states(config)
    images = reference.batch(torch.arange(64))
    with torch.no_grad():  # the batch-mean KL per dimension does not depend on the draw
        per_dimension = gaussian_kl(*reference.model.posterior(images)).mean(dim=0).sort().values
    free_bits = float(per_dimension[3] + per_dimension[4]) / 2  # four dimensions under it, four over
    reference, fast = both_states(config.replace(train={"free_bits": free_bits}))
    expected, value = one_step_gradients(reference, fast, images)
    assert value == pytest.approx(expected, rel=1e-5)
    assert_same_gradients(reference, fast)
    # against the unclamped objective on the same draws: the held dimensions count free_bits each
    unclamped, _ = both_states(config)
    free = float(VariationalStep(unclamped).objective(unclamped, images).detach())
    assert value - free == pytest.approx(float((free_bits - per_dimension[:4]).sum()), abs=2e-3)


@pytest.mark.parametrize("case", ["relu", "elu-two-layers-beta-warmup", "sigmoid-mae-free-bits"])
def test_whole_runs_record_the_same_metrics_and_end_with_the_same_generators(tmp_path, case):
    model, train_values = CASES[case]
    config = config_of(model, train_values)
    runs = {}
    for engine in ("autograd", "fast"):
        out = tmp_path / engine
        runs[engine] = train(config.replace(train={"engine": engine}), out, progress=False, **NO_DOCTOR)
    autograd, fast = runs["autograd"].history, runs["fast"].history
    assert len(autograd) == len(fast) == 3
    for reference_row, row in zip(autograd, fast, strict=True):
        assert reference_row.keys() == row.keys()
        for key, expected in reference_row.items():
            if key == "seconds":
                continue
            assert row[key] == pytest.approx(expected, rel=2e-5, abs=1e-6, nan_ok=True), key
    assert fast[-1]["train_loss"] < fast[0]["train_loss"]  # it trained
    checkpoints = [load_file(tmp_path / engine / "checkpoint.safetensors") for engine in ("autograd", "fast")]
    for name in ("rng/sample", "rng/order", "rng/binarize"):
        assert torch.equal(checkpoints[0][name], checkpoints[1][name]), name


def test_a_run_on_the_fast_step_resumes_bit_identically(tmp_path):
    config = config_of({"hidden_dims": [16, 8]}, {"beta": 0.5, "kl_warmup_epochs": 2, "free_bits": 0.05})
    config = config.replace(train={"epochs": 4})
    assert isinstance(make_step([RunState(config, load_dataset(config.data))]), FastVariationalStep)
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, callbacks=[StopAfter(2)], **NO_DOCTOR)
    assert resume(tmp_path / "stopped", progress=False).extras["resumed_from_epoch"] == 2
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def test_the_step_choice_for_vaes():
    data = load_dataset(RunConfig.from_dict(BASE).data)
    dense = config_of({}, {"beta": 2.0})
    assert isinstance(make_step([RunState(dense, data)]), FastVariationalStep)  # train.engine auto
    assert isinstance(make_step([RunState(dense.replace(train={"engine": "fast"}), data)]), FastVariationalStep)
    assert type(make_step([RunState(dense.replace(train={"engine": "autograd"}), data)])) is VariationalStep
    conv = config_of({"kind": "conv", "hidden_dims": [4]}, {})
    two_parameters = config_of({}, {"loss": "gaussian-pixel"})
    for config, problem in (
        (conv, "it handles dense models only"),
        (two_parameters, "it has no head for train.loss gaussian-pixel"),
    ):
        assert type(make_step([RunState(config, data)])) is VariationalStep  # auto: autograd
        with pytest.raises(ConfigError, match=f"engine fast cannot train this model: {problem}"):
            RunState(config.replace(train={"engine": "fast"}), data)
