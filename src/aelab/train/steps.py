"""Training steps: what one optimisation step on a batch is, behind one interface.

A step trains M >= 1 runs (`RunState`s) on one batch each: `step(images)` takes the batches
(M, B, C, H, W), or (1, B, C, H, W) when every member sees the same batch, runs forward and
backward, steps the optimizers and returns the members' mean losses (M,) without
synchronising with the device. Five steps exist:

- `AutogradStep`: one run of any model, through autograd and `optimizer.step()`;
- `FastStep`: one dense run through the hand-written step (`aelab.train.fast.DenseStep`) and
  the optimizer's fused kernel;
- `VariationalStep`: one VAE, its negative ELBO through autograd;
- `FastVariationalStep`: one dense VAE, the same objective through the hand-written step
  (`aelab.train.fast_variational.DenseVAEStep`) and the optimizer's fused kernel;
- `StackedStep`: several dense runs of equal layer sizes, their weights stacked (M, out, in)
  so that one batched matmul serves every member.

Whether the fast step may run is decided from the whole run config (`config_step_problem`),
never from the model alone: FAST_STEP classifies every config field, and a field the fast step
does not implement ("refused") sends any non-default value to autograd. STACKING classifies
every field for `aelab.train.stacking.group_key`. `tests/test_steps.py` checks that both
tables list every field of `RunConfig`, so a new field cannot slip past the fast path.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

import torch

from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aelab.errors import ConfigError
from aelab.likelihoods import LIKELIHOODS
from aelab.nn.activations import ACTIVATIONS
from aelab.nn.models import MODELS, DenseAutoencoder
from aelab.nn.variational import elbo_terms, kl_weight, training_objective
from aelab.train.fast import DenseStep, dense_parameters, fast_optimizer, fast_step_problem, optimizer_step
from aelab.train.fast_variational import DenseVAEStep
from aelab.train.state import RunState

ENGINES = ("auto", "autograd", "fast")

# How every config field meets the fast step:
#   "input"    decides what the steps are given (the images, the initial weights, the epochs,
#              the device, early stopping), not how a step computes: every step sees it alike;
#   "honoured" the fast step computes what autograd computes, for every value the field takes;
#   "checked"  the fast step honours some values and `config_step_problem` refuses the others;
#   "refused"  the fast step does not implement it: any value but the default trains through
#              autograd (train.engine auto) or is refused (train.engine fast).
FAST_STEP: dict[str, str] = {
    **{f"data.{f.name}": "input" for f in dataclasses.fields(DataConfig)},
    "model.kind": "checked",  # dense only
    "model.hidden_dims": "honoured",
    "model.latent_dim": "honoured",
    "model.activation": "checked",  # needs the activation's gradient from its output
    "model.code_activation": "checked",
    "model.output_activation": "honoured",  # the likelihood's fused head, or autograd on the head alone
    "model.init": "input",
    "model.tied": "honoured",
    "model.variational": "honoured",  # a dense VAE: FastVariationalStep (a conv one: model.kind)
    "train.loss": "checked",  # one parameter per pixel: a fused head, or autograd on the head alone
    "train.optimizer": "honoured",  # a real torch optimizer reads the gradients the step writes
    "train.learning_rate": "honoured",
    "train.momentum": "honoured",
    "train.weight_decay": "honoured",
    "train.batch_size": "input",
    "train.epochs": "input",
    "train.seed": "input",
    "train.patience": "input",
    "train.device": "input",
    "train.threads": "input",
    "train.engine": "checked",  # autograd: never the fast step
    "train.noise": "honoured",  # the inputs corrupted before the forward, the targets clean
    "train.sparsity": "honoured",  # the penalty's gradient added at the code
    "train.contractive": "refused",  # its gradient reaches every encoder weight: autograd
    "train.beta": "honoured",  # the three VAE fields: FastVariationalStep's KL term
    "train.kl_warmup_epochs": "honoured",
    "train.free_bits": "honoured",
}

# How every config field meets stacking (`aelab.train.stacking.group_key`):
#   "shared"  members of a stack must agree on it (it is part of the group key);
#   "member"  each member keeps its own value;
#   "alone"   a run whose value is not the default trains alone.
# A stack also needs the fast step for every member (`config_step_problem`).
STACKING: dict[str, str] = {
    **{f"data.{f.name}": "shared" for f in dataclasses.fields(DataConfig)},
    "model.kind": "shared",
    "model.hidden_dims": "shared",
    "model.latent_dim": "shared",
    "model.activation": "member",
    "model.code_activation": "member",
    "model.output_activation": "member",
    "model.init": "member",
    "model.tied": "shared",
    "model.variational": "alone",  # no stacked VAE step: a VAE trains alone
    "train.loss": "member",
    "train.optimizer": "member",
    "train.learning_rate": "member",
    "train.momentum": "member",
    "train.weight_decay": "member",
    "train.batch_size": "shared",
    "train.epochs": "shared",
    "train.seed": "member",
    "train.patience": "alone",  # members that stop at different epochs cannot share a step
    "train.device": "shared",
    "train.threads": "shared",
    "train.engine": "member",
    "train.noise": "member",  # each member draws from its own noise generator
    "train.sparsity": "member",
    "train.contractive": "alone",  # the fast step refuses it
    "train.beta": "alone",
    "train.kl_warmup_epochs": "alone",
    "train.free_bits": "alone",
}

FAST_KINDS = ("dense",)  # the model kinds `DenseStep` trains

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def config_fields() -> list[str]:
    """Every field of RunConfig as "section.name"."""
    return [f"{section}.{f.name}" for section, kind in _SECTIONS.items() for f in dataclasses.fields(kind)]


def _value(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _default(key: str) -> Any:
    section, name = key.split(".")
    return getattr(_SECTIONS[section](), name)


def config_step_problem(config: RunConfig) -> str | None:
    """Why the fast step cannot train a run of this config, or None when it can."""
    for key in config_fields():
        role = FAST_STEP.get(key)
        if role is None:  # pragma: no cover - tests/test_steps.py keeps FAST_STEP complete
            return f"{key} is not classified for the fast step (aelab.train.steps.FAST_STEP)"
        if role == "refused" and _value(config, key) != _default(key):
            return f"it does not implement {key} (here {_value(config, key)!r})"
    model = config.model
    if config.train.engine == "autograd":
        return "train.engine is autograd"
    if model.kind not in FAST_KINDS or model.kind not in MODELS:
        return "it handles dense models only"
    for name in (model.activation, model.code_activation or model.activation):
        if name in ACTIVATIONS and ACTIVATIONS[name].gradient is None:
            return f"it has no gradient for the {name!r} activation"
    likelihood = LIKELIHOODS.get(config.train.loss)
    if likelihood is not None and likelihood.parameters_per_pixel != 1:
        return (
            f"it has no head for train.loss {likelihood.name} ({likelihood.parameters_per_pixel} parameters "
            "per pixel), which trains through autograd"
        )
    return None


def choose_engine(config: RunConfig, model: torch.nn.Module) -> str:
    """ "fast" or "autograd" for this run (train.engine "auto", "autograd" or "fast"), from
    the whole config and the model built from it; asking for "fast" where it cannot run is a
    ConfigError naming why."""
    if config.train.engine == "autograd":
        return "autograd"
    problem = config_step_problem(config) or fast_step_problem(model)
    if problem is None:
        return "fast"
    if config.train.engine == "fast":
        raise ConfigError(
            template="train.engine fast cannot train this model: {problem}; use {train.engine:auto}", problem=problem
        )
    return "autograd"


class Step(Protocol):
    """One optimisation step for `states` (M runs)."""

    states: list[RunState]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (M or 1, B, C, H, W), inputs and targets; returns the losses (M,)."""
        ...

    def sync(self) -> None:
        """Make each member's own optimizer hold its current state (before a checkpoint)."""
        ...

    def release(self) -> None:
        """After training: each member owns its tensors again."""
        ...


class AutogradStep:
    """Any model: the likelihood's NLL through autograd, then `optimizer.step()`."""

    def __init__(self, state: RunState) -> None:
        self.states = [state]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        state = self.states[0]
        loss = self.objective(state, images[0])
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach().reshape(1)

    def objective(self, state: RunState, x: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one batch x (B, C, H, W), with its graph."""
        inputs = state.corrupt(x)  # a denoising run's noisy copy; the targets stay x
        if state.regularization.penalises_code:
            logits, penalty = state.regularization.penalty(state.model, inputs)
        else:
            logits, penalty = state.model(inputs), None
        output, from_logits = state.model.loss_input(logits)
        loss = state.likelihood.nll(output, x, logits=from_logits).mean()
        if penalty is not None:
            loss = loss + penalty
        return loss

    def sync(self) -> None:
        pass

    def release(self) -> None:
        pass


class VariationalStep(AutogradStep):
    """A VAE (`aelab.nn.variational`): the negative ELBO through autograd, one code drawn per
    image from the run's own sample generator, the KL weighted by train.beta (warmed up over
    train.kl_warmup_epochs) with train.free_bits per dimension. Returns the objective, nats per
    image."""

    def objective(self, state: RunState, x: torch.Tensor) -> torch.Tensor:
        train = state.config.train
        terms = elbo_terms(state.model, state.likelihood, x, state.sample_generator)  # type: ignore[arg-type]
        weight = kl_weight(train.beta, train.kl_warmup_epochs, state.epoch + 1)
        return training_objective(terms, weight, train.free_bits)


class FastStep:
    """One dense run: `DenseStep` fills the model's `.grad`, then the optimizer's fused kernel."""

    def __init__(self, state: RunState) -> None:
        self.states = [state]
        sparsity = [state.regularization.sparsity]
        self.step = DenseStep([state.model], [state.config.train.loss], sparsity=sparsity)  # type: ignore[list-item]
        params = dense_parameters(state.model)  # type: ignore[arg-type]
        self.grads = [(p, self.step.gradient(s)[0]) for p, s in zip(params, self.step.parameters, strict=True)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for param, grad in self.grads:
            if param.grad is not grad:  # someone set it to None or replaced it
                param.grad = grad
        x = images.reshape(1, images.shape[1], -1)
        inputs = None if self.states[0].regularization.noise is None else self.states[0].corrupt(x)
        losses = self.step.gradients(x, inputs)  # writes the gradients into .grad
        optimizer_step(self.states[0].optimizer)  # the fused kernel without Optimizer.step's Python
        return losses

    def sync(self) -> None:
        pass

    def release(self) -> None:
        pass


class FastVariationalStep:
    """One dense VAE: `DenseVAEStep` fills the model's `.grad` with the gradient of
    `VariationalStep`'s objective (the same codes, drawn from the run's sample generator), then
    the optimizer's fused kernel. Returns the objective, nats per image."""

    def __init__(self, state: RunState) -> None:
        self.states = [state]
        self.step = DenseVAEStep(state.model, state.config.train.loss)  # type: ignore[arg-type]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        state = self.states[0]
        for param, grad in self.step.grads:
            if param.grad is not grad:  # someone set it to None or replaced it
                param.grad = grad
        train = state.config.train
        weight = kl_weight(train.beta, train.kl_warmup_epochs, state.epoch + 1)
        x = images[0].reshape(images.shape[1], -1)  # (B, D)
        loss = self.step.gradients(x, state.sample_generator, weight, train.free_bits)
        optimizer_step(state.optimizer)
        return loss

    def sync(self) -> None:
        pass

    def release(self) -> None:
        pass


def _optimizer_key(optimizer: torch.optim.Optimizer) -> str:
    return json.dumps([type(optimizer).__name__, optimizer.defaults], sort_keys=True, default=str)


def _member_order_key(state: RunState) -> tuple[Any, ...]:
    # Members with equal activations, losses and optimizer settings sit next to each other, so
    # each of those is applied to one contiguous slice of the stack.
    model, train_config = state.config.model, state.config.train
    return (
        model.activation,
        model.code_activation or model.activation,
        model.output_activation,
        train_config.loss,
        _optimizer_key(state.optimizer),
    )


def stack_order(states: list[RunState]) -> list[int]:
    """The members' positions in the stack: indices into `states`, stack order."""
    return sorted(range(len(states)), key=lambda m: _member_order_key(states[m]))


class StackedStep:
    """Several dense runs of equal layer sizes in one step. `states` must be in stack order
    (`stack_order`). Each member's parameters are rebound to slices of the stacked tensors,
    and its optimizer's state is a slice of one optimizer that steps a whole run of members
    with equal optimizer settings in one fused call; each member still has its own
    activations, loss, initialisation, optimizer settings and state, and data order."""

    def __init__(self, states: list[RunState]) -> None:
        for state in states:
            problem = config_step_problem(state.config) or fast_step_problem(state.model)
            if problem is not None:
                raise ValueError(f"cannot stack {state.config}: {problem}")
        self.states = states
        models: list[DenseAutoencoder] = [s.model for s in states]  # type: ignore[misc]
        per_member = [dense_parameters(model) for model in models]
        self.stacked = [torch.stack([params[j].detach() for params in per_member]) for j in range(len(per_member[0]))]
        for m, params in enumerate(per_member):
            for j, param in enumerate(params):
                param.data = self.stacked[j][m]
        sparsity = [s.regularization.sparsity for s in states]
        self.step = DenseStep(models, [s.config.train.loss for s in states], self.stacked, sparsity)
        self.noisy = [m for m, s in enumerate(states) if s.regularization.noise is not None]
        self.per_member = per_member
        # One optimizer per run of members with equal settings, over slices of the stack.
        self.optimizers: list[tuple[int, int, torch.optim.Optimizer, list[torch.Tensor]]] = []
        start = 0
        while start < len(states):
            end = start + 1
            key = _optimizer_key(states[start].optimizer)
            while end < len(states) and _optimizer_key(states[end].optimizer) == key:
                end += 1
            views = [stacked[start:end] for stacked in self.stacked]
            for view, stacked in zip(views, self.stacked, strict=True):
                view.grad = self.step.gradient(stacked)[start:end]
            self.optimizers.append((start, end, fast_optimizer(states[start].optimizer, views), views))
            start = end

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(images.shape[0], images.shape[1], -1).expand(len(self.states), -1, -1)  # (M, B, D)
        inputs = None
        if self.noisy:  # each denoising member corrupts its batch from its own generator
            inputs = x.clone()
            for m in self.noisy:
                inputs[m] = self.states[m].corrupt(x[m])
        losses = self.step.gradients(x, inputs)
        for _, _, optimizer, _ in self.optimizers:
            optimizer_step(optimizer)
        return losses

    def sync(self) -> None:
        """Give each member's own optimizer its slice of the shared state (views, no copies),
        so that its checkpoint holds exactly what a solo run's would."""
        for start, end, optimizer, views in self.optimizers:
            for j, view in enumerate(views):
                shared = optimizer.state.get(view, {})
                for m in range(start, end):
                    state = {}
                    for name, value in shared.items():
                        per_element = isinstance(value, torch.Tensor) and value.shape == view.shape
                        state[name] = value[m - start] if per_element else value
                    self.states[m].optimizer.state[self.per_member[m][j]] = state

    def release(self) -> None:
        """Give every member parameters of its own again, so results do not hold the stack."""
        self.sync()
        for params in self.per_member:
            for param in params:
                param.data = param.data.clone()
        for member in self.states:
            for state in member.optimizer.state.values():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[name] = value.clone()


def make_step(states: list[RunState]) -> Step:
    """The step for these runs: stacked for several (in stack order), else the run's engine."""
    if len(states) > 1:
        return StackedStep(states)
    state = states[0]
    if state.config.model.variational:
        return FastVariationalStep(state) if state.engine == "fast" else VariationalStep(state)
    return FastStep(state) if state.engine == "fast" else AutogradStep(state)
