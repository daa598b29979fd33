"""`aelab.doctor.check` on any nn.Module that maps a batch to a reconstruction (issue 10, item 7).

Random small modules of every kind the doctor meets in the wild (nn.Linear and F.linear with
bare parameters, no parameters at all, BatchNorm, Dropout, LayerNorm, Conv/ConvTranspose; a
tensor, tuple, dict, list or dataclass as output; flat or image inputs; float32 or float64;
submodules in mixed train/eval modes, some gradients set, some parameters frozen): check
returns findings without raising and leaves the model exactly as it found it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from aelab.doctor import check
from aelab.errors import ConfigError
from aelab.findings import Finding


@dataclasses.dataclass
class Output:
    code: torch.Tensor
    recon: torch.Tensor


class Wrapped(nn.Module):
    """A body mapping inputs to reconstructions, with its output wrapped one of several ways."""

    def __init__(self, body: nn.Module, wrap: str) -> None:
        super().__init__()
        self.body = body
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        recon = self.body(x)
        code = recon.flatten(1)[:, :2]
        if self.wrap == "tuple":  # pytorch/examples' VAE: (recon, mu, logvar)
            return recon, code, code.exp()
        if self.wrap == "list":
            return [recon, code]
        if self.wrap == "dict":  # the code first: the name says which item is the reconstruction
            return {"z": code, "reconstruction": recon}
        if self.wrap == "dataclass":
            return Output(code=code, recon=recon)
        return recon


class Functional(nn.Module):
    """Layers built from F.linear and bare nn.Parameters: nothing for a hook to see."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden, width) / math.sqrt(width))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(width, hidden) / math.sqrt(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.linear(torch.relu(F.linear(x, self.w1, self.b1)), self.w2))


class NoParameters(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(4 * x - 2)


class Flatten(nn.Module):
    """A dense model on images: flattens (B, C, H, W) itself and returns (B, C*H*W)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def dense_body(draw, width: int) -> nn.Module:
    hidden = draw(st.integers(2, 6))
    layers: list[nn.Module] = [nn.Linear(width, hidden)]
    for extra in draw(st.lists(st.sampled_from(["batchnorm", "layernorm", "dropout"]), max_size=2, unique=True)):
        layers.append({"batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}[extra](hidden) if extra != "dropout"
                      else nn.Dropout(0.3))  # fmt: skip
    layers.append(ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]())
    layers.append(nn.Linear(hidden, width))
    if draw(st.booleans()):
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def conv_body(draw, channels: int) -> nn.Module:
    kernels = draw(st.integers(1, 3))
    layers: list[nn.Module] = [nn.Conv2d(channels, kernels, 3, padding=1)]
    if draw(st.booleans()):
        layers.append(nn.BatchNorm2d(kernels))
    layers.append(ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]())
    if draw(st.booleans()):
        layers.append(nn.Dropout2d(0.2))
    layers += [nn.ConvTranspose2d(kernels, channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


@st.composite
def cases(draw):
    """(model, inputs, loss, from_logits): a random small model in a random state."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    count = draw(st.integers(4, 12))
    kind = draw(st.sampled_from(["dense", "functional", "none", "conv", "dense-on-images"]))
    if kind in ("conv", "dense-on-images"):
        channels, side = draw(st.integers(1, 2)), draw(st.sampled_from([3, 4]))
        inputs = torch.rand(count, channels, side, side)
        body = conv_body(draw, channels) if kind == "conv" else Flatten(dense_body(draw, channels * side * side))
    else:
        width = draw(st.integers(3, 8))
        inputs = torch.rand(count, width)
        body = {"dense": lambda: dense_body(draw, width), "functional": lambda: Functional(width, 3),
                "none": NoParameters}[kind]()  # fmt: skip
    model = Wrapped(body, draw(st.sampled_from(["tensor", "tuple", "list", "dict", "dataclass"]))).to(dtype)
    if draw(st.booleans()):  # a few steps of training: BatchNorm statistics and counts move
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(inputs.to(dtype))
    for module in model.modules():
        module.training = draw(st.booleans())
    for parameter in model.parameters():
        choice = draw(st.sampled_from(["none", "grad", "frozen"]))
        if choice == "grad":
            parameter.grad = torch.randn_like(parameter)
        elif choice == "frozen":
            parameter.requires_grad_(False)
    inputs = (inputs > 0.5).to(dtype) if draw(st.booleans()) else inputs.to(dtype)
    return model, inputs, draw(st.sampled_from(["bce", "mse", "mae", "cb"])), draw(st.booleans())


def snapshot(model: nn.Module) -> dict:
    """Everything about a model that check must leave as it is."""
    return {
        "state": {name: (value.dtype, value.device, value.clone()) for name, value in model.state_dict().items()},
        "training": [(name, module.training) for name, module in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grads": [(name, p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    state = model.state_dict()
    assert list(state) == list(before["state"])
    for name, (dtype, device, value) in before["state"].items():
        assert state[name].dtype == dtype and state[name].device == device, name
        assert torch.equal(state[name], value), f"{name} changed"
    assert [(name, module.training) for name, module in model.named_modules()] == before["training"]
    assert [(name, p.requires_grad) for name, p in model.named_parameters()] == before["requires_grad"]
    for (name, grad, value), parameter in zip(before["grads"], model.parameters(), strict=True):
        assert parameter.grad is grad, f"{name}.grad replaced"
        if value is not None:
            assert torch.equal(parameter.grad, value), f"{name}.grad changed"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_check_runs_on_any_small_module_and_leaves_it_exactly_as_found(case):
    model, inputs, loss, from_logits = case
    before = snapshot(model)
    random_state = torch.get_rng_state()
    findings = check(model, inputs, loss, from_logits=from_logits)
    assert isinstance(findings, list) and findings and all(isinstance(f, Finding) for f in findings)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), random_state)  # no global side effect either


def test_batchnorm_statistics_and_count_survive_a_check_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 6), nn.Sigmoid()).train()
    inputs = torch.rand(16, 6)
    before = snapshot(model)
    check(model, inputs, "mse")
    assert_unchanged(model, before)
    assert model[1].num_batches_tracked.item() == 0 and model.training


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py's model, as published: it returns (recon, mu, logvar) and
    draws its noise from the global generator in every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def test_the_pytorch_examples_vae_is_checked_on_its_reconstruction():
    torch.manual_seed(0)
    model = ExamplesVAE()
    images = (torch.rand(32, 1, 28, 28) > 0.8).float()  # (B, C, H, W); the VAE flattens them itself
    before = snapshot(model)
    random_state = torch.get_rng_state()
    findings = check(model, images, "bce")
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), random_state)  # its randn_like drew from a forked generator
    assert check(model, images, "bce") == findings  # the same noise each time: the same findings
    found = {f.id: f for f in findings}
    assert "input-range" not in found and "output-range" not in found  # sigmoid output on [0, 1] data
    # fc21 and fc22 feed the sampling step, not another layer: the doctor says what it could not watch
    assert "fc21" in found["unchecked"].explanation and "fc22" in found["unchecked"].explanation


def test_a_model_of_bare_parameters_says_which_checks_it_left_out():
    torch.manual_seed(0)
    model = Functional(8, 3)
    model.w2.requires_grad_(False)
    findings = {f.id: f for f in check(model, torch.rand(16, 8), "mse")}
    not_checked = findings["unchecked"].evidence["not_checked"]
    assert "w1" in not_checked["dead and saturated units"]
    assert "no PyTorch default initialisation" in not_checked["weight collapse"]
    assert "output range" in not_checked
    assert findings["unchecked"].severity == "info"


def test_a_frozen_model_gets_no_gradient_check_and_says_why():
    model = nn.Sequential(nn.Linear(5, 2), nn.ReLU(), nn.Linear(2, 5), nn.Sigmoid()).requires_grad_(False)
    findings = {f.id: f for f in check(model, torch.rand(8, 5), "mse")}
    assert findings["unchecked"].evidence["not_checked"]["gradients"] == "no weight matrix requires a gradient"


def test_a_model_without_parameters_is_checked():
    findings = check(NoParameters(), torch.rand(8, 2, 3, 3, dtype=torch.float64), "bce")
    assert {f.id for f in findings} >= {"bce-floor"}  # the data's own findings still come


def test_a_model_returning_no_reconstruction_gets_a_finding_not_an_exception():
    class Scores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 2)

        def forward(self, x):
            return self.linear(x), x.sum()

    (finding,) = check(Scores(), torch.rand(8, 6), "mse")
    assert finding.id == "unchecked" and finding.severity == "warning"
    assert "no check could run" in finding.title and "6 values" in finding.title


def test_a_model_that_cannot_take_the_data_is_one_clear_error():
    model = nn.Linear(5, 5)
    with pytest.raises(ConfigError, match="raised on every input shape"):
        check(model, torch.rand(8, 7), "mse")
