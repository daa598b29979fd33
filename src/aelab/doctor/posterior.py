"""The doctor's VAE checks: posterior collapse, KL vanishing after warm-up, log-variance blow-up.

They read a posterior's statistics on the probe batch (`PosteriorStats`, from the means and
log-variances an encoder gives: an aelab VAE's `posterior`, or a user VAE's (recon, mu, logvar)
found by `posterior_in`), plus, during training, the history of val_kl.

Posterior collapse (Bowman et al. 2016; Lucas et al. 2019, "Don't blame the ELBO!"): q(z|x)
equals the prior for every input, so the code carries nothing and the decoder draws the same
picture whatever the input. Its classic causes: a reconstruction term averaged over pixels
against a KL summed over dimensions (Keras' mean BCE, `F.mse_loss`'s default mean: the KL then
weighs D times what it should, 784 times on MNIST), a beta above 1, and no KL warm-up with a
decoder strong enough to ignore the code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aelab.evaluate.variational import ACTIVE_UNIT_VARIANCE
from aelab.findings import Finding
from aelab.losses import gaussian_kl

# nats per image: a code whose KL to the prior is under 1 nat carries under 1.44 bits about its
# input, too little to tell three inputs apart
KL_NEAR_ZERO = 1.0
VANISHED_SHARE = 0.1  # the KL fell below this share of its peak after the warm-up
LOG_VARIANCE_LIMIT = 15.0  # |log-variance| beyond this: variances of e^15 (3e6) or e^-15 (3e-7)

POSTERIOR_IDS = ("posterior-collapse", "kl-vanishing", "log-variance-blowup")
MEAN_NAMES = ("mu", "mean", "z_mean", "loc")
LOG_VARIANCE_NAMES = ("logvar", "log_var", "log_variance", "z_log_var", "logvariance")


@dataclass(frozen=True)
class PosteriorStats:
    """A posterior's statistics on some images: KL per latent dimension (nats, mean over
    images), active units (Burda et al. 2016), the log-variances' extremes."""

    images: int
    kl_per_dim: list[float]
    active_units: int
    log_variance_min: float
    log_variance_max: float

    @property
    def latent_dim(self) -> int:
        return len(self.kl_per_dim)

    @property
    def kl(self) -> float:
        return sum(self.kl_per_dim)

    def summary(self) -> dict[str, float]:
        """Numbers for a metrics row."""
        return {
            "doctor_kl": self.kl,
            "doctor_active_units": self.active_units,
            "doctor_log_variance_max": self.log_variance_max,
        }


def posterior_stats(mean: torch.Tensor, log_variance: torch.Tensor) -> PosteriorStats:
    """Statistics of a posterior given as means and log-variances (N, L)."""
    mean, log_variance = mean.detach().double(), log_variance.detach().double()
    spread = mean.var(dim=0) if mean.shape[0] > 1 else torch.zeros(mean.shape[1], dtype=mean.dtype)
    return PosteriorStats(
        images=mean.shape[0],
        kl_per_dim=gaussian_kl(mean, log_variance).mean(dim=0).tolist(),
        active_units=int((spread > ACTIVE_UNIT_VARIANCE).sum()),
        log_variance_min=float(log_variance.min()),
        log_variance_max=float(log_variance.max()),
    )


def posterior_in(output: Any, reconstruction: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, log-variance) among a user VAE's outputs: of a dict (or dataclass, named tuple),
    the items named like MEAN_NAMES and LOG_VARIANCE_NAMES; of a tuple or list, the first two
    tensors after the reconstruction of one shape (B, L) (pytorch/examples' (recon, mu, logvar)).
    None when there are none."""
    import dataclasses

    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    elif isinstance(output, tuple) and hasattr(output, "_asdict"):
        output = output._asdict()
    if isinstance(output, Mapping):
        names = {str(key).lower(): value for key, value in output.items()}
        mean = next((names[n] for n in MEAN_NAMES if n in names), None)
        log_variance = next((names[n] for n in LOG_VARIANCE_NAMES if n in names), None)
        tensors = isinstance(mean, torch.Tensor) and isinstance(log_variance, torch.Tensor)
        if tensors and mean.shape == log_variance.shape and mean.ndim == 2:
            return mean, log_variance
        return None
    if not isinstance(output, (tuple, list)):
        return None
    rest = [item for item in output if isinstance(item, torch.Tensor) and item is not reconstruction]
    pairs = [item for item in rest if item.ndim == 2]
    if len(pairs) >= 2 and pairs[0].shape == pairs[1].shape:
        return pairs[0], pairs[1]
    return None


def _cause_text(context: Mapping[str, Any]) -> str:
    beta = context.get("beta")
    pixels = context.get("pixels")
    if context.get("summed_reconstruction"):
        # aelab's own VAE: the reconstruction is summed over pixels, so that cause is ruled out
        said = "here the reconstruction is summed over pixels, as the ELBO wants"
        if beta is not None:
            said += f", so the KL's weight is beta = {beta:g}"
        if beta is not None and beta > 1:
            said += ", above 1: the KL is asked to weigh more than the ELBO gives it"
        return said
    width = f"{pixels} times" if pixels else "D times (the pixel count)"
    return (
        "check how the two terms are reduced: a reconstruction averaged over pixels (Keras' mean binary "
        "cross-entropy, F.mse_loss's default) against a KL summed over latent dimensions gives the KL "
        f"{width} its weight"
    )


def posterior_findings(
    stats: PosteriorStats,
    context: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    epoch: int | None = None,
) -> list[Finding]:
    """Findings about a VAE's posterior. context: what the run says about the objective (beta,
    kl_warmup_epochs, pixels, summed_reconstruction: aelab's own objective, setting: how a fix
    names a setting); history: metrics rows with val_kl, for the vanishing check; epoch: the epoch
    the findings are seen at (None: not in training)."""
    context = context or {}
    setting = context.get("setting") or (lambda key, value=None: key if value is None else f"{key}: {value}")
    found: list[Finding] = []
    if not all(math.isfinite(v) for v in (stats.kl, stats.log_variance_min, stats.log_variance_max)):
        return found  # the non-finite check speaks for it
    evidence = {
        "kl": round(stats.kl, 4),
        "active_units": stats.active_units,
        "latent_dim": stats.latent_dim,
        "images": stats.images,
    }
    if stats.kl < KL_NEAR_ZERO or stats.active_units == 0:
        warmup = context.get("kl_warmup_epochs")
        fixes = []
        if context.get("summed_reconstruction"):
            if (context.get("beta") or 1.0) > 1:
                fixes.append(f"lower {setting('train.beta', '1')}")
            if not warmup:
                fixes.append(f"warm the KL up ({setting('train.kl_warmup_epochs', '10')})")
            fixes.append(f"keep a few nats per dimension ({setting('train.free_bits', '0.1')})")
        else:
            fixes.append("sum the reconstruction over pixels (reduction='sum' over pixels, then mean over the batch)")
            fixes.append("warm the KL weight up from near 0 over the first epochs, or use free bits")
        found.append(
            Finding(
                id="posterior-collapse",
                severity="error",
                title=(
                    f"posterior collapse: {stats.active_units} of {stats.latent_dim} latent units active, "
                    f"KL {stats.kl:.3f} nats per image"
                ),
                evidence=evidence,
                explanation=(
                    f"The encoder's posterior q(z|x) is about the prior N(0, 1) for every input: the KL to the prior "
                    f"is {stats.kl:.3f} nats per image (under {KL_NEAR_ZERO:g}: the code cannot tell even three inputs "
                    f"apart); {stats.active_units} of {stats.latent_dim} dimensions' "
                    f"means vary across images by more than {ACTIVE_UNIT_VARIANCE} (Burda et al.'s active units). So "
                    "the code carries almost nothing and the decoder draws about the same picture whatever the "
                    f"input. The KL term won against the reconstruction: {_cause_text(context)}."
                ),
                fix="; ".join(fixes),
            )
        )
    warmup = int(context.get("kl_warmup_epochs") or 0)
    kls = [float(row["val_kl"]) for row in history if "val_kl" in row]
    if warmup and len(kls) > warmup:
        peak = max(kls[:warmup]) if kls[:warmup] else 0.0
        last = kls[-1]
        if peak > KL_NEAR_ZERO and last < VANISHED_SHARE * peak:
            found.append(
                Finding(
                    id="kl-vanishing",
                    severity="warning",
                    title=f"the KL vanished after the warm-up: {peak:.2f} -> {last:.3f} nats per image",
                    evidence={"kl_peak_during_warmup": round(peak, 4), "kl_now": round(last, 4), "warmup": warmup},
                    explanation=(
                        f"During the KL warm-up ({warmup} epochs) the codes carried up to {peak:.2f} nats per image; "
                        f"once the KL had its full weight they fell to {last:.3f}: the posterior is collapsing onto "
                        "the prior as the KL's weight grows."
                    ),
                    fix=(
                        f"keep a floor per dimension ({setting('train.free_bits', '0.1')}), a longer warm-up, "
                        f"or a lower {setting('train.beta')}"
                    ),
                )
            )
    extreme = max(abs(stats.log_variance_min), abs(stats.log_variance_max))
    if extreme > LOG_VARIANCE_LIMIT:
        found.append(
            Finding(
                id="log-variance-blowup",
                severity="warning",
                title=(f"posterior log-variances reach {stats.log_variance_min:.1f} .. {stats.log_variance_max:.1f}"),
                evidence={
                    "log_variance_min": round(stats.log_variance_min, 3),
                    "log_variance_max": round(stats.log_variance_max, 3),
                    "limit": LOG_VARIANCE_LIMIT,
                },
                explanation=(
                    f"A log-variance beyond +-{LOG_VARIANCE_LIMIT:g} is a variance of e^{LOG_VARIANCE_LIMIT:g} "
                    "(3 million) or its inverse: exp() of it overflows float32 soon after, the reparameterised "
                    "codes become huge or the KL's log term dominates, and training turns to NaN. It follows a "
                    "learning rate too high for the log-variance head, or a KL term with too little weight to "
                    "hold the variances near 1."
                ),
                fix="lower the learning rate, or clamp the log-variance head's output (e.g. to [-10, 10])",
            )
        )
    return [Finding(**{**finding.to_dict(), "epoch": epoch}) for finding in found]


def vae_context(config: Any, pixels: int, setting: Any = None) -> dict[str, Any]:
    """The context `posterior_findings` reads, for an aelab VAE run of RunConfig `config`."""
    return {
        "beta": config.train.beta,
        "kl_warmup_epochs": config.train.kl_warmup_epochs,
        "pixels": pixels,
        "summed_reconstruction": True,
        "setting": setting,
    }
