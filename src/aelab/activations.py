"""Activations chosen by name, and the range of values each one can output.

Every entry maps a tensor to a tensor of the same shape. `softmax` is for outputs only: it
normalises over all pixels of an image (dims 1..), which forces them to sum to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _softmax_over_image(x: torch.Tensor) -> torch.Tensor:
    # (B, ...) -> (B, ...), each image's pixels sum to 1.
    return F.softmax(x.flatten(1), dim=1).view_as(x)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "linear": _linear,
    "softmax": _softmax_over_image,
}

OUTPUT_ONLY = frozenset({"softmax"})

# The closed range each activation's values can reach: (low, high).
OUTPUT_RANGES: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0),
    "relu": (0.0, math.inf),
    "leaky_relu": (-math.inf, math.inf),
    "elu": (-1.0, math.inf),
    "selu": (-1.7580993408473766, math.inf),
    "gelu": (-0.17, math.inf),
    "tanh": (-1.0, 1.0),
    "linear": (-math.inf, math.inf),
    "softmax": (0.0, 1.0),
}


def get_activation(name: str, *, output: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called `name`; softmax only where `output` is true."""
    from aelab.errors import ConfigError

    if name not in ACTIVATIONS or (name in OUTPUT_ONLY and not output):
        valid = [n for n in ACTIVATIONS if output or n not in OUTPUT_ONLY]
        where = "output activation" if output else "hidden activation"
        raise ConfigError(f"unknown {where} {name!r}; valid: {', '.join(valid)}")
    return ACTIVATIONS[name]
