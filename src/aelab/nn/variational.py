"""Variational autoencoders (Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014):
a Gaussian encoder q(z|x) = N(mean, diag(exp(log_variance))), a standard normal prior p(z) and
a decoder that gives the likelihood's parameters per pixel, p(x|z).

Every number here is in nats per image: the reconstruction term is the likelihood's negative
log-density summed over pixels (its `nll`, a mean over pixels, times the pixel count, plus its
`density_constant` per pixel), so the ELBO is a bound on log p(x) whatever the likelihood.

A VAE is an `Autoencoder`: `encode` gives the posterior mean (the code shown, probed and
plotted), `forward` decodes that mean (the reconstruction every equal-footing metric scores)
and `pixels` is the likelihood's mean. What differs is `posterior` (mean, log-variance) and the
random draw of the code, which always comes from a generator the caller owns (a run's
`RunState.sample_generator`, saved in its checkpoint), never from torch's global one.

`build_model` (`aelab.nn.models`) builds these when `model.variational` is true, from
VARIATIONAL_MODELS by `model.kind`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from aelab.config import ModelConfig
from aelab.errors import ConfigError
from aelab.likelihoods import Likelihood
from aelab.losses import gaussian_kl
from aelab.nn.models import Autoencoder, conv_decode, conv_decoder, conv_encode, conv_encoder

LOG_TWO_PI = math.log(2 * math.pi)


class VariationalAutoencoder(Autoencoder):
    """What every aelab VAE offers besides `Autoencoder`'s methods: `posterior(images)` ->
    (mean, log_variance), each (B, latent_dim). `parameters_per_pixel` is the number of
    output values per pixel its decoder makes (the likelihood's), so decoder logits are
    (B, parameters_per_pixel * C, H, W)."""

    parameters_per_pixel: int = 1

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.posterior(images)[0]  # the posterior mean: (B, latent_dim)

    def decode_shape(self, batch: int) -> tuple[int, ...]:
        channels, height, width = self.image_shape
        return (batch, self.parameters_per_pixel * channels, height, width)


class DenseVAE(VariationalAutoencoder):
    """Fully connected: D -> hidden_dims... -> (mean, log-variance) of latent_dim ->
    reversed(hidden_dims)... -> parameters_per_pixel * D. With hidden_dims (400,), latent_dim
    20 and relu this is pytorch/examples' VAE (fc1, fc21, fc22, fc3, fc4)."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], parameters_per_pixel: int = 1) -> None:
        super().__init__()
        self._setup_activations(config)
        self.image_shape = image_shape
        self.parameters_per_pixel = self.output_values = parameters_per_pixel  # loss_input reads output_values
        pixels = math.prod(image_shape)
        dims = [pixels, *config.hidden_dims]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.to_mean = nn.Linear(dims[-1], config.latent_dim)
        self.to_log_variance = nn.Linear(dims[-1], config.latent_dim)
        decoder_dims = [config.latent_dim, *reversed(dims[1:]), pixels * parameters_per_pixel]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(decoder_dims))

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = images.flatten(1)  # (B, D)
        for layer in self.encoder:
            hidden = self.hidden_activation(layer(hidden))
        return self.to_mean(hidden), self.to_log_variance(hidden)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        hidden = codes
        last = len(self.decoder) - 1
        for index, layer in enumerate(self.decoder):
            hidden = layer(hidden)
            if index < last:
                hidden = self.hidden_activation(hidden)
        return hidden.view(self.decode_shape(codes.shape[0]))  # logits


class ConvVAE(VariationalAutoencoder):
    """Stride-2 convolutions (one per entry of hidden_dims, as channel counts), linear mean and
    log-variance heads, and transposed convolutions back to the input's size with
    parameters_per_pixel * C output channels."""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int], parameters_per_pixel: int = 1) -> None:
        super().__init__()
        self._setup_activations(config)
        self.image_shape = image_shape
        self.parameters_per_pixel = self.output_values = parameters_per_pixel  # loss_input reads output_values
        self.encoder, self.bottom_shape = conv_encoder(config, image_shape)
        bottom = math.prod(self.bottom_shape)
        self.to_mean = nn.Linear(bottom, config.latent_dim)
        self.to_log_variance = nn.Linear(bottom, config.latent_dim)
        self.from_code = nn.Linear(config.latent_dim, bottom)
        self.decoder = conv_decoder(config, image_shape, parameters_per_pixel)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = conv_encode(self, images)
        return self.to_mean(hidden), self.to_log_variance(hidden)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return conv_decode(self, codes)  # logits (B, parameters_per_pixel * C, H, W)


VariationalBuilder = Callable[[ModelConfig, tuple[int, int, int], int], VariationalAutoencoder]

# The VAE of each model kind: (config, image_shape, parameters_per_pixel) -> model.
VARIATIONAL_MODELS: dict[str, VariationalBuilder] = {"dense": DenseVAE, "conv": ConvVAE}


def build_variational(
    config: ModelConfig, image_shape: tuple[int, int, int], values: int = 1
) -> VariationalAutoencoder:
    """The VAE of `config.kind` whose decoder gives `values` values per pixel (the likelihood's
    `decoded_parameters`; its shared ones are the model's `likelihood_parameters`, added by
    `aelab.nn.models.build_model`)."""
    if config.kind not in VARIATIONAL_MODELS:
        raise ConfigError(
            f"model.kind {config.kind!r} has no variational form; valid with model.variational: "
            f"{', '.join(VARIATIONAL_MODELS)}"
        )
    return VARIATIONAL_MODELS[config.kind](config, image_shape, values)


def is_variational(model: torch.nn.Module) -> bool:
    return isinstance(model, VariationalAutoencoder)


# --- The terms of the ELBO, in nats per image.


def sample_codes(
    mean: torch.Tensor, log_variance: torch.Tensor, generator: torch.Generator, samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reparameterisation (Kingma & Welling 2014): z = mean + exp(log_variance / 2) * eps,
    eps ~ N(0, 1) drawn from `generator`. Returns (z, eps): (B, L) each, or (samples, B, L)
    when `samples` is given."""
    shape = mean.shape if samples is None else (samples, *mean.shape)
    noise = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * log_variance).exp() * noise, noise


def reconstruction_nats(
    model: Autoencoder, likelihood: Likelihood, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """-log p(targets | decoder output) per image in nats, summed over pixels (B,): the
    likelihood's mean-over-pixels NLL times the pixel count, plus its density constant per
    pixel. Whatever the likelihood: it is asked, never named."""
    output, from_logits = model.loss_input(logits)
    pixels = targets[0].numel()
    return (likelihood.nll(output, targets, logits=from_logits) + likelihood.density_constant) * pixels


@dataclass
class ElboTerms:
    """One draw of the ELBO's terms for a batch: recon (B,), -log p(x|z) in nats per image;
    kl (B, L), KL(q(z|x) || p(z)) per latent dimension in nats; mean and log_variance (B, L)."""

    recon: torch.Tensor
    kl: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor

    @property
    def negative_elbo(self) -> torch.Tensor:
        """-ELBO per image (B,), nats: recon + KL summed over dimensions."""
        return self.recon + self.kl.sum(dim=1)


def elbo_terms(
    model: VariationalAutoencoder, likelihood: Likelihood, images: torch.Tensor, generator: torch.Generator
) -> ElboTerms:
    """The ELBO's terms for float images (B, C, H, W) with one code drawn per image from
    `generator`; the KL is the closed form against N(0, 1)."""
    mean, log_variance = model.posterior(images)
    codes, _ = sample_codes(mean, log_variance, generator)
    recon = reconstruction_nats(model, likelihood, model.decode(codes), images)
    return ElboTerms(recon, gaussian_kl(mean, log_variance), mean, log_variance)


def kl_weight(beta: float, warmup_epochs: int, epoch: int) -> float:
    """The KL term's weight in epoch `epoch` (1, 2, ...): beta * min(1, epoch / warmup_epochs),
    or beta without warm-up (Bowman et al. 2016, "Generating sentences from a continuous
    space"). It never starts at 0, so the first epoch's log-variances are held in check."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)


def training_objective(terms: ElboTerms, weight: float, free_bits: float) -> torch.Tensor:
    """The mean over the batch of recon + weight * KL, nats per image. free_bits > 0: each latent
    dimension's KL, averaged over the batch, counts as at least `free_bits` nats (Kingma et al.
    2016, "Improved variational inference with inverse autoregressive flow"): a dimension whose
    KL is below that gets no gradient pulling it to the prior. A scalar."""
    per_dimension = terms.kl.mean(dim=0)  # (L,)
    if free_bits > 0:
        per_dimension = per_dimension.clamp_min(free_bits)
    return terms.recon.mean() + weight * per_dimension.sum()


@torch.no_grad()
def importance_weighted_nll(
    model: VariationalAutoencoder,
    likelihood: Likelihood,
    images: torch.Tensor,
    generator: torch.Generator,
    samples: int,
    codes_per_pass: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Burda, Grosse & Salakhutdinov's IWAE estimate ("Importance weighted autoencoders", ICLR
    2016) of -log p(x) per image with `samples` = K codes drawn from q(z|x):

        -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

    an upper bound on the NLL in expectation that falls towards it as K grows. Also returns the
    K-sample estimate of -ELBO from the same draws, the mean over k of -log w_k; by Jensen's
    inequality the IWAE value is never above it, draw by draw. Both (B,), nats per image.
    Batched: the decoder sees about `codes_per_pass` codes at a time, K per image."""
    images_per_pass = max(1, codes_per_pass // samples)
    nll, negative_elbo = [], []
    for start in range(0, images.shape[0], images_per_pass):
        x = images[start : start + images_per_pass]  # (B, C, H, W)
        mean, log_variance = model.posterior(x)
        codes, noise = sample_codes(mean, log_variance, generator, samples)  # (K, B, L)
        batch, latent = mean.shape
        logits = model.decode(codes.reshape(samples * batch, latent))
        targets = x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * batch, *x.shape[1:])
        log_likelihood = -reconstruction_nats(model, likelihood, logits, targets).view(samples, batch)
        log_prior = -0.5 * (codes.square() + LOG_TWO_PI).sum(dim=2)
        log_posterior = -0.5 * (noise.square() + log_variance + LOG_TWO_PI).sum(dim=2)
        log_weights = log_likelihood + log_prior - log_posterior  # (K, B)
        nll.append(math.log(samples) - torch.logsumexp(log_weights, dim=0))
        negative_elbo.append(-log_weights.mean(dim=0))
    return torch.cat(nll), torch.cat(negative_elbo)


# --- Generation: what the report shows of a VAE. Pixels are always the likelihood's mean.


@torch.no_grad()
def _pixels_of_codes(model: VariationalAutoencoder, codes: torch.Tensor) -> torch.Tensor:
    return model.pixels(model.decode(codes))


@torch.no_grad()
def prior_samples(model: VariationalAutoencoder, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` images decoded from codes drawn from the prior N(0, I): (count, C, H, W) pixels."""
    latent = model.to_mean.out_features  # type: ignore[union-attr]
    device = next(model.parameters()).device
    codes = torch.randn(count, latent, generator=generator, device=device)
    return _pixels_of_codes(model, codes)


@torch.no_grad()
def interpolations(model: VariationalAutoencoder, images: torch.Tensor, steps: int) -> torch.Tensor:
    """For consecutive pairs of `images` (2P, C, H, W), the pixels decoded along the straight
    line between their posterior means, `steps` points from one to the other: (P, steps, C, H, W)."""
    means = model.encode(images)  # (2P, L)
    start, end = means[0::2], means[1::2]
    weights = torch.linspace(0, 1, steps, device=means.device)[None, :, None]  # (1, steps, 1)
    codes = start[:, None] + weights * (end - start)[:, None]  # (P, steps, L)
    pairs = codes.shape[0]
    return _pixels_of_codes(model, codes.reshape(pairs * steps, -1)).view(pairs, steps, *images.shape[1:])


@torch.no_grad()
def manifold_grid(model: VariationalAutoencoder, side: int) -> torch.Tensor:
    """The 2-D latent manifold (Kingma & Welling 2014, figure 4; the Keras VAE example): codes
    on a side x side grid of the prior's quantiles 0.05 .. 0.95 in each dimension, decoded:
    (side, side, C, H, W) pixels, first dimension across, second upwards. Needs latent_dim 2."""
    device = next(model.parameters()).device
    quantiles = torch.linspace(0.05, 0.95, side, device=device)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    rows, columns = torch.meshgrid(values.flip(0), values, indexing="ij")  # top row: the largest z_2
    codes = torch.stack([columns.reshape(-1), rows.reshape(-1)], dim=1)
    pixels = _pixels_of_codes(model, codes)
    return pixels.view(side, side, *pixels.shape[1:])


__all__ = [
    "VARIATIONAL_MODELS",
    "ConvVAE",
    "DenseVAE",
    "ElboTerms",
    "VariationalAutoencoder",
    "build_variational",
    "elbo_terms",
    "importance_weighted_nll",
    "interpolations",
    "is_variational",
    "kl_weight",
    "manifold_grid",
    "prior_samples",
    "reconstruction_nats",
    "sample_codes",
    "training_objective",
]
