"""Measurements the doctor takes on a model: a fixed probe batch, forward hooks on every weight
layer, activation statistics, weight norms and gradient norms.

Everything here works on any `nn.Module` whose forward maps a batch to its reconstruction, not
only on aelab's models: a `Subject` says how to call the model and score its output, and
`trace_layers` finds each weight layer's activation by comparing what the layer outputs with
what the next layer receives (so functional activations such as `F.relu` are found too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aelab.evaluate.validation import reconstruct
from aelab.likelihoods import get_likelihood
from aelab.nn.activations import ACTIVATIONS
from aelab.nn.models import Autoencoder

PROBE_IMAGES = 2000  # validation images in the fixed probe batch (all of mnist-10k's validation split)
GRADIENT_IMAGES = 256  # images of the probe used for one backward pass
# During training the doctor checks every epoch on the probe's first EPOCH_PROBE_IMAGES images
# (gradients on EPOCH_GRADIENT_IMAGES of them): about a sixth of the cost of the whole probe,
# while the final check at the end of a run (and every check on a folder) sees the whole probe.
EPOCH_PROBE_IMAGES = 256
EPOCH_GRADIENT_IMAGES = 64
TRACE_IMAGES = 64  # images used to identify each layer's activation
CHUNK = 1024  # images per forward pass
NEAR_BOUND = 0.01  # "saturated": within 1% of the activation's range from one of its bounds

# Order in which candidate activations are tried when several fit (relu and linear agree on
# positive inputs; the first that fits is kept); any other registered activation comes after.
PREFERRED = ("relu", "sigmoid", "tanh", "linear", "leaky_relu", "elu", "selu", "gelu")


def saturation_threshold(activation: str | None) -> float | None:
    """The |pre-activation| beyond which `activation` is within NEAR_BOUND of a bound (its
    record's `saturation`), or None for an unbounded or unknown one."""
    record = ACTIVATIONS.get(activation) if activation is not None else None
    return record.saturation(NEAR_BOUND) if record is not None and record.saturation is not None else None


def candidates(output: bool) -> tuple[str, ...]:
    """The activations tracing tries, in order; output-only ones (softmax) for the output layer."""
    rest = [name for name, record in ACTIVATIONS.items() if name not in PREFERRED and not record.output_only]
    only = [name for name, record in ACTIVATIONS.items() if record.output_only] if output else []
    return (*(name for name in PREFERRED if name in ACTIVATIONS), *rest, *only)


WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
# Names under which models return their reconstruction among other outputs (a VAE's
# {"recon": ..., "mu": ..., "logvar": ...}); any name containing "recon" counts too.
RECONSTRUCTION_NAMES = ("x_hat", "xhat", "decoded", "output", "out", "logits")


def reconstruction_in(output: Any, inputs: torch.Tensor) -> torch.Tensor | None:
    """The reconstruction among a model's outputs: the output itself when it is a tensor with
    as many values as `inputs`; else, of a dict, dataclass or named tuple, the item named like
    a reconstruction ("recon", "reconstruction", "x_hat", ...) or the first of the right size;
    of a tuple or list, the first item of the right size (a VAE's (recon, mu, logvar)).
    None when there is no such tensor."""
    if isinstance(output, torch.Tensor):
        fits = output.ndim >= 1 and output.shape[0] == inputs.shape[0] and output.numel() == inputs.numel()
        return output if fits else None
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    elif isinstance(output, tuple) and hasattr(output, "_asdict"):
        output = output._asdict()
    if isinstance(output, Mapping):
        named = [value for key, value in output.items() if _reconstruction_name(key)]
        items = [*named, *(value for key, value in output.items() if not _reconstruction_name(key))]
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return None
    return next((found for item in items if (found := reconstruction_in(item, inputs)) is not None), None)


def _reconstruction_name(key: object) -> bool:
    name = str(key).lower()
    return "recon" in name or name in RECONSTRUCTION_NAMES


@dataclass
class Subject:
    """How to run and score a model.

    model: an aelab `Autoencoder` or any module mapping a batch to its reconstruction.
    loss: a key of `aelab.LIKELIHOODS`.
    from_logits: whether a user model returns logits (None for aelab models, which decide).
    input_shape: the per-sample shape the model takes, e.g. (784,) for a model on flattened
        images; None when it takes the images as they are.
    """

    model: nn.Module
    loss: str
    from_logits: bool | None = None
    input_shape: tuple[int, ...] | None = None

    def loss_input(self, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(output, from_logits) for `Likelihood.nll`, shaped like `images`."""
        inputs = images if self.input_shape is None else images.reshape(images.shape[0], *self.input_shape)
        output = self.model(inputs)
        if isinstance(self.model, Autoencoder) and self.from_logits is None:
            return self.model.loss_input(output)
        reconstruction = reconstruction_in(output, inputs)
        if reconstruction is None:
            raise ValueError(f"the model's output ({type(output).__name__}) holds no reconstruction of its input")
        return reconstruction.reshape(images.shape), bool(self.from_logits)

    def losses(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image loss (B,), with gradients."""
        output, from_logits = self.loss_input(images)
        return get_likelihood(self.loss).nll(output, images, logits=from_logits)

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, per-image loss) in chunks, in eval mode: `aelab.evaluate.reconstruct`."""
        with eval_mode(self.model):
            return reconstruct(self.loss_input, get_likelihood(self.loss), images, chunk=CHUNK)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (BatchNorm uses and keeps its running statistics, Dropout
    passes everything), then each put back in the mode it had, even where they differed."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass
class Layer:
    """A weight layer as traced: its name, module, the activation applied to its output (a key
    of ACTIVATIONS, "softmax" for an output softmax, or None when none fits) and its width."""

    name: str
    module: nn.Module
    activation: str | None
    width: int  # values per sample in its output
    is_output: bool = False


def weight_layers(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)}


def _matches(name: str, values: torch.Tensor, target: torch.Tensor) -> bool:
    candidate = ACTIVATIONS[name].function(values).flatten(1)
    return candidate.shape == target.shape and bool(torch.allclose(candidate, target, rtol=1e-4, atol=1e-5))


@torch.no_grad()
def trace_layers(subject: Subject, images: torch.Tensor) -> list[Layer]:
    """The weight layers in the order the forward pass calls them, each with the activation
    that turns its output into the next layer's input (or into the model's output)."""
    names = weight_layers(subject.model)
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            calls.append((module, inputs[0].detach().flatten(1), output.detach().flatten(1)))

    handles = [module.register_forward_hook(hook) for module in names]
    try:
        with eval_mode(subject.model):
            output, from_logits = subject.loss_input(images[:TRACE_IMAGES])
    finally:
        for handle in handles:
            handle.remove()
    final = output.flatten(1)
    layers = []
    for index, (module, _, out) in enumerate(calls):
        is_output = index == len(calls) - 1
        following = final if is_output else calls[index + 1][1]
        activation = next((c for c in candidates(is_output) if _matches(c, out, following)), None)
        if is_output and from_logits and activation == "linear":
            activation = "sigmoid"  # the loss applies the sigmoid to these logits
        if is_output and isinstance(subject.model, Autoencoder) and subject.from_logits is None:
            activation = subject.model.config.output_activation
        layers.append(Layer(names[module], module, activation, out.shape[1], is_output))
    return layers


@dataclass
class LayerStats:
    """Per-layer activation statistics on the probe batch."""

    name: str
    activation: str | None
    units: int
    dead_units: int | None = None  # relu: units at zero for every probe image
    saturated_share: float | None = None  # sigmoid/tanh: share of values within NEAR_BOUND of a bound
    pinned_units: int | None = None  # sigmoid/tanh: units saturated for every probe image


def _per_unit(values: torch.Tensor) -> torch.Tensor:
    # (B, U, ...) -> (U, B * ...): one row per unit (a feature, or a channel of a conv layer).
    return values.transpose(0, 1).reshape(values.shape[1], -1)


@torch.no_grad()
def probe_forward(
    subject: Subject, images: torch.Tensor, layers: list[Layer]
) -> tuple[torch.Tensor, torch.Tensor, list[LayerStats]]:
    """One pass over `images` in eval mode: (pixels, per-image loss, layer statistics). The
    statistics are the dead and saturated units of every hidden layer whose activation is relu,
    sigmoid or tanh, reduced inside forward hooks so that no activation is kept."""
    watched = {layer.module: layer for layer in layers if not layer.is_output}
    alive: dict[nn.Module, torch.Tensor] = {}
    saturated: dict[nn.Module, list[int]] = {}  # [values near a bound, values seen]
    pinned: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        layer = watched[module]
        units = _per_unit(output.detach())
        if layer.activation == "relu":
            now = (units > 0).any(dim=1)
            alive[module] = now if module not in alive else alive[module] | now
        elif (threshold := saturation_threshold(layer.activation)) is not None:
            near = units.abs() > threshold
            counts = saturated.setdefault(module, [0, 0])
            counts[0] += int(near.sum())
            counts[1] += near.numel()
            every = near.all(dim=1)
            pinned[module] = every if module not in pinned else pinned[module] & every

    handles = [module.register_forward_hook(hook) for module in watched]
    try:
        pixels, losses = subject.reconstruct(images)  # the hooks gather the statistics on the way
    finally:
        for handle in handles:
            handle.remove()
    stats = []
    for module, layer in watched.items():
        seen = alive.get(module, pinned.get(module))
        entry = LayerStats(layer.name, layer.activation, int(seen.numel()) if seen is not None else 0)
        if module in alive:
            entry.dead_units = int((~alive[module]).sum())
        if module in saturated:
            near, seen = saturated[module]
            entry.saturated_share = near / seen
            entry.pinned_units = int(pinned[module].sum())
        stats.append(entry)
    return pixels, losses, stats


def weight_norms(model: nn.Module) -> dict[str, float]:
    """Frobenius norm of every weight matrix or kernel (parameters with 2+ dims, in layers or
    bare `nn.Parameter`s), by name."""
    return {name: float(param.detach().norm()) for name, param in model.named_parameters() if param.ndim >= 2}


def gradient_norms(subject: Subject, images: torch.Tensor) -> dict[str, float]:
    """Norm of the mean loss's gradient for every weight matrix that requires one, on `images`,
    in eval mode; {} when none does or the loss does not depend on any (a forward that detaches
    its output). `autograd.grad` leaves the parameters' .grad fields alone, so training is not
    disturbed."""
    model = subject.model
    params = {name: param for name, param in model.named_parameters() if param.ndim >= 2 and param.requires_grad}
    if not params:
        return {}
    with eval_mode(model), torch.enable_grad():
        loss = subject.losses(images).mean()
        if not loss.requires_grad:
            return {}
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {name: (float(g.norm()) if g is not None else 0.0) for name, g in zip(params, grads, strict=True)}
