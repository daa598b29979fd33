"""A hand-written training step for dense autoencoders, alone or stacked.

`DenseStep` runs forward and backward for M dense autoencoders with the same layer sizes,
held as stacked weights (M, out, in), so one batched matmul serves every member; a plain
run is the case M = 1, where the stacked tensors are views of the model's own parameters.
Each member keeps its own hidden activation, output activation and loss.

Why not autograd: for a 784-100-50-100-784 model on a CPU most of an autograd step is not
matmuls but per-operation overhead and elementwise passes. Here the backward is the chain
rule written out: activation derivatives come from the saved outputs through the same
ATen kernels autograd itself calls, and the loss gradient with respect to the logits is
fused (BCE with logits: `sigmoid(z) - x`): each likelihood's `fused_head`, or autograd on the
last elementwise part for a likelihood without one or an output other than a sigmoid.
Nothing is copied: activations whose derivative needs only their output run in place, their
derivatives overwrite the incoming gradient, and the loss head overwrites the logits with its
gradient. The optimizer stays a real `torch.optim` object that reads the gradients this step
writes into `.grad`, so its state checkpoints and resumes exactly as before; `optimizer_step`
calls fused Adam's kernel on that state directly.

Shapes: x (M, B, D) inputs and targets; z, a (M, B, out) pre-activations and outputs of a
layer; losses (M,) the mean loss per member (mean over pixels and images, as
`aelab.losses` reduces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aelab.likelihoods import Head, cb_log_normalizer_and_gradient, get_likelihood
from aelab.nn.activations import ACTIVATIONS
from aelab.nn.models import Autoencoder, DenseAutoencoder
from aelab.nn.variational import DenseVAE
from aelab.regularizers import SparsitySpec

# Each activation's gradient and in-place forms are its record's (`aelab.nn.activations.Activation`).
ACTIVATION_GRADIENTS = {name: record.gradient for name, record in ACTIVATIONS.items() if record.gradient is not None}

# The fused loss heads (for a sigmoid output) are the likelihoods' own (`Likelihood.fused_head`).
_cb_log_normalizer_and_gradient = cb_log_normalizer_and_gradient


def _autograd_head(model: Autoencoder, loss: str) -> Head:
    """Any output activation and likelihood: autograd on the last elementwise part only."""
    likelihood = get_likelihood(loss)
    shape = model.image_shape

    def head(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        members, batch = z.shape[:2]
        with torch.enable_grad():
            leaf = z.detach().requires_grad_()
            output, from_logits = model.loss_input(leaf.view(members * batch, *shape))
            per_image = likelihood.nll(output, x.reshape(members * batch, *shape), logits=from_logits)
            value = per_image.view(members, batch).mean(1)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        z.copy_(grad)
        return value.detach()

    return head


def fast_step_problem(model: torch.nn.Module) -> str | None:
    """Why the fast steps cannot train `model`, or None when one can: `DenseStep` a dense
    autoencoder, `aelab.train.fast_variational.DenseVAEStep` a dense VAE."""
    if not isinstance(model, (DenseAutoencoder, DenseVAE)):
        return "it handles dense models only"
    if model.output_values != 1 or "likelihood_parameters" in model._parameters:
        return f"it has no head for train.loss {model.loss} (more than one parameter per pixel)"
    config = model.config
    for name in (config.activation, config.code_activation or config.activation):
        if ACTIVATIONS[name].gradient is None:
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


def _fused_adam_lists(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], ...] | None:
    """The tensor lists fused Adam's kernel takes, from the optimizer's own state (a few
    microseconds to gather), or None when the kernel cannot be called directly."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if not group.get("fused") or group["amsgrad"] or group.get("capturable") or group.get("differentiable"):
        return None
    if isinstance(group["lr"], torch.Tensor):
        return None
    params = group["params"]
    grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
    for param in params:
        state = optimizer.state.get(param)
        if param.grad is None or not state or "exp_avg" not in state:
            return None  # a parameter without a gradient, or the first step, which creates the state
        if param.device.type != "cpu" or param.dtype != torch.float32 or param.grad.dtype != torch.float32:
            return None
        grads.append(param.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    return list(params), grads, exp_avgs, exp_avg_sqs, steps


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()`, with fused Adam's kernel called directly once its state exists.

    `torch.optim.Adam(fused=True).step()` spends more time in Python (grouping the tensors by
    device and dtype, hooks, checks) than in its kernel for a model this small. This calls the
    same kernel, `torch._fused_adam_` (`_fused_adamw_` for AdamW), on the optimizer's own
    state tensors, looked up afresh every step, so the update and the state a checkpoint saves
    are those of `optimizer.step()`, and a loaded state dict is picked up. Anything else (the
    first step, which creates the state; another optimizer; several parameter groups; amsgrad;
    a parameter without a gradient; a GPU) goes through `optimizer.step()`."""
    lists = _fused_adam_lists(optimizer)
    if lists is None:
        optimizer.step()
        return
    params, grads, exp_avgs, exp_avg_sqs, steps = lists
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
    torch._foreach_add_(steps, 1)
    kernel(
        params, grads, exp_avgs, exp_avg_sqs, [], steps,
        amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=None,
    )  # fmt: skip


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

    sparsity: each member's sparsity penalty on the code (`aelab.regularizers.SparsitySpec`) or
        None; None for none at all. Its gradient is added where the backward pass reaches the
        code, and its value to the member's loss.

    `gradients(x)` writes every member's gradient into `weight_grads` / `bias_grads` (stacked
    like the weights) and returns the members' losses (M,), without synchronising.
    """

    def __init__(
        self,
        models: Sequence[DenseAutoencoder],
        losses: Sequence[str],
        stacked: Sequence[torch.Tensor] | None = None,
        sparsity: Sequence[SparsitySpec | None] | None = None,
    ) -> None:
        if len(models) != len(losses) or not models:
            raise ValueError("DenseStep needs one loss per model and at least one model")
        for model in models:
            problem = fast_step_problem(model)
            if problem is None and not isinstance(model, DenseAutoencoder):
                problem = "it is a VAE (DenseVAEStep trains a dense one)"
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
        self.code_index = len(models[0].encoder) - 1  # the layer whose output is the code
        sparsity = list(sparsity) if sparsity is not None else [None] * self.members
        if len(sparsity) != self.members:
            raise ValueError("DenseStep needs one sparsity entry per model")
        self.sparsity = [(m, spec) for m, spec in enumerate(sparsity) if spec is not None]
        keys = [(model.config.output_activation, loss) for model, loss in zip(models, losses, strict=True)]
        self.heads: list[tuple[int, int, Head]] = []
        for start, end, key in _runs(keys):
            output, loss = key  # type: ignore[misc]
            fused = get_likelihood(loss).fused_head if output == "sigmoid" else None
            self.heads.append((start, end, fused if fused is not None else _autograd_head(models[start], loss)))

    def gradient(self, stacked: torch.Tensor) -> torch.Tensor:
        """The gradient buffer (same shape) of one of `self.parameters`."""
        return self.gradients_of[id(stacked)]

    @staticmethod
    def _activate(ranges: list[tuple[int, int, str]], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activation, activation) of one layer, each member range with its activation:
        in place over z when every range's gradient needs only the output (z is then not kept)."""
        records = [(start, end, ACTIVATIONS[name]) for start, end, name in ranges]
        if all(record.in_place is not None for _, _, record in records):
            for start, end, record in records:
                record.in_place(z[start:end])  # type: ignore[misc]
            return z, z
        a = torch.empty_like(z)
        for start, end, record in records:
            a[start:end] = record.function(z[start:end])
        return z, a

    @staticmethod
    def _activation_gradient(
        ranges: list[tuple[int, int, str]], grad: torch.Tensor, z: torch.Tensor, a: torch.Tensor
    ) -> None:
        """Turn dL/da into dL/dz in place, each member range with its activation's derivative."""
        for start, end, name in ranges:
            g, out = grad[start:end], a[start:end]
            record = ACTIVATIONS[name]
            if record.gradient_in_place is not None:
                record.gradient_in_place(g, out)
            else:
                g.copy_(record.gradient(g, out, z[start:end]))  # type: ignore[misc]

    def gradients(self, x: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """x: (M, B, D) the targets, and the inputs unless `inputs` (M, B, D) gives others (a
        denoising run's corrupted images). Returns the losses (M,)."""
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        hidden = x if inputs is None else inputs
        for layer in self.layers:
            weight_t = layer.weight if layer.transposed else layer.weight.transpose(1, 2)
            z = torch.baddbmm(layer.bias.unsqueeze(1), hidden, weight_t)  # (M, B, out)
            z, a = (z, z) if layer.activations[0][2] is None else self._activate(layer.activations, z)
            saved.append((hidden, z, a))
            hidden = a
        grad = hidden  # the logits, overwritten by the heads with dloss/dlogits
        if len(self.heads) == 1:
            losses = self.heads[0][2](grad, x)
        else:
            losses = torch.empty(self.members, dtype=x.dtype, device=x.device)
            for start, end, head in self.heads:
                losses[start:end] = head(grad[start:end], x[start:end])
        code = saved[self.code_index][2] if self.sparsity else None  # (M, B, K), intact until its backward
        if code is not None:
            losses = losses.clone()
            for m, spec in self.sparsity:
                losses[m] += spec.value(code[m])
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
                grad = torch.bmm(grad, weight)  # dL/da of the layer below
                if code is not None and index - 1 == self.code_index:
                    for m, spec in self.sparsity:  # the penalty's own gradient at the code
                        grad[m] += spec.gradient(code[m])
                _, z_below, a_below = saved[index - 1]
                self._activation_gradient(below.activations, grad, z_below, a_below)
        return losses


__all__ = [
    "ACTIVATION_GRADIENTS",
    "DenseStep",
    "dense_parameters",
    "fast_optimizer",
    "fast_step_problem",
    "optimizer_step",
]
