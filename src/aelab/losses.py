"""Reconstruction losses: pure functions returning one value per sample, named by their input.

Each loss comes in two forms, named by what they take: `<loss>_from_logits(logits, target)`
for the decoder's logits (a sigmoid output: the loss works in log space), and
`<loss>_from_pixels(pixels, target)` for the model's pixels after its output activation. In
the second case BCE clips the pixels to [1e-7, 1 - 1e-7] exactly as Keras does, which is what a
`sigmoid`-less model trained in Keras or with `nn.BCELoss` computes; we keep that
probability-space path only so users can reproduce other people's numbers. Every loss reports
the mean over pixels (the Keras convention; `_per_sample_mean` is the one place losses reduce),
so BCE and MSE figures compare with the Keras tutorial and with each other across a sweep. The
caller reduces over the batch.

What each loss *is* (its distribution, pixel mean, floor, fused gradient, words) is one record
in `aelab.likelihoods.LIKELIHOODS`; this module holds the math those records are made of, and
imports only torch. `LOSSES`, `LOSS_FLOORS`, `get_loss` and `expected_pixels` are the older
name-keyed views of that registry, kept for existing code: their functions take
`(output, target, from_logits)` with `from_logits` required (no default, so `mse(pixels,
target)` cannot silently apply a sigmoid).

Each loss also has a floor: its lowest value given the targets alone, per sample. BCE's floor
is the mean binary entropy of the targets, which is why BCE on grey MNIST pixels never reaches
zero; the excess over the floor is what to watch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

EPSILON = 1e-7  # Keras's backend epsilon, used for clipping probabilities.

LossFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]  # (output, target, from_logits) -> (B,)
FloorFn = Callable[[torch.Tensor], torch.Tensor]  # target -> (B,)


def _check_shapes(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.shape != target.shape:
        raise ValueError(f"output shape {tuple(output.shape)} does not match target shape {tuple(target.shape)}")


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    # (B, ...) -> (B,): the one place losses reduce, always the mean over pixels.
    return values.flatten(1).mean(dim=1)


def _clipped_logits(pixels: torch.Tensor) -> torch.Tensor:
    probs = pixels.clamp(EPSILON, 1.0 - EPSILON)
    return torch.log(probs) - torch.log1p(-probs)


def bce_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per sample from logits, mean over pixels, in nats. Shape (B,)."""
    _check_shapes(logits, target)
    return _per_sample_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def bce_from_pixels(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per sample from probabilities, clipped to [1e-7, 1 - 1e-7] as Keras
    does; mean over pixels, in nats. Shape (B,)."""
    _check_shapes(pixels, target)
    probs = pixels.clamp(EPSILON, 1.0 - EPSILON)
    return _per_sample_mean(-(target * torch.log(probs) + (1.0 - target) * torch.log1p(-probs)))


def mse_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample of sigmoid(logits), over pixels. Shape (B,)."""
    _check_shapes(logits, target)
    return _per_sample_mean((torch.sigmoid(logits) - target).square())


def mse_from_pixels(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, over pixels. Shape (B,)."""
    _check_shapes(pixels, target)
    return _per_sample_mean((pixels - target).square())


def mae_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample of sigmoid(logits), over pixels. Shape (B,)."""
    _check_shapes(logits, target)
    return _per_sample_mean((torch.sigmoid(logits) - target).abs())


def mae_from_pixels(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample, over pixels. Shape (B,)."""
    _check_shapes(pixels, target)
    return _per_sample_mean((pixels - target).abs())


def bce(output: torch.Tensor, target: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """`bce_from_logits` or `bce_from_pixels`, as the required `from_logits` says. Shape (B,)."""
    return bce_from_logits(output, target) if from_logits else bce_from_pixels(output, target)


def mse(output: torch.Tensor, target: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """`mse_from_logits` or `mse_from_pixels`, as the required `from_logits` says. Shape (B,)."""
    return mse_from_logits(output, target) if from_logits else mse_from_pixels(output, target)


def mae(output: torch.Tensor, target: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """`mae_from_logits` or `mae_from_pixels`, as the required `from_logits` says. Shape (B,)."""
    return mae_from_logits(output, target) if from_logits else mae_from_pixels(output, target)


# --- Continuous Bernoulli (Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a
# pervasive error in variational autoencoders", NeurIPS 2019). For lambda = sigmoid(l):
#   p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),  C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)
# With u = l / 2 we have 1 - 2 lambda = -tanh(u) and artanh(1 - 2 lambda) = -u, so
#   C = 2u / tanh(u),   log C = log 2 + log(u / tanh(u)),
# which is smooth in l and needs a series only near u = 0 (lambda = 0.5):
#   log(u / tanh u) = u^2/3 - 7 u^4/90 + O(u^6).
# The mean of the distribution is  E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda))
#   = 1/2 + (1 / tanh(u) - 1 / u) / 2,   with 1/tanh(u) - 1/u = u/3 - u^3/45 + O(u^5).
_SERIES_BELOW = 1e-2  # |u| under which the series are exact to float64 precision


def cb_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, elementwise, from logits l = logit(lambda)."""
    u = logits / 2
    small = u.abs() < _SERIES_BELOW
    u_safe = torch.where(small, torch.ones_like(u), u)  # keeps the unused branch's gradient finite
    exact = torch.log(u_safe.abs()) - torch.log(torch.tanh(u_safe).abs())
    u2 = u * u
    series = u2 / 3 - 7 * u2 * u2 / 90
    return math.log(2.0) + torch.where(small, series, exact)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli's mean E[x], elementwise, from logits. This, not lambda, is the
    model's pixel value for a cb-trained model (the CB paper's point)."""
    u = logits / 2
    small = u.abs() < _SERIES_BELOW
    u_safe = torch.where(small, torch.ones_like(u), u)
    exact = 1 / torch.tanh(u_safe) - 1 / u_safe
    series = u / 3 - u * u * u / 45
    return 0.5 + torch.where(small, series, exact) / 2


def cb_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Continuous Bernoulli negative log-likelihood per sample from logits, mean over pixels, in
    nats. Shape (B,). It is BCE minus the log-normaliser; it can be negative (a density, not a
    probability)."""
    _check_shapes(logits, target)
    nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none") - cb_log_normalizer(logits)
    return _per_sample_mean(nll)


def cb_from_pixels(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`cb_from_logits` with the pixels read as the parameter lambda, clipped as Keras clips
    probabilities. Shape (B,)."""
    _check_shapes(pixels, target)
    return cb_from_logits(_clipped_logits(pixels), target)


def cb(output: torch.Tensor, target: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """`cb_from_logits` or `cb_from_pixels`, as the required `from_logits` says. Shape (B,)."""
    return cb_from_logits(output, target) if from_logits else cb_from_pixels(output, target)


# --- Floors: each loss's minimum over predictions, given the targets. Shape (B,).


def binary_entropy(target: torch.Tensor) -> torch.Tensor:
    """H(t) = -t log t - (1 - t) log(1 - t) in nats, elementwise; -inf outside [0, 1], where
    BCE has no lower bound (targets left in 0..255)."""
    entropy = -(torch.special.xlogy(target, target) + torch.special.xlogy(1 - target, 1 - target))
    inside = (target >= 0) & (target <= 1)
    return torch.where(inside, entropy, torch.full_like(target, -math.inf))


def bce_floor(target: torch.Tensor) -> torch.Tensor:
    """Lowest BCE any prediction reaches on these targets: their mean binary entropy. It sits
    at prediction = target."""
    return _per_sample_mean(binary_entropy(target))


def cb_floor(target: torch.Tensor) -> torch.Tensor:
    """Lowest cb NLL on these targets. The density grows without bound as lambda -> 0 or 1, so
    any pixel exactly 0 or 1 makes the floor -inf; otherwise it sits where E[x] = target."""
    inside = (target > 0) & (target < 1)
    # Bisect once per distinct target value (256 for 8-bit images), not once per pixel.
    values, inverse = torch.unique(target.clamp(1e-6, 1 - 1e-6), return_inverse=True)
    logits = cb_logits_for_mean(values)[inverse]
    nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none") - cb_log_normalizer(logits)
    nll = torch.where(inside, nll, torch.full_like(nll, -math.inf))
    return _per_sample_mean(nll)


def cb_logits_for_mean(mean: torch.Tensor, iterations: int = 80) -> torch.Tensor:
    """The logits whose continuous Bernoulli mean is `mean` (in (0, 1)), by bisection: E[x] is
    increasing in the logit."""
    low = torch.full_like(mean, -1e4, dtype=torch.float64)
    high = torch.full_like(mean, 1e4, dtype=torch.float64)
    goal = mean.double()
    for _ in range(iterations):
        middle = (low + high) / 2
        above = cb_mean(middle) > goal
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return ((low + high) / 2).to(mean.dtype)


def zero_floor(target: torch.Tensor) -> torch.Tensor:
    """A floor of zero for every sample: mse and mae are minimal, at 0, at prediction = target."""
    return torch.zeros(target.shape[0], dtype=target.dtype, device=target.device)


_zero_floor = zero_floor  # the older private name


# --- The older name-keyed views of `aelab.likelihoods.LIKELIHOODS`. They read the registry on
# every access, so a likelihood registered later shows up in them; the import is deferred
# because the registry is built from this module.


class _LossView(Mapping[str, LossFn]):
    """name -> loss(output, target, from_logits), for every registered likelihood."""

    def __getitem__(self, name: str) -> LossFn:
        from aelab.likelihoods import LIKELIHOODS

        return LIKELIHOODS[name].loss

    def __iter__(self) -> Iterator[str]:
        from aelab.likelihoods import LIKELIHOODS

        return iter(list(LIKELIHOODS))

    def __len__(self) -> int:
        from aelab.likelihoods import LIKELIHOODS

        return len(LIKELIHOODS)


class _FloorView(Mapping[str, FloorFn]):
    """name -> floor(target), for every registered likelihood that has a floor."""

    def _floors(self) -> dict[str, FloorFn]:
        from aelab.likelihoods import LIKELIHOODS

        return {name: record.floor for name, record in LIKELIHOODS.items() if record.floor is not None}

    def __getitem__(self, name: str) -> FloorFn:
        return self._floors()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._floors())

    def __len__(self) -> int:
        return len(self._floors())


LOSSES: Mapping[str, LossFn] = _LossView()
LOSS_FLOORS: Mapping[str, FloorFn] = _FloorView()


def get_loss(name: str) -> LossFn:
    """The loss called `name`, as loss(output, target, from_logits); a ConfigError listing the
    valid names for any other name (`aelab.likelihoods.get_likelihood`)."""
    from aelab.likelihoods import get_likelihood

    return get_likelihood(name).loss


def expected_pixels(loss: str, output: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """The pixels a model trained with `loss` shows (`Likelihood.mean`): the output activation's
    values, except for cb, whose pixels are the distribution's mean rather than its parameter."""
    from aelab.likelihoods import get_likelihood

    return get_likelihood(loss).mean(output, logits=from_logits)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, 1)) per latent dimension, in nats, elementwise:
    (exp(lv) + mean^2 - 1 - lv) / 2 (Kingma & Welling 2014, appendix B). Shape of `mean`,
    (B, latent_dim); the caller sums over dimensions for the KL per image."""
    _check_shapes(mean, log_variance)
    return 0.5 * (log_variance.exp() + mean.square() - 1.0 - log_variance)
