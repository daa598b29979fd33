"""Every config field is classified for the fast step and for stacking, and the code keeps to
the classification: a new field cannot slip past the fast path (issue 11, point 3)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aelab import RunConfig, load_dataset
from aelab.errors import ConfigError
from aelab.nn.activations import ACTIVATIONS
from aelab.train import RunState
from aelab.train import steps as steps_module
from aelab.train.stacking import group_key
from aelab.train.steps import (
    FAST_STEP,
    STACKING,
    AutogradStep,
    FastStep,
    FastVariationalStep,
    StackedStep,
    choose_engine,
    config_fields,
    config_step_problem,
    make_step,
    stack_order,
)
from tests.conftest import TINY

# A value other than the default for every field, valid with the base config below (a field
# with a new role needs one here: the tests below use it).
OTHER: dict[str, object] = {
    "data.name": "digits",
    "data.path": "images.npy",
    "data.data_dir": "/nonexistent/mnist",
    "data.scale": "none",
    "data.binarize": "threshold",
    "data.threshold": 0.3,
    "data.val_fraction": 0.1,
    "data.train_limit": 100,
    "data.val_limit": 50,
    "data.fingerprint": "sha256:0",
    "model.kind": "conv",
    "model.hidden_dims": (16, 8),
    "model.latent_dim": 6,
    "model.activation": "relu",
    "model.code_activation": "tanh",
    "model.output_activation": "linear",
    "model.init": "he_normal",
    "model.tied": True,
    "train.loss": "mse",
    "train.optimizer": "rmsprop",
    "train.learning_rate": 0.05,
    "train.momentum": 0.5,
    "train.weight_decay": 0.01,
    "train.batch_size": 32,
    "train.epochs": 3,
    "train.seed": 3,
    "train.patience": 2,
    "train.device": "cpu",
    "train.threads": 2,
    "train.engine": "autograd",
    "train.noise": "mask:0.3",
    "train.sparsity": "l1:0.01",
    "train.contractive": 0.1,
    "model.variational": True,
    "train.beta": 4.0,
    "train.kl_warmup_epochs": 5,
    "train.free_bits": 0.5,
}
# Fields whose other value needs a companion to validate (threshold needs binarize threshold,
# momentum an optimizer that has one).
COMPANIONS: dict[str, dict[str, object]] = {
    "data.threshold": {"data.binarize": "threshold"},
    "train.momentum": {"train.optimizer": "sgd"},
    "train.beta": {"model.variational": True},
    "train.kl_warmup_epochs": {"model.variational": True},
    "train.free_bits": {"model.variational": True},
}


def with_values(config: RunConfig, values: dict[str, object]) -> RunConfig:
    sections: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return config.replace(**sections)


def changed(config: RunConfig, key: str) -> RunConfig:
    return with_values(config, {**COMPANIONS.get(key, {}), key: OTHER[key]})


BASE = RunConfig.from_dict(TINY)


def test_every_config_field_is_classified_for_the_fast_step_and_for_stacking():
    fields = config_fields()
    assert len(fields) == sum(
        len(dataclasses.fields(kind)) for kind in (type(BASE.data), type(BASE.model), type(BASE.train))
    )
    assert set(FAST_STEP) == set(fields), "classify the new field in aelab.train.steps.FAST_STEP"
    assert set(STACKING) == set(fields), "classify the new field in aelab.train.steps.STACKING"
    assert set(FAST_STEP.values()) <= {"input", "honoured", "checked", "refused"}
    assert set(STACKING.values()) <= {"shared", "member", "alone"}
    assert set(OTHER) == set(fields), "give the new field a non-default value in OTHER"
    for key in fields:
        assert changed(BASE, key) != BASE, key


@pytest.mark.parametrize("key", [key for key, role in FAST_STEP.items() if role == "input"])
def test_input_fields_never_turn_the_fast_step_off(key):
    assert config_step_problem(changed(BASE, key)) is None


@pytest.mark.parametrize("key", [key for key, role in FAST_STEP.items() if role == "honoured"])
def test_the_fast_step_computes_what_autograd_computes_for_every_honoured_field(key):
    config = changed(BASE.replace(train={"optimizer": "sgd", "learning_rate": 0.5}), key)
    assert config_step_problem(config) is None
    data = load_dataset(config.data)
    reference = RunState(config.replace(train={"engine": "autograd"}), data)
    fast = RunState(config.replace(train={"engine": "fast"}), data)
    reference_step, fast_step = make_step([reference]), make_step([fast])
    assert isinstance(reference_step, AutogradStep)
    assert type(fast_step) is (FastVariationalStep if config.model.variational else FastStep)
    for step in range(3):
        images = reference.batch(torch.arange(step * 32, step * 32 + 32))[None]
        assert float(fast_step(images)[0]) == pytest.approx(float(reference_step(images)[0]), rel=1e-5, abs=1e-6)
    for (name, a), b in zip(reference.model.state_dict().items(), fast.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{key}: {name}"


def test_checked_fields_refuse_what_the_fast_step_cannot_do(monkeypatch):
    checked = {key for key, role in FAST_STEP.items() if role == "checked"}
    assert checked == {"model.kind", "model.activation", "model.code_activation", "train.engine", "train.loss"}
    assert "no head for train.loss gaussian-pixel" in config_step_problem(
        with_values(BASE, {"train.loss": "gaussian-pixel"})
    )
    assert "dense models only" in config_step_problem(changed(BASE, "model.kind"))
    assert config_step_problem(changed(BASE, "train.engine")) == "train.engine is autograd"
    record = dataclasses.replace(ACTIVATIONS["relu"], name="no_gradient", gradient=None)
    monkeypatch.setitem(ACTIVATIONS, "no_gradient", record)
    for key in ("model.activation", "model.code_activation"):
        config = with_values(BASE, {key: "no_gradient"})
        assert "no gradient for the 'no_gradient' activation" in config_step_problem(config)
    data = load_dataset(BASE.data)
    conv = changed(BASE, "model.kind").replace(model={"hidden_dims": [4], "latent_dim": 4})
    assert RunState(conv, data).engine == "autograd"  # auto falls back, by the config
    with pytest.raises(ConfigError, match="engine fast cannot train this model: it handles dense models only"):
        RunState(conv.replace(train={"engine": "fast"}), data)


def test_a_refused_field_sends_every_value_but_its_default_to_autograd(monkeypatch):
    # How the next field the fast step does not implement (a KL weight, input noise) is kept
    # off the fast path: classified "refused", any value but its default means autograd.
    monkeypatch.setitem(FAST_STEP, "train.weight_decay", "refused")
    assert config_step_problem(BASE) is None
    config = changed(BASE, "train.weight_decay")
    assert config_step_problem(config) == "it does not implement train.weight_decay (here 0.01)"
    data = load_dataset(config.data)
    assert RunState(config, data).engine == "autograd"
    assert group_key(config) is None  # and it trains alone
    with pytest.raises(ConfigError, match=r"it does not implement train\.weight_decay"):
        choose_engine(config.replace(train={"engine": "fast"}), RunState(config, data).model)
    assert steps_module.FAST_STEP["train.weight_decay"] == "refused"


@pytest.mark.parametrize("key", list(STACKING))
def test_group_keys_follow_the_stacking_roles(key):
    base_key = group_key(BASE)
    assert base_key is not None
    other = changed(BASE, key)
    role = STACKING[key]
    if config_step_problem(other) is not None:  # no fast step: trains alone whatever the role
        assert group_key(other) is None
    elif role == "member":
        assert group_key(other) == base_key, key
    elif role == "shared":
        assert group_key(other) not in (None, base_key), key
    else:
        assert group_key(other) is None, key


# The stacked step's batched matmuls sum in another order than a member's own step, so the two
# differ by rounding (about 1e-8 in the weights after SGD steps). Adam divides each gradient by its
# own running magnitude, so where a gradient element is near zero (comparable to Adam's eps, 1e-8)
# that rounding is amplified: up to about 5e-4 of one step (lr 1e-2) on some CPUs' kernels.
@pytest.mark.parametrize(("optimizer", "weight_atol"), [("sgd", 1e-7), ("adam", 1e-3 * BASE.train.learning_rate)])
def test_the_stacked_step_trains_each_member_as_its_own_fast_step(optimizer, weight_atol):
    base = BASE.replace(train={"optimizer": optimizer})
    configs = [base, changed(base, "train.loss"), changed(base, "model.activation"), changed(base, "train.seed")]
    data = load_dataset(BASE.data)
    solo = [RunState(config, data) for config in configs]
    stacked = [RunState(config, data) for config in configs]
    order = stack_order(stacked)
    step = StackedStep([stacked[m] for m in order])
    solo_steps = [make_step([state]) for state in solo]
    for index in range(3):
        images = solo[0].batch(torch.arange(index * 32, index * 32 + 32))[None]
        losses = step(images)
        for position, m in enumerate(order):
            assert float(losses[position]) == pytest.approx(float(solo_steps[m](images)[0]), rel=1e-5)
    step.release()
    for a, b in zip(solo, stacked, strict=True):
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
            assert torch.allclose(x, y, rtol=1e-4, atol=weight_atol)
