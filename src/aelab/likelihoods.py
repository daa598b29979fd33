"""Likelihoods: what a reconstruction loss is, one record per loss, in one registry.

Every reconstruction loss aelab trains with is a negative log-likelihood of the targets under
a distribution whose parameters the decoder outputs. Four have one parameter per pixel and are
exact up to a constant per pixel:

    bce  Bernoulli with mean p: exact for binary targets (for grey ones, a cross-entropy)
    mse  Gaussian with mean p and fixed sigma = 1/sqrt(2):  (x - p)^2 + log(pi) / 2
    mae  Laplace with location p and fixed scale 1:        |x - p| + log 2
    cb   continuous Bernoulli with parameter lambda (Loaiza-Ganem & Cunningham, "The
         continuous Bernoulli: fixing a pervasive error in variational autoencoders",
         NeurIPS 2019): an exact density on [0, 1]

and five with a second parameter per pixel, exact densities in nats (nothing left out):

    gaussian        Gaussian with mean p and one learned sigma, a parameter of the model (Rybkin,
                    Daniilidis & Levine, "Simple and effective VAE training with calibrated
                    decoders", ICML 2021)
    gaussian-pixel  Gaussian with mean p and a sigma per pixel from the decoder (the same paper)
    laplace         Laplace with location p and one learned scale
    laplace-pixel   Laplace with location p and a scale per pixel from the decoder
    beta            Beta with mean p and a concentration per pixel from the decoder, on targets
                    squeezed into [1e-4, 1 - 1e-4]

`Likelihood.nll` reports the value aelab has always reported (the Keras-comparable mean over
pixels, `aelab.losses._per_sample_mean`, shape (B,)); `density_constant` is the constant per
pixel that turns it into a true negative log-density in nats (0 for bce and cb), kept apart so
no reported number changes.

Code that needs to know something about a loss asks its record: `get_likelihood(name)` (an
unknown name raises a ConfigError listing the valid ones). A new likelihood is one entry:
`LIKELIHOODS["logistic"] = Likelihood(...)`; training, evaluation, the report, the doctor and
`aelab loss` then know it. It trains through autograd everywhere, and through the fast step's
fused gradient when it gives `fused_head`.

Inputs are named: `logits` are the decoder's raw outputs, for a sigmoid output (the losses then
work in log space); `pixels` are the model's values after its output activation, read as the
distribution's parameter. There is no default for which one a tensor is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from aelab.errors import ConfigError
from aelab.losses import (
    _SERIES_BELOW,
    BETA_EDGE,
    BETA_MEAN_EDGE,
    HALF_LOG_TWO_PI,
    LOG_CONCENTRATION_MAX,
    LOG_CONCENTRATION_MIN,
    LOG_SCALE_MIN,
    _clipped_logits,
    bce_floor,
    bce_from_logits,
    bce_from_pixels,
    beta_at_best_concentration,
    beta_from_logits,
    beta_from_pixels,
    cb_floor,
    cb_from_logits,
    cb_from_pixels,
    cb_logits_for_mean,
    cb_mean,
    constant_floor,
    gaussian_at_best_scale,
    gaussian_from_logits,
    gaussian_from_pixels,
    laplace_at_best_scale,
    laplace_from_logits,
    laplace_from_pixels,
    location_from_logits,
    location_from_pixels,
    mae_from_logits,
    mae_from_pixels,
    mse_from_logits,
    mse_from_pixels,
    zero_floor,
)

NllFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> (B,)
MeanFn = Callable[[torch.Tensor], torch.Tensor]  # output -> pixels, same shape
FloorFn = Callable[[torch.Tensor], torch.Tensor]  # target -> (B,)
# A fused head for the fast step (`aelab.train.fast.DenseStep`), for a sigmoid output: it takes the
# logits z and targets x of k stacked members (k, B, D), returns each member's mean loss (k,)
# (over images and pixels, as `nll` reduces) and overwrites z with dloss/dz.
Head = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Where a likelihood's targets live, which says how its density integrates to one: a sum over
# {0, 1} ("binary"), an integral over [0, 1] ("unit") or over the real line ("real").
SUPPORTS = ("binary", "unit", "real")


def _pixels_as_they_are(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


def _same_minimum(text: str) -> Callable[[Sequence[float]], str]:
    return lambda targets: text


_AT_TARGET = _same_minimum("prediction = target")


@dataclass(frozen=True)
class Likelihood:
    """One reconstruction loss, everything aelab knows about it.

    name: its key in LIKELIHOODS, the value of `train.loss`.
    distribution: the distribution it is the negative log-likelihood of, in words.
    nll_from_logits / nll_from_pixels: (output, target) -> (B,), the loss per sample, mean over
        pixels, from the decoder's logits (sigmoid output) or from the output activation's values.
    mean_from_logits: logits -> the pixels the model shows (the distribution's mean: the
        sigmoid for bce, mse and mae; the cb mean for cb, not its parameter lambda).
    mean_from_pixels: output activation values -> the pixels shown (themselves, except for cb).
    floor: target -> (B,), the lowest value any prediction reaches on these targets, or None
        when unknown.
    nll_from_mean: (mean, target) -> (B,), the loss of a prediction given as the pixel mean
        (what `aelab loss` takes); None: `nll_from_pixels`, for likelihoods whose parameter is
        their mean.
    density_constant: nats per pixel to add to `nll` for the true negative log-density
        (log-mass for a binary support); reported numbers leave it out.
    support: where the targets' density lives, one of SUPPORTS: "binary" a pmf on {0, 1}
        (sums to one over 0 and 1; on grey targets no density at all), "unit" a density on
        [0, 1], "real" a density on the real line. Bits per dimension are meaningful for the
        last two.
    parameters_per_pixel: the distribution's parameters per pixel, P. Its `nll` and `mean` read
        an output (B, P*C, ...) for targets (B, C, ...), parameter-major: channels [0, C) the
        location (the pixel mean, as logits or output activation values), then each further
        parameter's C channels, unconstrained (`aelab.losses`).
    shared_parameters: how many of those P are one learned value per model rather than
        decoder outputs (a shared scale): the model holds them (`Autoencoder.likelihood_parameters`)
        and `Autoencoder.loss_input` appends them to the decoder's P - shared groups.
    needs_unit_targets: whether targets (and predictions) must lie in [0, 1], as probabilities.
    fused_head: the fast step's fused loss-and-gradient for a sigmoid output (`Head`), or None:
        the fast step then takes the gradient of `nll_from_logits` by autograd.
    minimum_text: targets -> where the loss is minimal for them, in words (`aelab loss`).
    prediction_words: how a bare pixel prediction is scored when the distribution needs more
        than its mean (`aelab loss`, the doctor's mean-image baseline), else None.
    unit: "nats" when the reported value is a log-likelihood in nats, else None.
    mean_words: what a prediction is read as when it is not the parameter itself ("the cb
        mean"), else None.
    floor_note: what a floor above zero means, with "{floor}" for its value, else None.
    dimming_note: why a model trained with this loss may dim the image, else None.
    javascript: the same math for the loss explorer (`aelab.report.loss_explorer`), as the source of a
        JavaScript object `{nll: (t, p) => ..., floor: (t) => ..., minimiser: (t) => ...}` for
        one element: the loss of prediction p (a pixel mean, as `prediction_nll` reads it) for
        target t, `floor` of that target (-Infinity where none), and the prediction where it is
        reached (NaN where none); it may use the explorer's helpers `M` (the formulas of
        `aelab.losses`). None: the explorer lists the loss without a curve.
    """

    name: str
    distribution: str
    nll_from_logits: NllFn
    nll_from_pixels: NllFn
    mean_from_logits: MeanFn
    mean_from_pixels: MeanFn = _pixels_as_they_are
    floor: FloorFn | None = None
    nll_from_mean: NllFn | None = None
    density_constant: float = 0.0
    support: str = "real"
    parameters_per_pixel: int = 1
    shared_parameters: int = 0
    needs_unit_targets: bool = False
    fused_head: Head | None = None
    minimum_text: Callable[[Sequence[float]], str] = _AT_TARGET
    prediction_words: str | None = None
    unit: str | None = None
    mean_words: str | None = None
    floor_note: str | None = None
    dimming_note: str | None = None
    javascript: str | None = None

    def __post_init__(self) -> None:
        if self.support not in SUPPORTS:
            raise ValueError(f"likelihood {self.name!r}: support {self.support!r} is not one of {', '.join(SUPPORTS)}")
        if self.parameters_per_pixel < 1:
            raise ValueError(f"likelihood {self.name!r}: parameters_per_pixel must be at least 1")
        if not 0 <= self.shared_parameters < self.parameters_per_pixel:
            raise ValueError(f"likelihood {self.name!r}: shared_parameters must be in [0, parameters_per_pixel)")
        if self.parameters_per_pixel > 1 and self.fused_head is not None:
            raise ValueError(f"likelihood {self.name!r}: fused heads take one parameter per pixel")

    @property
    def decoded_parameters(self) -> int:
        """Output values per pixel a decoder produces: P minus the shared ones."""
        return self.parameters_per_pixel - self.shared_parameters

    def nll(self, output: torch.Tensor, target: torch.Tensor, *, logits: bool) -> torch.Tensor:
        """The loss per sample (B,), mean over pixels: `output` is the decoder's logits when
        `logits` is true, else the output activation's values (`Autoencoder.loss_input` says)."""
        return self.nll_from_logits(output, target) if logits else self.nll_from_pixels(output, target)

    def mean(self, output: torch.Tensor, *, logits: bool) -> torch.Tensor:
        """The pixels the model shows for `output` (logits or output activation values)."""
        return self.mean_from_logits(output) if logits else self.mean_from_pixels(output)

    def loss(self, output: torch.Tensor, target: torch.Tensor, from_logits: bool) -> torch.Tensor:
        """`nll` with the older positional signature of `aelab.losses.LOSSES` (flag required)."""
        return self.nll(output, target, logits=from_logits)

    def prediction_nll(self, mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (B,) of predictions given as pixel means."""
        return (self.nll_from_mean or self.nll_from_pixels)(mean, target)

    def pixel_nll(self, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (B,) of a prediction given as output activation values, shaped like the
        targets: `nll_from_pixels` for a one-parameter likelihood (its parameter is the pixel);
        for one with more parameters, the prediction read as its mean at its best other
        parameters (`prediction_nll`)."""
        if self.parameters_per_pixel == 1:
            return self.nll_from_pixels(pixels, target)
        return self.prediction_nll(pixels, target)

    def nats_per_image(self, output: torch.Tensor, target: torch.Tensor, *, logits: bool) -> torch.Tensor:
        """The true negative log-likelihood per image (B,) in nats: `nll` (a mean over pixels)
        plus `density_constant`, times the values per image. Bits per dimension on 8-bit data
        dequantised to [0, 1] are this / (D log 2) + log2(256) for a "unit" or "real" support."""
        values = target[0].numel() if target.shape[0] else 0
        return (self.nll(output, target, logits=logits) + self.density_constant) * values

    def lowest(self, target: torch.Tensor) -> torch.Tensor:
        """`floor(target)` (B,), NaN for each sample when the floor is unknown."""
        if self.floor is None:
            return torch.full((target.shape[0],), math.nan, dtype=target.dtype, device=target.device)
        return self.floor(target)


# --- Fused heads for the fast step: the formulas of `aelab.losses`, written so that the loss
# and its gradient with respect to the logits take few passes and no temporaries; both engines
# report the same numbers to rounding.


def _bce_terms(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """BCE with logits elementwise as softplus(z) - x z: two passes where
    `binary_cross_entropy_with_logits` makes five; the same values to float rounding."""
    return torch.nn.functional.softplus(z).addcmul_(x, z, value=-1)


def cb_log_normalizer_and_gradient(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`aelab.losses.cb_log_normalizer` and its derivative d log C / d logit, with the same
    series switch, from one tanh. With u = l / 2: log C = log 2 + log(u / tanh u), and
    d/du log(u / tanh u) = 1/u - 1/tanh u + tanh u; near u = 0 the series u^2/3 - 7 u^4/90
    and its derivative 2u/3 - 14 u^3/45, computed for those few elements only."""
    u = logits * 0.5
    tanh = torch.tanh(u)
    log_c = torch.log(u / tanh)  # NaN at u = 0, replaced below
    gradient = torch.reciprocal(u).sub_(torch.reciprocal(tanh)).add_(tanh)
    small = (u.abs() < _SERIES_BELOW).nonzero(as_tuple=True)
    if small[0].numel():
        u_small = u[small]
        u2 = u_small * u_small
        log_c[small] = u2 / 3 - 7 * u2 * u2 / 90
        gradient[small] = 2 * u_small / 3 - 14 * u2 * u_small / 45
    return log_c.add_(math.log(2.0)), gradient.div_(2)


def _bce_head(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / (z.shape[1] * z.shape[2])  # the mean over images and pixels
    value = _bce_terms(z, x).sum((1, 2)) * scale
    z.sigmoid_().sub_(x).mul_(scale)
    return value


def _cb_head(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / (z.shape[1] * z.shape[2])
    log_c, log_c_gradient = cb_log_normalizer_and_gradient(z)  # BCE minus the log-normaliser
    value = _bce_terms(z, x).sub_(log_c).sum((1, 2)) * scale
    z.sigmoid_().sub_(x).sub_(log_c_gradient).mul_(scale)
    return value


def _mse_head(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / (z.shape[1] * z.shape[2])
    probs = z.sigmoid_()
    error = probs - x
    value = error.square().sum((1, 2)) * scale
    error.mul_(2 * scale)
    torch.ops.aten.sigmoid_backward.grad_input(error, probs, grad_input=z)
    return value


def _mae_head(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scale = 1.0 / (z.shape[1] * z.shape[2])
    probs = z.sigmoid_()
    error = probs - x
    value = error.abs().sum((1, 2)) * scale
    error.sign_().mul_(scale)  # sign(0) = 0 as in autograd's abs
    torch.ops.aten.sigmoid_backward.grad_input(error, probs, grad_input=z)
    return value


# --- The continuous Bernoulli's own pieces.


def _cb_mean_from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return cb_mean(_clipped_logits(pixels))


def _cb_nll_from_mean(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return cb_from_logits(cb_logits_for_mean(mean.clamp(1e-12, 1 - 1e-12)), target)


def probability_text(value: float) -> str:
    """0.0652 -> "0.065"; 0.99995 -> "1 - 4.5e-05": enough digits to tell it from 0 or 1."""
    if value > 0.99:
        return f"1 - {1 - value:.2g}"
    if value < 0.01:
        return f"{value:.2g}"
    return f"{value:.3f}"


def _cb_minimum_text(targets: Sequence[float]) -> str:
    parameters = []
    for target in targets:
        if target <= 0 or target >= 1:
            parameters.append(f"{target:g}: none (-inf)")
        else:
            logit = float(cb_logits_for_mean(torch.tensor([target], dtype=torch.float64))[0])
            parameters.append(probability_text(1 / (1 + math.exp(-logit))))
    return (
        "cb mean = target (the prediction), i.e. at parameter lambda = "
        + ", ".join(parameters)
        + "; a target of exactly 0 or 1 has no minimum (floor -inf)"
    )


BCE = Likelihood(
    name="bce",
    distribution="Bernoulli with mean p (for grey targets, the cross-entropy between Bernoullis)",
    nll_from_logits=bce_from_logits,
    nll_from_pixels=bce_from_pixels,
    mean_from_logits=torch.sigmoid,
    floor=bce_floor,
    support="binary",
    needs_unit_targets=True,
    fused_head=_bce_head,
    minimum_text=_same_minimum(
        "prediction = target; the minimum is the targets' mean binary entropy, > 0 for grey targets"
    ),
    unit="nats",
    javascript="{nll: (t, p) => M.bceFromPixels(p, t), floor: (t) => M.binaryEntropy(t), minimiser: (t) => t}",
    floor_note=(
        "bce is not zero at prediction = target: its floor here is {floor:.4f} nats, the mean binary "
        "entropy of the targets; only targets of exactly 0 or 1 have a floor of 0. Watch the excess."
    ),
)
MSE = Likelihood(
    name="mse",
    distribution="Gaussian with mean p and fixed standard deviation 1/sqrt(2)",
    nll_from_logits=mse_from_logits,
    nll_from_pixels=mse_from_pixels,
    mean_from_logits=torch.sigmoid,
    floor=zero_floor,
    density_constant=0.5 * math.log(math.pi),
    fused_head=_mse_head,
    javascript="{nll: (t, p) => (p - t) * (p - t), floor: (t) => 0, minimiser: (t) => t}",
)
MAE = Likelihood(
    name="mae",
    distribution="Laplace with location p and fixed scale 1",
    nll_from_logits=mae_from_logits,
    nll_from_pixels=mae_from_pixels,
    mean_from_logits=torch.sigmoid,
    floor=zero_floor,
    density_constant=math.log(2.0),
    fused_head=_mae_head,
    minimum_text=_same_minimum("prediction = target (per element; over several equal predictions, their median)"),
    dimming_note="MAE is minimised by each pixel's median, which is black on mostly-black images",
    javascript="{nll: (t, p) => Math.abs(p - t), floor: (t) => 0, minimiser: (t) => t}",
)
CB = Likelihood(
    name="cb",
    distribution="continuous Bernoulli with parameter lambda (Loaiza-Ganem & Cunningham 2019)",
    nll_from_logits=cb_from_logits,
    nll_from_pixels=cb_from_pixels,
    mean_from_logits=cb_mean,
    mean_from_pixels=_cb_mean_from_pixels,
    floor=cb_floor,
    nll_from_mean=_cb_nll_from_mean,
    support="unit",
    needs_unit_targets=True,
    fused_head=_cb_head,
    minimum_text=_cb_minimum_text,
    unit="nats",
    mean_words="the cb mean",
    javascript=(
        "{nll: (t, p) => M.cbFromMean(p, t), floor: (t) => M.cbFloor(t), minimiser: (t) => (t > 0 && t < 1 ? t : NaN)}"
    ),
)

# --- Likelihoods with a learned scale or shape: two parameters per pixel (`aelab.losses`), true
# densities in nats (nothing left out), trained through autograd (no fused head).

GAUSSIAN_FLOOR = LOG_SCALE_MIN + HALF_LOG_TWO_PI  # nats per pixel: mean = target, sigma at its bound
LAPLACE_FLOOR = LOG_SCALE_MIN + math.log(2.0)


def _scale_minimum(floor: float, what: str) -> Callable[[Sequence[float]], str]:
    text = (
        f"prediction = target with {what} at its lower bound e^{LOG_SCALE_MIN:g}: a density, so the NLL "
        f"goes below zero, down to {floor:.3f} nats per pixel"
    )
    return _same_minimum(text)


def _gaussian_shared(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return gaussian_at_best_scale(mean, target, shared=True)


def _gaussian_per_pixel(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return gaussian_at_best_scale(mean, target, shared=False)


def _laplace_shared(location: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return laplace_at_best_scale(location, target, shared=True)


def _laplace_per_pixel(location: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return laplace_at_best_scale(location, target, shared=False)


# One element's loss at its best scale, for the loss explorer: the scale is the error itself,
# bounded below as in training.
_GAUSSIAN_JS = (
    "{{nll: (t, p) => {{ const e = Math.abs(p - t), s = Math.max(e, Math.exp({bound})); "
    "return 0.5 * (e / s) * (e / s) + Math.log(s) + 0.5 * Math.log(2 * Math.PI); }}, "
    "floor: (t) => {floor!r}, minimiser: (t) => t}}"
)
_LAPLACE_JS = (
    "{{nll: (t, p) => {{ const e = Math.abs(p - t), s = Math.max(e, Math.exp({bound})); "
    "return e / s + Math.log(s) + Math.log(2); }}, floor: (t) => {floor!r}, minimiser: (t) => t}}"
)

GAUSSIAN = Likelihood(
    name="gaussian",
    distribution="Gaussian with mean p and one learned standard deviation shared by every pixel (Rybkin et al. 2021)",
    nll_from_logits=gaussian_from_logits,
    nll_from_pixels=gaussian_from_pixels,
    mean_from_logits=location_from_logits,
    mean_from_pixels=location_from_pixels,
    floor=constant_floor(GAUSSIAN_FLOOR),
    nll_from_mean=_gaussian_shared,
    parameters_per_pixel=2,
    shared_parameters=1,
    minimum_text=_scale_minimum(GAUSSIAN_FLOOR, "sigma"),
    prediction_words="gaussian scores a prediction at its best sigma, the root of its mean squared error",
    unit="nats",
    javascript=_GAUSSIAN_JS.format(bound=LOG_SCALE_MIN, floor=GAUSSIAN_FLOOR),
)
GAUSSIAN_PIXEL = Likelihood(
    name="gaussian-pixel",
    distribution="Gaussian with mean p and a learned standard deviation per pixel, decoded (Rybkin et al. 2021)",
    nll_from_logits=gaussian_from_logits,
    nll_from_pixels=gaussian_from_pixels,
    mean_from_logits=location_from_logits,
    mean_from_pixels=location_from_pixels,
    floor=constant_floor(GAUSSIAN_FLOOR),
    nll_from_mean=_gaussian_per_pixel,
    parameters_per_pixel=2,
    minimum_text=_scale_minimum(GAUSSIAN_FLOOR, "each pixel's sigma"),
    prediction_words="gaussian-pixel scores each pixel at its best sigma, its own error",
    unit="nats",
    javascript=_GAUSSIAN_JS.format(bound=LOG_SCALE_MIN, floor=GAUSSIAN_FLOOR),
)
LAPLACE = Likelihood(
    name="laplace",
    distribution="Laplace with location p and one learned scale shared by every pixel",
    nll_from_logits=laplace_from_logits,
    nll_from_pixels=laplace_from_pixels,
    mean_from_logits=location_from_logits,
    mean_from_pixels=location_from_pixels,
    floor=constant_floor(LAPLACE_FLOOR),
    nll_from_mean=_laplace_shared,
    parameters_per_pixel=2,
    shared_parameters=1,
    minimum_text=_scale_minimum(LAPLACE_FLOOR, "the scale"),
    prediction_words="laplace scores a prediction at its best scale, its mean absolute error",
    unit="nats",
    dimming_note="the Laplace's location is each pixel's median, which is black on mostly-black images",
    javascript=_LAPLACE_JS.format(bound=LOG_SCALE_MIN, floor=LAPLACE_FLOOR),
)
LAPLACE_PIXEL = Likelihood(
    name="laplace-pixel",
    distribution="Laplace with location p and a learned scale per pixel, from the decoder",
    nll_from_logits=laplace_from_logits,
    nll_from_pixels=laplace_from_pixels,
    mean_from_logits=location_from_logits,
    mean_from_pixels=location_from_pixels,
    floor=constant_floor(LAPLACE_FLOOR),
    nll_from_mean=_laplace_per_pixel,
    parameters_per_pixel=2,
    minimum_text=_scale_minimum(LAPLACE_FLOOR, "each pixel's scale"),
    prediction_words="laplace-pixel scores each pixel at its best scale, its own absolute error",
    unit="nats",
    dimming_note="the Laplace's location is each pixel's median, which is black on mostly-black images",
    javascript=_LAPLACE_JS.format(bound=LOG_SCALE_MIN, floor=LAPLACE_FLOOR),
)
BETA = Likelihood(
    name="beta",
    distribution=(
        f"Beta with mean p and a learned concentration kappa per pixel (alpha = p kappa, beta = (1 - p) kappa), "
        f"on targets squeezed into [{BETA_EDGE:g}, 1 - {BETA_EDGE:g}]"
    ),
    nll_from_logits=beta_from_logits,
    nll_from_pixels=beta_from_pixels,
    mean_from_logits=location_from_logits,
    mean_from_pixels=location_from_pixels,
    floor=None,  # it sits at the concentration's upper bound and depends on the target: not computed
    nll_from_mean=beta_at_best_concentration,
    support="unit",
    parameters_per_pixel=2,
    needs_unit_targets=True,
    minimum_text=_same_minimum(
        "prediction = target with the concentration at its upper bound e^9: a density, so the NLL goes "
        "below zero (no floor computed)"
    ),
    prediction_words="beta scores a prediction at its best concentration, searched within its bounds",
    unit="nats",
    javascript=(
        f"{{nll: (t, p) => M.betaAtBest(p, t, {LOG_CONCENTRATION_MIN!r}, {LOG_CONCENTRATION_MAX!r}, {BETA_EDGE!r}, "
        f"{BETA_MEAN_EDGE!r}), floor: (t) => NaN, minimiser: (t) => t}}"
    ),
)

LIKELIHOODS: dict[str, Likelihood] = {
    record.name: record for record in (BCE, MSE, MAE, CB, GAUSSIAN, GAUSSIAN_PIXEL, LAPLACE, LAPLACE_PIXEL, BETA)
}


def get_likelihood(name: str) -> Likelihood:
    """The record called `name`; a ConfigError listing the valid names for any other name."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]


__all__ = ["LIKELIHOODS", "SUPPORTS", "Head", "Likelihood", "get_likelihood"]
