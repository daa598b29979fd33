"""A hand-written training step for dense autoencoders, alone or stacked.

`DenseStep` runs forward and backward for M dense autoencoders with the same layer sizes,
held as stacked weights (M, out, in), so one batched matmul serves every member; a plain
run is the case M = 1, where the stacked tensors are views of the model's own parameters.
Each member keeps its own hidden activation, output activation and loss.

Why not autograd: for a 784-100-50-100-784 model on a CPU most of an autograd step is not
matmuls but per-operation overhead and elementwise passes. Here the backward is the chain
rule written out: activation derivatives come from the saved outputs through the same
ATen kernels autograd itself calls, and the loss gradient with respect to the logits is
fused (BCE with logits: `sigmoid(z) - x`). The optimizer stays a real `torch.optim`
object that reads the gradients this step writes into `.grad`, so its state checkpoints
and resumes exactly as before.

Shapes: x (M, B, D) inputs and targets; z, a (M, B, out) pre-activations and outputs of a
layer; losses (M,) the mean loss per member (mean over pixels and images, as
`aelab.losses` reduces).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from aelab.activations import ACTIVATIONS
from aelab.losses import _SERIES_BELOW, get_loss
from aelab.models import Autoencoder, DenseAutoencoder

ENGINES = ("auto", "autograd", "fast")

# Gradient of each hidden activation: (grad wrt output, output a, pre-activation z) -> grad wrt z.
# These are the kernels autograd's own backward formulas call, so results agree to rounding.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
ACTIVATION_GRADIENTS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sigmoid": lambda g, a, z: torch.ops.aten.sigmoid_backward(g, a),
    "tanh": lambda g, a, z: torch.ops.aten.tanh_backward(g, a),
    "relu": lambda g, a, z: torch.ops.aten.threshold_backward(g, a, 0),
    "leaky_relu": lambda g, a, z: torch.ops.aten.leaky_relu_backward(g, z, 0.01, False),
    "elu": lambda g, a, z: torch.ops.aten.elu_backward(g, 1.0, 1.0, 1.0, False, z),
    "selu": lambda g, a, z: torch.ops.aten.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1.0, False, z),
    "gelu": lambda g, a, z: torch.ops.aten.gelu_backward(g, z),
    "linear": lambda g, a, z: g,
}

# A head maps logits z and targets x (k, B, D) to (per-member mean loss (k,), dloss/dz).
Head = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _cb_log_normalizer_gradient(logits: torch.Tensor) -> torch.Tensor:
    """d log C / d logit for `aelab.losses.cb_log_normalizer`, with the same series switch.
    With u = l / 2: d/du [log u - log tanh u] = 1/u - 1/tanh u + tanh u; the series
    u^2/3 - 7 u^4/90 differentiates to 2u/3 - 14 u^3/45."""
    u = logits / 2
    small = u.abs() < _SERIES_BELOW
    u_safe = torch.where(small, torch.ones_like(u), u)
    tanh = torch.tanh(u_safe)
    exact = 1 / u_safe - 1 / tanh + tanh
    series = 2 * u / 3 - 14 * u * u * u / 45
    return torch.where(small, series, exact) / 2


def _logit_head(loss: str) -> Head:
    """A fused head for a sigmoid output: the loss value from `aelab.losses` (so both engines
    report the same numbers), the gradient written out."""
    loss_fn = get_loss(loss)

    def head(z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = 1.0 / (z.shape[1] * z.shape[2])  # the mean over images and pixels
        value = loss_fn(z, x, True)  # (k,): the loss flattens all but the first axis
        probs = torch.sigmoid(z)
        if loss == "bce":
            grad = probs.sub_(x).mul_(scale)
        elif loss == "cb":
            grad = probs.sub_(x).sub_(_cb_log_normalizer_gradient(z)).mul_(scale)
        elif loss == "mse":
            grad = torch.ops.aten.sigmoid_backward((probs - x).mul_(2 * scale), probs)
        else:  # mae; sign(0) = 0 as in autograd's abs
            grad = torch.ops.aten.sigmoid_backward((probs - x).sign_().mul_(scale), probs)
        return value, grad

    return head


LOGIT_HEADS = ("bce", "mse", "mae", "cb")


def _autograd_head(model: Autoencoder, loss: str) -> Head:
    """Any output activation and loss: autograd on the last elementwise part only."""
    loss_fn = get_loss(loss)
    shape = model.image_shape

    def head(z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        members, batch = z.shape[:2]
        with torch.enable_grad():
            leaf = z.detach().requires_grad_()
            output, from_logits = model.loss_input(leaf.view(members * batch, *shape))
            per_image = loss_fn(output, x.reshape(members * batch, *shape), from_logits)
            value = per_image.view(members, batch).mean(1)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), grad

    return head


def fast_step_problem(model: torch.nn.Module) -> str | None:
    """Why `DenseStep` cannot train `model`, or None when it can."""
    if not isinstance(model, DenseAutoencoder):
        return "it handles dense models only"
    config = model.config
    for name in (config.activation, config.code_activation or config.activation):
        if name not in ACTIVATION_GRADIENTS:
            return f"it has no gradient for the {name!r} activation"
    return None


# Optimizer options that make the update one fused (or multi-tensor) kernel call.
FAST_OPTIMIZER_OPTIONS: dict[type[torch.optim.Optimizer], dict[str, bool]] = {
    torch.optim.Adam: {"fused": True},
    torch.optim.SGD: {"fused": True},
    torch.optim.Adagrad: {"fused": True},
    torch.optim.RMSprop: {"foreach": True},
    torch.optim.Adadelta: {"foreach": True},
}


def fast_optimizer(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor] | None = None
) -> torch.optim.Optimizer:
    """The same optimizer and settings, with its fused or foreach implementation switched on
    (same update rule, fewer kernel calls). `params` replaces the parameters when given."""
    options = FAST_OPTIMIZER_OPTIONS.get(type(optimizer))
    if options is None and params is None:
        return optimizer
    if params is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    defaults = dict(optimizer.defaults)
    if options is not None:
        defaults.update({key: None for key in ("foreach", "fused") if key in defaults})
        defaults.update(options)
    return type(optimizer)(params, **defaults)


@dataclass
class _Layer:
    weight: torch.Tensor  # (M, out, in); (M, in, out) when transposed (a tied decoder layer)
    bias: torch.Tensor  # (M, out)
    weight_grad: torch.Tensor
    bias_grad: torch.Tensor
    transposed: bool
    first_write: bool  # the first layer in the backward pass to write weight_grad
    activations: list[tuple[int, int, str]]  # member ranges [start, end) and their activation


def _runs(keys: Sequence[object]) -> list[tuple[int, int, object]]:
    """Maximal runs of equal consecutive keys: [(start, end, key)]."""
    runs: list[tuple[int, int, object]] = []
    for index, key in enumerate(keys):
        if runs and runs[-1][2] == key:
            runs[-1] = (runs[-1][0], index + 1, key)
        else:
            runs.append((index, index + 1, key))
    return runs


def dense_layers(model: DenseAutoencoder) -> list[tuple[torch.Tensor, torch.Tensor, bool, str | None]]:
    """(weight, bias, transposed, activation name or None for the logits) for each layer."""
    config = model.config
    code = config.code_activation or config.activation
    layers: list[tuple[torch.Tensor, torch.Tensor, bool, str | None]] = []
    last_encoder = len(model.encoder) - 1
    for index, layer in enumerate(model.encoder):
        layers.append((layer.weight, layer.bias, False, code if index == last_encoder else config.activation))
    if config.tied:
        decoder = [
            (layer.weight, bias, True)
            for layer, bias in zip(reversed(model.encoder), model.decoder_biases, strict=True)
        ]
    else:
        decoder = [(layer.weight, layer.bias, False) for layer in model.decoder]
    for index, (weight, bias, transposed) in enumerate(decoder):
        layers.append((weight, bias, transposed, config.activation if index < len(decoder) - 1 else None))
    return layers


def dense_parameters(model: DenseAutoencoder) -> list[torch.Tensor]:
    """The model's distinct layer parameters in the order `DenseStep.parameters` stacks them."""
    return list(dict.fromkeys(p for layer in dense_layers(model) for p in layer[:2]))


class DenseStep:
    """Forward and backward for M dense autoencoders of the same layer sizes.

    models: the members, all `DenseAutoencoder`s with equal layer sizes and tying.
    losses: each member's loss name.
    stacked: one (weight, bias) pair per distinct parameter, each of shape (M, ...), whose
        slice [m] is (or is a view of the storage of) member m's parameter. None for M = 1:
        the model's own parameters, viewed with a leading axis of one.

    `gradients(x)` writes every member's gradient into `weight_grads` / `bias_grads` (stacked
    like the weights) and returns the members' losses (M,), without synchronising.
    """

    def __init__(
        self,
        models: Sequence[DenseAutoencoder],
        losses: Sequence[str],
        stacked: Sequence[torch.Tensor] | None = None,
    ) -> None:
        if len(models) != len(losses) or not models:
            raise ValueError("DenseStep needs one loss per model and at least one model")
        for model in models:
            problem = fast_step_problem(model)
            if problem is not None:
                raise ValueError(f"DenseStep cannot train this model: {problem}")
        self.members = len(models)
        per_model = [dense_layers(model) for model in models]
        first = per_model[0]
        params = dense_parameters(models[0])
        if stacked is None:
            if self.members != 1:
                raise ValueError("several models need their stacked parameters")
            stacked = [p.detach().unsqueeze(0) for p in params]
        self.parameters = list(stacked)
        by_param = {id(p): s for p, s in zip(params, self.parameters, strict=True)}
        self.gradients_of = {id(s): torch.zeros_like(s) for s in self.parameters}
        self.layers: list[_Layer] = []
        written: set[int] = set()
        for index in range(len(first) - 1, -1, -1):  # backward order decides which write comes first
            weight, bias, transposed, _ = first[index]
            names = [layers[index][3] for layers in per_model]
            stacked_weight, stacked_bias = by_param[id(weight)], by_param[id(bias)]
            self.layers.append(
                _Layer(
                    stacked_weight,
                    stacked_bias,
                    self.gradients_of[id(stacked_weight)],
                    self.gradients_of[id(stacked_bias)],
                    transposed,
                    id(stacked_weight) not in written,
                    [(s, e, name) for s, e, name in _runs(names)],  # type: ignore[misc]
                )
            )
            written.add(id(stacked_weight))
        self.layers.reverse()
        keys = [(model.config.output_activation, loss) for model, loss in zip(models, losses, strict=True)]
        self.heads: list[tuple[int, int, Head]] = []
        for start, end, key in _runs(keys):
            output, loss = key  # type: ignore[misc]
            use_logits = output == "sigmoid" and loss in LOGIT_HEADS
            self.heads.append((start, end, _logit_head(loss) if use_logits else _autograd_head(models[start], loss)))

    def gradient(self, stacked: torch.Tensor) -> torch.Tensor:
        """The gradient buffer (same shape) of one of `self.parameters`."""
        return self.gradients_of[id(stacked)]

    @staticmethod
    def _by_ranges(
        ranges: list[tuple[int, int, str]], z: torch.Tensor, apply: Callable[[str, slice], torch.Tensor]
    ) -> torch.Tensor:
        if len(ranges) == 1:
            return apply(ranges[0][2], slice(None))
        result = torch.empty_like(z)
        for start, end, name in ranges:
            result[start:end] = apply(name, slice(start, end))
        return result

    def gradients(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, D) inputs, which are also the targets. Returns the losses (M,)."""
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        hidden = x
        for layer in self.layers:
            weight_t = layer.weight if layer.transposed else layer.weight.transpose(1, 2)
            z = torch.baddbmm(layer.bias.unsqueeze(1), hidden, weight_t)  # (M, B, out)
            if layer.activations[0][2] is None:
                a = z
            else:
                a = self._by_ranges(layer.activations, z, lambda name, s, z=z: ACTIVATIONS[name](z[s]))
            saved.append((hidden, z, a))
            hidden = a
        logits = hidden
        if len(self.heads) == 1:
            losses, grad = self.heads[0][2](logits, x)
        else:
            losses = torch.empty(self.members, dtype=x.dtype, device=x.device)
            grad = torch.empty_like(logits)
            for start, end, head in self.heads:
                losses[start:end], grad[start:end] = head(logits[start:end], x[start:end])
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            inputs = saved[index][0]
            # z = h W (transposed): dW = h^T g; z = h W^T: dW = g^T h
            product = (inputs.transpose(1, 2), grad) if layer.transposed else (grad.transpose(1, 2), inputs)
            if layer.first_write:
                torch.bmm(*product, out=layer.weight_grad)
            else:
                layer.weight_grad.baddbmm_(*product)
            torch.sum(grad, 1, out=layer.bias_grad)
            if index > 0:
                below = self.layers[index - 1]
                weight = layer.weight.transpose(1, 2) if layer.transposed else layer.weight
                upstream = torch.bmm(grad, weight)  # dL/da of the layer below
                _, z_below, a_below = saved[index - 1]
                grad = self._by_ranges(
                    below.activations,
                    upstream,
                    lambda name, s, g=upstream, a=a_below, z=z_below: ACTIVATION_GRADIENTS[name](g[s], a[s], z[s]),
                )
        return losses


class FastStep:
    """The fast engine for one `Trainer`: fills the model's `.grad` from a batch, and returns
    the batch's mean loss as a 0-d tensor. The caller steps the optimizer."""

    def __init__(self, model: DenseAutoencoder, loss: str) -> None:
        self.step = DenseStep([model], [loss])
        params = dense_parameters(model)
        self.grads = [(p, self.step.gradient(s)[0]) for p, s in zip(params, self.step.parameters, strict=True)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for param, grad in self.grads:
            if param.grad is not grad:  # someone set it to None or replaced it
                param.grad = grad
        return self.step.gradients(images.reshape(1, images.shape[0], -1))[0]


# Below this many input values per step (batch size x pixels x stacked runs) one thread is
# as fast as two: waking a second thread costs more than its share of the work saves.
ONE_THREAD_BELOW = 32 * 784


def runnable_elsewhere() -> int:
    """Tasks other than this one ready to run right now (Linux /proc/loadavg), else 0."""
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            running = int(file.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)


def choose_threads(step_values: int, busy: int | None = None) -> int:
    """CPU threads for a step that reads `step_values` input values: one for small steps,
    else the cores this process may use minus those busy with other work (`busy`, by default
    read from the system). Torch's threads wait for each other at every operation, so one
    thread that shares a core with another program stalls them all: on a busy 2-core machine
    two threads ran 5-25x slower than one (docs/benchmarks.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if step_values < ONE_THREAD_BELOW:
        return 1
    busy = runnable_elsewhere() if busy is None else busy
    return max(1, cores - busy)


def choose_engine(engine: str, model: torch.nn.Module) -> str:
    """ "fast" or "autograd" for `engine` ("auto", "autograd" or "fast") and this model;
    asking for "fast" where it cannot run is a ConfigError."""
    from aelab.errors import ConfigError

    if engine == "autograd":
        return "autograd"
    problem = fast_step_problem(model)
    if problem is None:
        return "fast"
    if engine == "fast":
        raise ConfigError(f"train.engine fast cannot train this model: {problem}; use --engine auto")
    return "autograd"


__all__ = [
    "ACTIVATION_GRADIENTS",
    "ENGINES",
    "DenseStep",
    "FastStep",
    "choose_engine",
    "fast_optimizer",
    "fast_step_problem",
]
