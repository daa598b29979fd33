"""Checks made before training, from the loss, the output activation and the data alone.

Each check returns a `Finding` whose explanation is built from the numbers it measured on the
targets (and, where a model exists, on its output at initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aelab.findings import Finding
from aelab.likelihoods import get_likelihood
from aelab.losses import EPSILON, bce_floor
from aelab.nn.activations import ACTIVATIONS

SOFTMAX_SUM_TOLERANCE = 1e-3  # a reconstruction "sums to one" within this

# How a fix names a change to an aelab setting: (config key, value or None) -> words. The
# library speaks of config keys; the command line passes one that names its flags.
Setting = Callable[[str, "str | None"], str]


def config_setting(key: str, value: str | None = None) -> str:
    """A setting in config-key terms: "model.output_activation: sigmoid"."""
    return key if value is None else f"{key}: {value}"


@dataclass(frozen=True)
class Setup:
    """What the pre-training checks look at.

    loss: the training loss's name.
    output_activation: the model's output activation (a key of `aelab.nn.activations.ACTIVATIONS`), or None when
        unknown (a user model whose last step could not be identified).
    targets: (N, ...) the images the model must reconstruct, as the model sees them.
    code_width / input_width: values per sample in the narrowest layer and in the input.
    code_name: where the code is ("latent_dim", or a layer name for user models).
    pixels: (N, ...) the model's output pixels on `targets` at this point, or None.
    setting: how fixes name aelab's settings (config keys, or the command line's flags); None
        for a model aelab did not build, whose fixes then name no aelab setting.
    raw_divisor: what data.scale "auto" would divide these pixels by (255 for 8-bit images),
        when data.scale "none" kept them raw; None otherwise.
    constrained: the run trains with a constraint that stops a wide code from copying its input
        (input noise, a sparsity or contractive penalty: `aelab.regularizers`).
    """

    loss: str
    output_activation: str | None
    targets: torch.Tensor
    code_width: int | None
    input_width: int
    code_name: str = "latent_dim"
    pixels: torch.Tensor | None = None
    setting: Setting | None = config_setting
    raw_divisor: float | None = None
    constrained: bool = False


def _reads_probabilities(loss: str) -> bool:
    """Whether the loss reads every target (and prediction) as a probability in [0, 1]."""
    return get_likelihood(loss).needs_unit_targets


def _rescale_fix(setup: Setup, low: float, high: float) -> str:
    """How to bring these inputs into [0, 1]: by aelab's own scaling when a data.scale "none"
    kept 8-bit pixels raw, else by the division their values call for."""
    if setup.raw_divisor is not None and setup.setting is not None:
        return (
            f"let aelab divide the pixels by {setup.raw_divisor:g} so they lie in [0, 1] "
            f"({setup.setting('data.scale', 'auto')})"
        )
    whole = bool((setup.targets == setup.targets.round()).all())
    if low >= 0 and whole and 128 <= high <= 255:
        how, example = "divide them by 255 (whole numbers up to 255: 8-bit pixels)", "x = x / 255"
    elif low >= 0:
        how, example = f"divide them by {high:g}, their largest value", f"x = x / {high:g}"
    else:
        how, example = f"map them with (x - {low:g}) / {high - low:g}", f"x = (x - {low:g}) / {high - low:g}"
    if setup.setting is None:
        return f"rescale the inputs to [0, 1] before they reach the model: {how} ({example})"
    return f"rescale the pixels of your data to [0, 1] before training: {how}"


def check_input_range(setup: Setup) -> list[Finding]:
    """Inputs outside [0, 1] where the loss or the output activation needs [0, 1]."""
    targets = setup.targets
    low, high = float(targets.min()), float(targets.max())
    if low >= 0 and high <= 1:
        return []
    findings = []
    mean = float(targets.mean())
    above = float((targets > 1).float().mean())
    below = float((targets < 0).float().mean())
    outside = f"{above:.1%} of the pixels are above 1" + (f" and {below:.1%} below 0" if below else "")
    evidence = {
        "input_min": low,
        "input_max": high,
        "input_mean": mean,
        "share_above_1": above,
        "share_below_0": below,
    }
    activation = setup.output_activation
    if activation is not None:
        out_low, out_high = ACTIVATIONS[activation].output_range
        if out_low > low or out_high < high:
            unreachable = float(((targets > out_high) | (targets < out_low)).float().mean())
            findings.append(
                Finding(
                    id="input-range",
                    severity="error",
                    title=f"inputs run from {low:g} to {high:g} but a {activation} output reaches only "
                    f"[{out_low:g}, {out_high:g}]",
                    evidence={
                        **evidence,
                        "output_activation": activation,
                        "output_low": finite(out_low),
                        "output_high": finite(out_high),
                        "share_unreachable": unreachable,
                    },
                    explanation=(
                        f"The model's inputs are also its targets, and they run from {low:g} to {high:g} "
                        f"(mean {mean:.4g}; {outside}). A {activation} output can only produce values in "
                        f"[{out_low:g}, {out_high:g}], so {unreachable:.1%} of the target pixels can never be "
                        f"reconstructed, whatever the weights. The first layer's weighted sums are also {high:g} "
                        f"times what they would be with the pixels divided by {high:g}."
                    ),
                    fix=_rescale_fix(setup, low, high),
                )
            )
    if _reads_probabilities(setup.loss):
        findings.append(
            Finding(
                id="bce-target-range",
                severity="error",
                title=f"{setup.loss} on targets from {low:g} to {high:g}: the loss has no floor",
                evidence={**evidence, "loss": setup.loss},
                explanation=(
                    f"{setup.loss} reads every target t as a probability in [0, 1], but here t runs from {low:g} "
                    f"to {high:g} ({outside}). For t > 1 the term -(1 - t) log(1 - p) has a negative weight, "
                    f"so the loss keeps falling as the prediction p approaches 1 and can go below zero: it no "
                    f"longer has its minimum at p = t and stops measuring how well an image is reconstructed."
                ),
                fix=_rescale_fix(setup, low, high),
            )
        )
    return findings


def check_softmax(setup: Setup) -> list[Finding]:
    """A softmax over the output with a per-pixel loss: each reconstruction must sum to one."""
    pixels = setup.pixels
    sums = pixels.flatten(1).sum(dim=1) if pixels is not None else None
    measured_softmax = (
        sums is not None
        and bool((pixels >= 0).all())
        and bool(((sums - 1).abs() < SOFTMAX_SUM_TOLERANCE).all())
        and pixels[0].numel() > 1
    )
    if setup.output_activation != "softmax" and not measured_softmax:
        return []
    count = setup.targets[0].numel()
    target_sums = setup.targets.flatten(1).sum(dim=1)
    target_sum = float(target_sums.mean())
    target_mean = float(setup.targets.mean())
    evidence = {
        "pixels_per_image": count,
        "mean_output_pixel": 1 / count,
        "target_sum_mean": target_sum,
        "target_pixel_mean": target_mean,
        "loss": setup.loss,
    }
    measured = ""
    if sums is not None:
        evidence["output_sum_mean"] = float(sums.mean())
        evidence["output_sum_max_deviation"] = float((sums - 1).abs().max())
        measured = f" (measured on {sums.shape[0]} images: {float(sums.mean()):.4f})"
    return [
        Finding(
            id="softmax-output",
            severity="error",
            title=f"softmax output: the {count} pixels of each reconstruction sum to 1, the targets to "
            f"{target_sum:.4g} on average",
            evidence=evidence,
            explanation=(
                f"A softmax over the output makes the {count} pixels of every reconstruction sum to 1"
                f"{measured}, so an average output pixel is {1 / count:.3g}, while the target images sum to "
                f"{target_sum:.4g} on average (mean pixel {target_mean:.4g}). A per-pixel loss ({setup.loss}) "
                f"scores each pixel on its own, but the softmax makes the pixels compete for one unit of mass: "
                f"raising one pixel lowers all the others, so no weights can reproduce an image whose pixels "
                f"sum to more than 1."
            ),
            fix=(
                f"use a sigmoid output (one independent value in (0, 1) per pixel"
                f"{_set(setup, 'model.output_activation', 'sigmoid', '; ')}) with bce or mse; softmax belongs to a "
                "choice among classes, not to pixels"
            ),
        )
    ]


def check_output_range(setup: Setup) -> list[Finding]:
    """An output activation whose range does not fit [0, 1] data or a probability loss."""
    activation = setup.output_activation
    targets = setup.targets
    low, high = float(targets.min()), float(targets.max())
    if activation is None or activation == "softmax" or low < 0 or high > 1:
        return []  # softmax and out-of-range inputs have their own findings
    out_low, out_high = ACTIVATIONS[activation].output_range
    evidence: dict[str, object] = {
        "output_activation": activation,
        "output_low": finite(out_low),
        "output_high": finite(out_high),
        "input_min": low,
        "input_max": high,
        "loss": setup.loss,
    }
    if _reads_probabilities(setup.loss) and (out_low < 0 or out_high > 1):
        measured = ""
        if setup.pixels is not None:
            share = float(((setup.pixels <= EPSILON) | (setup.pixels >= 1 - EPSILON)).float().mean())
            evidence["share_outputs_clipped"] = share
            measured = f" Right now {share:.1%} of the output pixels are outside ({EPSILON:g}, 1 - {EPSILON:g})."
        return [
            Finding(
                id="output-range",
                severity="error",
                title=f"{setup.loss} needs outputs in (0, 1) but a {activation} output ranges over "
                f"[{out_low:g}, {out_high:g}]",
                evidence=evidence,
                explanation=(
                    f"{setup.loss} takes the log of the prediction and of one minus it, so predictions must lie "
                    f"strictly inside (0, 1). A {activation} output ranges over [{out_low:g}, {out_high:g}]; its "
                    f"values are clipped to [{EPSILON:g}, 1 - {EPSILON:g}] before the log (as Keras does), and "
                    f"a clipped pixel passes no gradient back, so it stops learning.{measured}"
                ),
                fix=f"use a sigmoid output with {setup.loss}{_set(setup, 'model.output_activation', 'sigmoid')}, or "
                f"keep {activation} and train with mse{_set(setup, 'train.loss', 'mse')}",
            )
        ]
    if activation == "tanh":
        return [
            Finding(
                id="output-range",
                severity="warning",
                title=f"tanh output ranges over [-1, 1] but the data lies in [{low:g}, {high:g}]",
                evidence=evidence,
                explanation=(
                    f"A tanh output ranges over [-1, 1] while every target lies in [{low:g}, {high:g}]: the half "
                    f"[-1, 0) of the output range is values no pixel has, which the model must learn to avoid, "
                    f"and a background pixel of 0 sits at tanh's centre instead of at a bound."
                ),
                # aelab's data are never negative, so rescaling to [-1, 1] is advice for users' own models only
                fix=f"use a sigmoid output for [0, 1] data{_set(setup, 'model.output_activation', 'sigmoid')}"
                + (", or rescale the data to [-1, 1] (x * 2 - 1) to keep tanh" if setup.setting is None else ""),
            )
        ]
    return []


def check_bce_floor(setup: Setup) -> list[Finding]:
    """BCE on targets in [0, 1] that are not binary: allowed, but its floor is above zero."""
    targets = setup.targets
    if setup.loss != "bce" or float(targets.min()) < 0 or float(targets.max()) > 1:
        return []
    grey = float(((targets > 0) & (targets < 1)).float().mean())
    if grey == 0:
        return []
    floor = float(bce_floor(targets).mean())
    images = targets.shape[0]
    return [
        Finding(
            id="bce-floor",
            severity="info",
            title=f"bce on non-binary targets: its lowest possible value here is {floor:.4f}, not 0",
            evidence={"bce_floor": floor, "share_non_binary_pixels": grey, "images": images},
            explanation=(
                f"{grey:.1%} of the target pixels lie strictly between 0 and 1. BCE on such targets is allowed "
                f"(it is the cross-entropy between Bernoulli distributions with means t and p, smallest at "
                f"p = t), but it cannot reach 0: its lowest value on these {images} images is their mean binary "
                f"entropy, {floor:.4f} nats per pixel, which any model, however good, still scores. Watch the "
                f"excess over {floor:.4f} (val_loss_excess in metrics.jsonl), not the raw value."
            ),
            fix="nothing to change; to make 0 the floor, binarise the targets "
            + (
                f"({setup.setting('data.binarize', 'threshold')} or bernoulli)"
                if setup.setting is not None
                else "(e.g. x > 0.5)"
            ),
        )
    ]


def check_code_width(setup: Setup) -> list[Finding]:
    """A code at least as wide as the input can learn the identity, unless a constraint (input
    noise, a sparsity or contractive penalty) keeps it from doing so."""
    if setup.code_width is None or setup.code_width < setup.input_width or setup.constrained:
        return []
    return [
        Finding(
            id="code-too-wide",
            severity="warning",
            title=f"the code ({setup.code_width} values) is at least as wide as the input ({setup.input_width})",
            evidence={"code_width": setup.code_width, "input_width": setup.input_width, "code": setup.code_name},
            explanation=(
                f"The narrowest layer ({setup.code_name}) holds {setup.code_width} values per image for "
                f"{setup.input_width} input values, so nothing forces the model to compress: it can learn to "
                f"copy its input, and a low loss then says nothing about what structure it learned."
            ),
            fix=f"make the code narrower than {setup.input_width} values"
            + (
                f" ({setup.setting('model.latent_dim', None)}), or add a constraint: denoising input noise "
                f"({setup.setting('train.noise', 'gaussian:0.5')}), a sparsity penalty "
                f"({setup.setting('train.sparsity', 'l1')}) or a contractive one "
                f"({setup.setting('train.contractive', '0.1')})"
                if setup.setting is not None
                else ", or add a constraint (denoising input noise, a sparsity penalty)"
            ),
        )
    ]


SETUP_CHECKS = (check_input_range, check_softmax, check_output_range, check_bce_floor, check_code_width)


def setup_findings(setup: Setup) -> list[Finding]:
    """Every pre-training check's findings, in a fixed order."""
    return [finding for check in SETUP_CHECKS for finding in check(setup)]


def _set(setup: Setup, key: str, value: str, before: str = " (") -> str:
    """ " (KEY: VALUE)" in the setup's terms, or "" for a model aelab did not build."""
    if setup.setting is None:
        return ""
    return f"{before}{setup.setting(key, value)}" + (")" if before == " (" else "")


def finite(value: float) -> float | None:
    """A JSON-safe number: None for NaN and infinities."""
    return value if math.isfinite(value) else None
