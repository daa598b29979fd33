"""A VAE's validation metrics, on one honest scale: nats per image for every term, an
importance-weighted NLL with its number of samples recorded, and bits per dimension on
uniformly dequantised 8-bit pixels where the likelihood is a density.

`evaluate` (`aelab.evaluate.validation`) adds these to a VAE's row; they are not computed on
their own. Every draw comes from a generator seeded with EVAL_SEED for each evaluation, so an
evaluation is a function of the weights: the same model scores the same digits every time,
and evaluating never disturbs a run's own generators.

Keys (metrics.jsonl): every epoch
    val_elbo          the ELBO, nats per image (one code drawn per image; the KL in closed form)
    val_recon         its reconstruction term, -E_q log p(x|z), nats per image
    val_kl            its KL term, KL(q(z|x) || N(0, I)) summed over dimensions, nats per image
    val_kl_per_dim    the KL of each latent dimension (a list), nats per image
    val_active_units  dimensions whose posterior mean varies across images by more than
                      ACTIVE_UNIT_VARIANCE (Burda et al. 2016)
and on the last epoch (full=True)
    val_nll           the IWAE estimate of -log p(x), nats per image, with
    val_nll_samples   K, the samples per image it used
    val_bpd           bits per dimension of the dequantised 8-bit pixels (NaN where
                      `bpd_problem` gives a reason)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aelab.evaluate.validation import Validation
from aelab.likelihoods import Likelihood
from aelab.nn.variational import VariationalAutoencoder, elbo_terms, importance_weighted_nll

EVAL_SEED = 20260  # the evaluation's own draws
IWAE_SAMPLES = 100  # K for val_nll and val_bpd
# Burda, Grosse & Salakhutdinov 2016, section 5.2: a unit is active when Cov_x(E_q[z_j]) > 0.01.
ACTIVE_UNIT_VARIANCE = 0.01
EIGHT_BIT_LEVELS = 256

CHEAP_VARIATIONAL_METRICS = ("val_elbo", "val_recon", "val_kl", "val_kl_per_dim", "val_active_units")
FULL_VARIATIONAL_METRICS = ("val_nll", "val_nll_samples", "val_bpd")


def bpd_problem(likelihood: Likelihood, validation: Validation) -> str | None:
    """Why bits per dimension on dequantised 8-bit pixels cannot be given for this likelihood
    on these targets, or None when it can: the likelihood must be a density (its record's
    support "unit" or "real") and the targets 8-bit grey levels (stored as uint8, scaled by
    1/255, not binarised)."""
    if likelihood.support == "binary":
        return (
            f"{likelihood.name} is a probability mass on {{0, 1}}, not a density on [0, 1]: it has no bits per "
            "dimension on grey pixels; train on binarised data (data.binarize) and read its val_nll"
        )
    eight_bit = validation.stored.dtype == torch.uint8 and abs(validation.scale * 255 - 1) < 1e-9
    if not eight_bit:
        return "the targets are not 8-bit grey levels (binarised, or not stored as uint8 / 255)"
    return None


def _active_units(means: torch.Tensor) -> int:
    if means.shape[0] < 2:
        return 0
    return int((means.double().var(dim=0) > ACTIVE_UNIT_VARIANCE).sum())


def dequantised(stored: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """8-bit levels (B, ...) as floats in [0, 1): (level + u) / 256, u ~ U(0, 1) drawn from
    `generator` (Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models")."""
    noise = torch.rand(stored.shape, generator=generator, device=stored.device)
    return (stored.float() + noise) / EIGHT_BIT_LEVELS


def bits_per_dimension(nll_nats: torch.Tensor, pixels: int) -> torch.Tensor:
    """-log p of dequantised pixels in [0, 1] (nats per image) as bits per dimension of the
    8-bit data: the density on [0, 256) is 256^-D times the one on [0, 1), so
    bpd = nll / (D ln 2) + log2(256). A uniform density scores exactly 8."""
    return nll_nats / (pixels * math.log(2)) + math.log2(EIGHT_BIT_LEVELS)


@torch.no_grad()
def variational_metrics(
    model: VariationalAutoencoder,
    likelihood: Likelihood,
    validation: Validation,
    *,
    full: bool,
    samples: int = IWAE_SAMPLES,
) -> dict[str, Any]:
    """The VAE metrics of the module docstring for `model` on `validation` (the model must be
    in eval mode already; `evaluate` sees to it)."""
    generator = torch.Generator(device=validation.device).manual_seed(EVAL_SEED)
    count = validation.count
    recon = 0.0
    kl_per_dim = None
    means = []
    for _, targets in validation.chunks():
        terms = elbo_terms(model, likelihood, targets, generator)
        recon += float(terms.recon.sum(dtype=torch.float64))
        kl = terms.kl.sum(dim=0, dtype=torch.float64)
        kl_per_dim = kl if kl_per_dim is None else kl_per_dim + kl
        means.append(terms.mean)
    assert kl_per_dim is not None
    per_dim = (kl_per_dim / count).tolist()
    metrics: dict[str, Any] = {
        "val_elbo": -(recon / count + sum(per_dim)),
        "val_recon": recon / count,
        "val_kl": sum(per_dim),
        "val_kl_per_dim": per_dim,
        "val_active_units": _active_units(torch.cat(means)),
    }
    if not full:
        return metrics
    nll = 0.0
    for _, targets in validation.chunks():
        values, _ = importance_weighted_nll(model, likelihood, targets, generator, samples)
        nll += float(values.sum(dtype=torch.float64))
    metrics["val_nll"] = nll / count
    metrics["val_nll_samples"] = samples
    metrics["val_bpd"] = math.nan
    if bpd_problem(likelihood, validation) is None:
        pixels = validation.stored[0].numel()
        bpd = 0.0
        for start in range(0, count, validation.chunk):
            targets = dequantised(validation.stored[start : start + validation.chunk], generator)
            values, _ = importance_weighted_nll(model, likelihood, targets, generator, samples)
            bpd += float(bits_per_dimension(values, pixels).sum(dtype=torch.float64))
        metrics["val_bpd"] = bpd / count
    return metrics
