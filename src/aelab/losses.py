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
    # One pass for the squared differences (the same values as (pixels - target).square()).
    return _per_sample_mean(F.mse_loss(pixels, target, reduction="none"))


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


# --- Likelihoods with more than one parameter per pixel. Their output holds the parameters
# stacked along dim 1, parameter-major: (B, P*C, ...) for targets (B, C, ...), channels [0, C) the
# location (the pixel mean, as logits or as the output activation's values, like a one-parameter
# loss's output), the next C channels the second parameter, unconstrained. Each returns the
# exact negative log-density per sample, mean over pixels, in nats: no constant is left out.
#
# Scales are read through Rybkin, Daniilidis & Levine's soft clip ("Simple and effective VAE
# training with calibrated decoders", ICML 2021): log sigma = LOG_SCALE_MIN + softplus(raw -
# LOG_SCALE_MIN), smooth, about `raw` above the bound and never below it, so a decoder cannot
# drive a density on data with exactly repeated values (MNIST's black background) to -inf.
LOG_SCALE_MIN = -6.0  # sigma >= e^-6 ~ 0.0025, about 0.6 of one 8-bit level
HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
# Beta targets must lie inside (0, 1): pixels of exactly 0 or 1 are squeezed (clamped) to
# BETA_EDGE and 1 - BETA_EDGE; a pixel already inside [BETA_EDGE, 1 - BETA_EDGE] is read as it is.
BETA_EDGE = 1e-4
BETA_MEAN_EDGE = 1e-6  # the Beta's mean is kept in [edge, 1 - edge], so both shapes stay positive
# The Beta's concentration kappa = alpha + beta is read, like a scale, as a soft-clipped log:
# log kappa in [LOG_CONCENTRATION_MIN, LOG_CONCENTRATION_MAX]. Without an upper bound a Beta fits
# MNIST's black background (every pixel squeezed to BETA_EDGE) with a spike whose NLL has no
# lower bound, and float32's lgamma loses the digits that tell large shapes apart; e^9 ~ 8100
# gives a standard deviation of 0.0056 (1.4 grey levels) at mean 0.5.
LOG_CONCENTRATION_MIN = -6.0
LOG_CONCENTRATION_MAX = 9.0


def _parameter_groups(output: torch.Tensor, target: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """`output` (B, count*C, ...) split into `count` tensors shaped like `target` (B, C, ...)."""
    expected = (target.shape[0], target.shape[1] * count, *target.shape[2:]) if target.ndim >= 2 else None
    if expected is None or tuple(output.shape) != expected:
        raise ValueError(
            f"output shape {tuple(output.shape)} does not match target shape {tuple(target.shape)} "
            f"with {count} parameters per pixel (expected {expected})"
        )
    return output.chunk(count, dim=1)


def bounded_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """log sigma from an unconstrained value: Rybkin et al.'s soft clip at LOG_SCALE_MIN."""
    return LOG_SCALE_MIN + F.softplus(raw - LOG_SCALE_MIN)


def gaussian_nll_elements(mean: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log N(target; mean, exp(log_scale)^2) elementwise, in nats."""
    standardised = (target - mean) * torch.exp(-log_scale)
    return 0.5 * standardised * standardised + log_scale + HALF_LOG_TWO_PI


def laplace_nll_elements(location: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log Laplace(target; location, exp(log_scale)) elementwise, in nats."""
    return (target - location).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0)


def bounded_log_concentration(raw: torch.Tensor) -> torch.Tensor:
    """log kappa from an unconstrained value: soft-clipped into [LOG_CONCENTRATION_MIN,
    LOG_CONCENTRATION_MAX], about `raw` well inside."""
    above_min = LOG_CONCENTRATION_MIN + F.softplus(raw - LOG_CONCENTRATION_MIN)
    return LOG_CONCENTRATION_MAX - F.softplus(LOG_CONCENTRATION_MAX - above_min)


def beta_shapes(mean: torch.Tensor, raw_concentration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of the Beta with this mean and concentration kappa =
    exp(bounded_log_concentration(raw)): alpha = mean kappa, beta = (1 - mean) kappa."""
    mean = mean.clamp(BETA_MEAN_EDGE, 1 - BETA_MEAN_EDGE)
    concentration = torch.exp(bounded_log_concentration(raw_concentration))
    return mean * concentration, (1 - mean) * concentration


def beta_nll_elements(alpha: torch.Tensor, beta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log Beta(target; alpha, beta) elementwise, in nats, the target squeezed into
    [BETA_EDGE, 1 - BETA_EDGE]."""
    x = target.clamp(BETA_EDGE, 1 - BETA_EDGE)
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return log_norm - (alpha - 1) * torch.log(x) - (beta - 1) * torch.log1p(-x)


def gaussian_from_logits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL per sample, mean over pixels, in nats: output (B, 2C, ...) holds the mean's
    logits (mean = sigmoid) and the raw log-scales. Shape (B,)."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(gaussian_nll_elements(torch.sigmoid(location), bounded_log_scale(raw), target))


def gaussian_from_pixels(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`gaussian_from_logits` with the mean given as it is (the output activation's values)."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(gaussian_nll_elements(location, bounded_log_scale(raw), target))


def laplace_from_logits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Laplace NLL per sample, mean over pixels, in nats: output (B, 2C, ...) holds the
    location's logits (location = sigmoid) and the raw log-scales. Shape (B,)."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(laplace_nll_elements(torch.sigmoid(location), bounded_log_scale(raw), target))


def laplace_from_pixels(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`laplace_from_logits` with the location given as it is."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(laplace_nll_elements(location, bounded_log_scale(raw), target))


def beta_from_logits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Beta NLL per sample, mean over pixels, in nats: output (B, 2C, ...) holds the mean's
    logits (mean = sigmoid) and the raw concentrations. Shape (B,)."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(beta_nll_elements(*beta_shapes(torch.sigmoid(location), raw), target))


def beta_from_pixels(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`beta_from_logits` with the mean given as it is."""
    location, raw = _parameter_groups(output, target, 2)
    return _per_sample_mean(beta_nll_elements(*beta_shapes(location, raw), target))


def location_from_logits(output: torch.Tensor) -> torch.Tensor:
    """The first parameter group through a sigmoid: the pixel mean of the Gaussian, Laplace and
    Beta above, (B, 2C, ...) -> (B, C, ...)."""
    return torch.sigmoid(output.chunk(2, dim=1)[0])


def location_from_pixels(output: torch.Tensor) -> torch.Tensor:
    """The first parameter group as it is, (B, 2C, ...) -> (B, C, ...)."""
    return output.chunk(2, dim=1)[0]


# What `aelab loss` and the doctor's mean-image baseline read a bare pixel prediction as: the
# prediction at its best scale (the profile likelihood). For a shared scale over a sample that
# is the closed form sigma^2 = the sample's mean squared error (Rybkin et al.'s optimal sigma;
# for the Laplace, b = its mean absolute error), for a per-pixel scale each pixel's own error;
# both bounded below by e^LOG_SCALE_MIN as training bounds them.


def gaussian_at_best_scale(mean: torch.Tensor, target: torch.Tensor, *, shared: bool) -> torch.Tensor:
    """Gaussian NLL (B,) of mean predictions at the scale that minimises it (shared per sample,
    or per pixel), mean over pixels, in nats."""
    _check_shapes(mean, target)
    error = (target - mean).square()
    variance = _per_sample_mean(error).view(-1, *[1] * (error.ndim - 1)) if shared else error
    log_scale = (0.5 * torch.log(variance)).clamp_min(LOG_SCALE_MIN)
    return _per_sample_mean(gaussian_nll_elements(mean, log_scale.expand_as(error), target))


def laplace_at_best_scale(location: torch.Tensor, target: torch.Tensor, *, shared: bool) -> torch.Tensor:
    """Laplace NLL (B,) of predictions at the scale that minimises it (shared per sample, or
    per pixel), mean over pixels, in nats."""
    _check_shapes(location, target)
    error = (target - location).abs()
    scale = _per_sample_mean(error).view(-1, *[1] * (error.ndim - 1)) if shared else error
    log_scale = torch.log(scale).clamp_min(LOG_SCALE_MIN)
    return _per_sample_mean(laplace_nll_elements(location, log_scale.expand_as(error), target))


# Concentrations kappa searched for the Beta's best one: a grid over its bounds, 8 per e-fold,
# then a grid 64 times finer around the best point of the first.
BETA_CONCENTRATIONS = torch.linspace(LOG_CONCENTRATION_MIN, LOG_CONCENTRATION_MAX, 121, dtype=torch.float64).exp()


def beta_at_best_concentration(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Beta NLL (B,) of mean predictions at the concentration (one per sample, searched over
    BETA_CONCENTRATIONS and refined) that minimises it, mean over pixels, in nats."""
    _check_shapes(mean, target)
    mean = mean.clamp(BETA_MEAN_EDGE, 1 - BETA_MEAN_EDGE)
    shape = (-1, mean.shape[0], *[1] * (mean.ndim - 1))  # (K, B, 1, ...)

    def values(kappas: torch.Tensor) -> torch.Tensor:  # (K, B)
        kappas = kappas.to(mean.dtype).reshape(shape)
        return beta_nll_elements(mean * kappas, (1 - mean) * kappas, target).flatten(2).mean(dim=2)

    coarse = BETA_CONCENTRATIONS.to(mean.device)
    best = values(coarse.unsqueeze(1).expand(-1, mean.shape[0])).argmin(dim=0)  # (B,)
    step = (LOG_CONCENTRATION_MAX - LOG_CONCENTRATION_MIN) / 120
    offsets = torch.linspace(-step, step, 129, dtype=torch.float64, device=mean.device)
    fine = coarse[best].log().unsqueeze(0) + offsets.unsqueeze(1)
    fine = fine.clamp(LOG_CONCENTRATION_MIN, LOG_CONCENTRATION_MAX).exp()  # (129, B)
    return torch.minimum(values(fine).min(dim=0).values, values(coarse[best].unsqueeze(0))[0])


def constant_floor(value: float) -> FloorFn:
    """A floor of `value` nats per pixel for every sample."""
    return lambda target: torch.full((target.shape[0],), value, dtype=target.dtype, device=target.device)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, 1)) per latent dimension, in nats, elementwise:
    (exp(lv) + mean^2 - 1 - lv) / 2 (Kingma & Welling 2014, appendix B). Shape of `mean`,
    (B, latent_dim); the caller sums over dimensions for the KL per image."""
    _check_shapes(mean, log_variance)
    return 0.5 * (log_variance.exp() + mean.square() - 1.0 - log_variance)
