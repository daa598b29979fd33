"""Regularised autoencoders: input corruption (denoising) and penalties on the code (sparse,
contractive), in one home.

- `NOISES`: one `Noise` record per corruption kind. A run's `train.noise` names one with its
  level, "KIND:LEVEL" ("gaussian:0.5", "mask:0.3", "salt_pepper:0.1"); the corruption applies
  to the inputs only (the targets stay clean: Vincent et al., "Extracting and composing robust
  features with denoising autoencoders", ICML 2008), is drawn afresh every step from a
  generator the run owns, and is clipped to the data's range [0, high], so that corrupted
  inputs stay images of the kind the model is scored on (the Keras blog's `np.clip`).
- `PENALTIES`: one `CodePenalty` record per sparsity penalty on the code's activations. A run's
  `train.sparsity` names one: "l1" or "l1:WEIGHT" (the Keras blog's `activity_regularizer`,
  weight 1e-4 by default), "kl:RHO" or "kl:RHO:WEIGHT" (the KL divergence of each code unit's
  mean activation from a target rate rho, for codes in (0, 1): Ng, "Sparse autoencoder",
  CS294A lecture notes). Each record gives the penalty and its gradient with respect to the
  code, which the fast step adds at the code (`aelab.train.fast.DenseStep`).
- `contractive_penalty`: the squared Frobenius norm of the encoder's Jacobian (Rifai et al.,
  "Contractive auto-encoders", ICML 2011), `train.contractive` its weight, computed exactly and
  without double backward for dense encoders.

Reduction, as for the losses: a penalty is a mean over the images of the batch of a sum over
code units, so its weight is relative to the per-image loss (a mean over pixels, Keras'
convention): `l1:1e-4` is Keras' `regularizers.l1(1e-4)` beside its per-pixel-mean loss.
Shapes: code (B, K); images (B, C, H, W) or (B, D).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aelab.config import TrainConfig
from aelab.errors import ConfigError
from aelab.nn.activations import ACTIVATIONS

NONE = "none"  # train.noise / train.sparsity: off


# ---------------------------------------------------------------------------------------------
# Noise


@dataclass(frozen=True)
class Noise:
    """One corruption kind.

    name: its key in NOISES, the KIND of train.noise "KIND:LEVEL".
    corrupt: (images, level, high, generator) -> corrupted copy of the same shape, in [0, high]
        for images in [0, high]; the images are not touched.
    level_words: what LEVEL means, for errors and help.
    level_range: the open or half-open range LEVEL must lie in, (low, high, high_included).
    """

    name: str
    corrupt: Callable[[torch.Tensor, float, float, torch.Generator], torch.Tensor]
    level_words: str
    level_range: tuple[float, float, bool]


def _gaussian(images: torch.Tensor, level: float, high: float, generator: torch.Generator) -> torch.Tensor:
    # sigma is relative to the data's range: 0.5 on [0, 1] images is 127.5 on [0, 255] ones.
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + noise * (level * high)).clamp_(0.0, high)


def _mask(images: torch.Tensor, level: float, high: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype) >= level
    return images * keep


def _salt_pepper(images: torch.Tensor, level: float, high: float, generator: torch.Generator) -> torch.Tensor:
    # One draw per pixel: below level/2 pepper (0), in [level/2, level) salt (high), else kept.
    draw = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    corrupted = images.masked_fill(draw < level, high)
    return corrupted.masked_fill_(draw < level / 2, 0.0)


NOISES: dict[str, Noise] = {
    "gaussian": Noise("gaussian", _gaussian, "the standard deviation, as a share of the data's range", (0, 10, True)),
    "mask": Noise("mask", _mask, "the share of pixels set to 0", (0, 1, False)),
    "salt_pepper": Noise("salt_pepper", _salt_pepper, "the share of pixels set to 0 or the maximum", (0, 1, True)),
}


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed train.noise: the record and its level."""

    noise: Noise
    level: float

    def corrupt(self, images: torch.Tensor, high: float, generator: torch.Generator) -> torch.Tensor:
        """A corrupted copy of `images` (values in [0, high]); `images` stays as it was."""
        return self.noise.corrupt(images, self.level, high, generator)


def _number(text: str, key: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        setting = "{" + key + "}"  # a config key the command line names by its flag
        template = setting + ": {what} must be a finite number, got {given}"
        raise ConfigError(template=template, what=what, given=repr(text))
    return value


def parse_noise(text: str) -> NoiseSpec | None:
    """train.noise "KIND:LEVEL" as a NoiseSpec, None for "none"; a ConfigError naming the
    kinds and the level's range for anything else."""
    if text.strip().lower() == NONE:
        return None
    kind, _, level_text = text.strip().partition(":")
    kind = kind.strip().replace("-", "_")
    if kind not in NOISES or not level_text:
        raise ConfigError(
            template="{train.noise} must be none or KIND:LEVEL with KIND one of {kinds} (gaussian:0.5, mask:0.3), "
            "got {given}",
            kinds=", ".join(NOISES),
            given=repr(text),
        )
    record = NOISES[kind]
    level = _number(level_text, "train.noise", f"the {kind} level ({record.level_words})")
    low, high, high_included = record.level_range
    if not (low < level and (level <= high if high_included else level < high)):
        bracket = "]" if high_included else ")"
        raise ConfigError(
            template="{train.noise}: the {kind} level ({words}) must be in {interval}, got {level}",
            kind=kind,
            words=record.level_words,
            interval=f"({low:g}, {high:g}{bracket}",
            level=f"{level:g}",
        )
    return NoiseSpec(record, level)


# ---------------------------------------------------------------------------------------------
# Sparsity penalties on the code

KL_EPSILON = 1e-6  # the mean activations are clamped to [eps, 1 - eps] before the logs


@dataclass(frozen=True)
class CodePenalty:
    """One sparsity penalty on the code's activations.

    name: its key in PENALTIES, the KIND of train.sparsity.
    value: (code (B, K), weight, target) -> the penalty, a scalar (the mean over the images of
        a sum over units, or a function of the batch's mean activations).
    gradient: (code, weight, target) -> d value / d code, (B, K).
    default_weight: the weight when train.sparsity gives none.
    needs_target: whether the spec carries a target activation rate first ("kl:RHO").
    code_range: the open range the code's activation must map into, or None for any code.
    """

    name: str
    value: Callable[[torch.Tensor, float, float], torch.Tensor]
    gradient: Callable[[torch.Tensor, float, float], torch.Tensor]
    default_weight: float
    needs_target: bool = False
    code_range: tuple[float, float] | None = None


def _l1_value(code: torch.Tensor, weight: float, target: float) -> torch.Tensor:
    return weight * code.abs().sum(1).mean()


def _l1_gradient(code: torch.Tensor, weight: float, target: float) -> torch.Tensor:
    return code.sign().mul_(weight / code.shape[0])


def _rate(code: torch.Tensor) -> torch.Tensor:
    return code.mean(0).clamp(KL_EPSILON, 1 - KL_EPSILON)  # (K,) each unit's mean activation


def _kl_value(code: torch.Tensor, weight: float, target: float) -> torch.Tensor:
    rate = _rate(code)
    kl = target * torch.log(target / rate) + (1 - target) * torch.log((1 - target) / (1 - rate))
    return weight * kl.sum()


def _kl_gradient(code: torch.Tensor, weight: float, target: float) -> torch.Tensor:
    mean = code.mean(0)
    rate = mean.clamp(KL_EPSILON, 1 - KL_EPSILON)
    per_unit = (1 - target) / (1 - rate) - target / rate
    per_unit = torch.where((mean > KL_EPSILON) & (mean < 1 - KL_EPSILON), per_unit, 0.0)  # the clamp's gradient
    return (per_unit * (weight / code.shape[0])).expand_as(code).clone()


PENALTIES: dict[str, CodePenalty] = {
    "l1": CodePenalty("l1", _l1_value, _l1_gradient, default_weight=1e-4),
    "kl": CodePenalty("kl", _kl_value, _kl_gradient, default_weight=1e-2, needs_target=True, code_range=(0.0, 1.0)),
}


@dataclass(frozen=True)
class SparsitySpec:
    """A parsed train.sparsity: the record, its weight and (kl) its target rate."""

    penalty: CodePenalty
    weight: float
    target: float = 0.0

    def value(self, code: torch.Tensor) -> torch.Tensor:
        return self.penalty.value(code, self.weight, self.target)

    def gradient(self, code: torch.Tensor) -> torch.Tensor:
        return self.penalty.gradient(code, self.weight, self.target)


def parse_sparsity(text: str) -> SparsitySpec | None:
    """train.sparsity as a SparsitySpec, None for "none": "l1", "l1:WEIGHT", "kl:RHO",
    "kl:RHO:WEIGHT"; a ConfigError naming the forms for anything else."""
    if text.strip().lower() == NONE:
        return None
    kind, *values = [part.strip() for part in text.strip().split(":")]
    record = PENALTIES.get(kind)
    forms = "none, l1, l1:WEIGHT, kl:RHO or kl:RHO:WEIGHT (l1:1e-4, kl:0.05)"
    if record is None or len(values) > 1 + record.needs_target or (record.needs_target and not values):
        raise ConfigError(template="{train.sparsity} must be {forms}, got {given}", forms=forms, given=repr(text))
    target = 0.0
    if record.needs_target:
        target = _number(values.pop(0), "train.sparsity", "the target rate RHO")
        if not 0.0 < target < 1.0:
            raise ConfigError(
                template="{train.sparsity}: the target rate RHO must be in (0, 1), got {rho}", rho=f"{target:g}"
            )
    weight = _number(values[0], "train.sparsity", "the weight") if values else record.default_weight
    if weight <= 0:
        raise ConfigError(template="{train.sparsity}: the weight must be positive, got {weight}", weight=f"{weight:g}")
    return SparsitySpec(record, weight, target)


def check_code_activation(spec: SparsitySpec | None, code_activation: str) -> None:
    """A ConfigError when the penalty needs codes in a range the code's activation leaves."""
    if spec is None or spec.penalty.code_range is None or code_activation not in ACTIVATIONS:
        return
    low, high = spec.penalty.code_range
    out_low, out_high = ACTIVATIONS[code_activation].output_range
    if out_low < low or out_high > high:
        raise ConfigError(
            template="{train.sparsity:{kind}} needs a code in {code_range}, and the code activation {name} reaches "
            "{reach}; use {model.code_activation:sigmoid} or {train.sparsity:l1}",
            kind=spec.penalty.name,
            code_range=f"({low:g}, {high:g})",
            name=code_activation,
            reach=f"[{out_low:g}, {out_high:g}]",
        )


# ---------------------------------------------------------------------------------------------
# The contractive penalty


def _derivative(name: str, output: torch.Tensor, pre_activation: torch.Tensor) -> torch.Tensor:
    """f'(z) for activation `name` from its output and pre-activation, differentiable (the
    kernels autograd's own backward formulas call, which autograd can differentiate again)."""
    return ACTIVATIONS[name].gradient(torch.ones_like(output), output, pre_activation)  # type: ignore[misc]


def dense_jacobian_norm(
    layers: list[tuple[torch.Tensor, torch.Tensor, str]], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(code (B, K), ||J||_F^2 (B,)) of a dense encoder h = f_L(W_L ... f_1(W_1 x + b_1) ...),
    layers [(weight (out, in), bias (out,), activation name)], images (B, D).

    J = D_L P_L with D_k = diag(f_k'(z_k)) and P_k = W_k D_{k-1} P_{k-1}, P_1 = W_1, so the Gram
    matrices follow from G_1 = W_1 W_1^T by G_k = (W_k D_{k-1}) G_{k-1} (W_k D_{k-1})^T, and
    ||J||_F^2 = sum_j d_Lj^2 (G_L)_jj, of which only the diagonal is formed: exact, one ordinary
    backward (no double backward), never the (B, K, D) Jacobian itself. For one layer this is
    Rifai et al.'s closed form sum_j f'(z_j)^2 ||W_j||^2."""
    hidden = images
    gram: torch.Tensor | None = None  # G_{k-1}: (in, in) after the first layer, then (B, in, in)
    derivative = diagonal = torch.empty(0)
    for index, (weight, bias, name) in enumerate(layers):
        last = index == len(layers) - 1
        if gram is None:
            if last:
                diagonal = weight.square().sum(1)  # (out,)
            else:
                gram = weight @ weight.t()
        else:
            scaled = weight * derivative[:, None, :]  # W_k D_{k-1}, (B, out, in)
            if last:
                diagonal = ((scaled @ gram) * scaled).sum(-1)  # (B, out)
            else:
                gram = scaled @ gram @ scaled.transpose(1, 2)  # (B, out, out)
        pre = torch.nn.functional.linear(hidden, weight, bias)
        hidden = ACTIVATIONS[name].function(pre)
        derivative = _derivative(name, hidden, pre)  # (B, out)
    return hidden, (derivative.square() * diagonal).sum(1)


def jacobian_norm_by_autograd(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """(code (B, K), ||J||_F^2 (B,)) for any encoder whose images do not mix in a batch: one
    backward per code unit with create_graph (double backward when trained): exact, slower."""
    inputs = images.detach().requires_grad_()
    with torch.enable_grad():
        code = encode(inputs)
        norm = torch.zeros(code.shape[0], dtype=code.dtype, device=code.device)
        for unit in range(code.shape[1]):
            (row,) = torch.autograd.grad(code[:, unit].sum(), inputs, create_graph=True)
            norm = norm + row.flatten(1).square().sum(1)
    return code, norm


def encoder_jacobian_norm(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code (B, K), ||d code / d image||_F^2 per image (B,)) for an aelab Autoencoder: the
    closed form for a dense encoder whose activations have gradients, else autograd."""
    from aelab.nn.models import DenseAutoencoder

    if isinstance(model, DenseAutoencoder):
        config = model.config
        names = [config.activation] * (len(model.encoder) - 1) + [config.code_activation or config.activation]
        if all(ACTIVATIONS[name].gradient is not None for name in names):
            layers = [(layer.weight, layer.bias, name) for layer, name in zip(model.encoder, names, strict=True)]
            return dense_jacobian_norm(layers, images.flatten(1))
    return jacobian_norm_by_autograd(model.encode, images)


# ---------------------------------------------------------------------------------------------
# A run's regularisation, parsed once


@dataclass(frozen=True)
class Regularization:
    """What a run's train.noise, train.sparsity and train.contractive ask for, parsed."""

    noise: NoiseSpec | None = None
    sparsity: SparsitySpec | None = None
    contractive: float = 0.0

    @classmethod
    def from_config(cls, train: TrainConfig, code_activation: str | None = None) -> Regularization:
        """From a run's train section; `code_activation` (the model's) is checked against the
        sparsity penalty's range."""
        sparsity = parse_sparsity(train.sparsity)
        if code_activation is not None:
            check_code_activation(sparsity, code_activation)
        return cls(parse_noise(train.noise), sparsity, float(train.contractive))

    @property
    def active(self) -> bool:
        return self.noise is not None or self.sparsity is not None or self.contractive > 0

    @property
    def penalises_code(self) -> bool:
        return self.sparsity is not None or self.contractive > 0

    def penalty(self, model: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, penalty) for `inputs` (B, C, H, W): the model's forward with the code's
        penalties (sparsity, contractive) on the way, through autograd."""
        if self.contractive > 0:
            code, norm = encoder_jacobian_norm(model, inputs)
            penalty = self.contractive * norm.mean()
        else:
            code = model.encode(inputs)
            penalty = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        if self.sparsity is not None:
            penalty = penalty + self.sparsity.value(code)
        return model.decode(code), penalty


__all__ = [
    "NOISES",
    "PENALTIES",
    "CodePenalty",
    "Noise",
    "NoiseSpec",
    "Regularization",
    "SparsitySpec",
    "dense_jacobian_norm",
    "encoder_jacobian_norm",
    "jacobian_norm_by_autograd",
    "parse_noise",
    "parse_sparsity",
]
