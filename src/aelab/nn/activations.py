"""Activations: one record per activation, in one registry, chosen by name.

Each record holds the function (a tensor to a tensor of the same shape), the closed range of
values it can output, what the fast step (`aelab.train.fast.DenseStep`) needs to run it (its gradient
from the saved output, and in-place forms where the gradient needs only the output), and where
it saturates (for the doctor). `softmax` is for outputs only: it normalises over all pixels of
an image (dims 1..), which forces them to sum to one.

A new activation is one entry, `ACTIVATIONS["name"] = Activation(...)`; models, the doctor and
the fast step then know it (the fast step refuses a hidden activation without `gradient`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# (grad wrt output g, output a, pre-activation z) -> grad wrt z
Gradient = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# SELU's constants (Klambauer et al., "Self-normalizing neural networks", NeurIPS 2017).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Activation:
    """One activation, everything aelab knows about it.

    name: its key in ACTIVATIONS, the value of `model.activation` and friends.
    function: tensor -> tensor of the same shape. The record is callable as this function.
    output_range: the closed range (low, high) its values can reach.
    gradient: (g, a, z) -> dL/dz from dL/da, the output a and the pre-activation z, through the
        kernels autograd's own backward formulas call (so both engines agree to rounding); None
        when the fast step has none, and then refuses the activation.
    in_place: applies the activation in place on z, for activations whose gradient needs only
        their output; None otherwise.
    gradient_in_place: (g, a) -> None, overwrites g with dL/dz from the output alone; None
        otherwise. Given together with `in_place`.
    saturation: share -> the |pre-activation| beyond which the output lies within that share of
        its range from a bound, for bounded activations (sigmoid, tanh); None otherwise.
    output_only: allowed as an output activation only (softmax).
    """

    name: str
    function: Callable[[torch.Tensor], torch.Tensor]
    output_range: tuple[float, float]
    gradient: Gradient | None = None
    in_place: Callable[[torch.Tensor], object] | None = None
    gradient_in_place: Callable[[torch.Tensor, torch.Tensor], object] | None = None
    saturation: Callable[[float], float] | None = None
    output_only: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def _softmax_over_image(x: torch.Tensor) -> torch.Tensor:
    # (B, ...) -> (B, ...), each image's pixels sum to 1.
    return F.softmax(x.flatten(1), dim=1).view_as(x)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


_ATEN = torch.ops.aten

_RECORDS = (
    Activation(
        "sigmoid",
        torch.sigmoid,
        (0.0, 1.0),
        gradient=lambda g, a, z: _ATEN.sigmoid_backward(g, a),
        in_place=torch.Tensor.sigmoid_,
        gradient_in_place=lambda g, a: _ATEN.sigmoid_backward.grad_input(g, a, grad_input=g),
        # sigmoid(z) > 1 - share for z > logit(1 - share)
        saturation=lambda share: math.log((1 - share) / share),
    ),
    Activation(
        "relu",
        F.relu,
        (0.0, math.inf),
        gradient=lambda g, a, z: _ATEN.threshold_backward(g, a, 0),
        in_place=torch.Tensor.relu_,
        gradient_in_place=lambda g, a: _ATEN.threshold_backward.grad_input(g, a, 0, grad_input=g),
    ),
    Activation(
        "leaky_relu",
        F.leaky_relu,
        (-math.inf, math.inf),
        gradient=lambda g, a, z: _ATEN.leaky_relu_backward(g, z, 0.01, False),
    ),
    Activation(
        "elu",
        F.elu,
        (-1.0, math.inf),
        gradient=lambda g, a, z: _ATEN.elu_backward(g, 1.0, 1.0, 1.0, False, z),
    ),
    Activation(
        "selu",
        F.selu,
        (-1.7580993408473766, math.inf),
        gradient=lambda g, a, z: _ATEN.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1.0, False, z),
    ),
    Activation("gelu", F.gelu, (-0.17, math.inf), gradient=lambda g, a, z: _ATEN.gelu_backward(g, z)),
    Activation(
        "tanh",
        torch.tanh,
        (-1.0, 1.0),
        gradient=lambda g, a, z: _ATEN.tanh_backward(g, a),
        in_place=torch.Tensor.tanh_,
        gradient_in_place=lambda g, a: _ATEN.tanh_backward.grad_input(g, a, grad_input=g),
        # tanh(z) > 1 - 2 share for z > atanh(1 - 2 share): within `share` of the range [-1, 1]
        saturation=lambda share: math.atanh(1 - 2 * share),
    ),
    Activation(
        "linear",
        _linear,
        (-math.inf, math.inf),
        gradient=lambda g, a, z: g,
        in_place=lambda z: None,
        gradient_in_place=lambda g, a: None,
    ),
    Activation("softmax", _softmax_over_image, (0.0, 1.0), output_only=True),
)

ACTIVATIONS: dict[str, Activation] = {record.name: record for record in _RECORDS}

# The older names, for the built-in activations: read the records instead.
OUTPUT_ONLY = frozenset(name for name, record in ACTIVATIONS.items() if record.output_only)
OUTPUT_RANGES: dict[str, tuple[float, float]] = {name: record.output_range for name, record in ACTIVATIONS.items()}


def get_activation_record(name: str, *, output: bool = False) -> Activation:
    """The record called `name`; output-only ones (softmax) only where `output` is true. A
    ConfigError listing the valid names for any other name."""
    from aelab.errors import ConfigError

    record = ACTIVATIONS.get(name)
    if record is None or (record.output_only and not output):
        valid = [n for n, r in ACTIVATIONS.items() if output or not r.output_only]
        where = "output activation" if output else "hidden activation"
        raise ConfigError(f"unknown {where} {name!r}; valid: {', '.join(valid)}")
    return record


def get_activation(name: str, *, output: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name`; softmax only where `output` is true."""
    return get_activation_record(name, output=output).function
