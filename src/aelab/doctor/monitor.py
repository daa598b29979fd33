"""Checks on a model's state: blob, dead and saturated units, weight collapse, vanishing or
exploding gradients, NaN/Inf. `measure` takes the numbers on a fixed probe batch;
`state_findings` turns them into findings. `Doctor` runs both after every epoch of training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from aelab.callbacks import Callback
from aelab.config import RunConfig
from aelab.data import ImageData
from aelab.errors import SetupFindingsError
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE, is_collapsed
from aelab.findings import Finding, findings_bytes, read_findings, save_findings
from aelab.likelihoods import get_likelihood
from aelab.nn.variational import is_variational
from aelab.regularizers import Regularization
from aelab.runs import FINDINGS_FILE
from aelab.train import TrainResult
from aelab.train.state import RunState

from .posterior import POSTERIOR_IDS, posterior_findings, posterior_stats, vae_context
from .probe import (
    EPOCH_GRADIENT_IMAGES,
    EPOCH_PROBE_IMAGES,
    GRADIENT_IMAGES,
    NEAR_BOUND,
    PROBE_IMAGES,
    Layer,
    LayerStats,
    Subject,
    gradient_norms,
    probe_forward,
    trace_layers,
    weight_norms,
)
from .setup import Setting, Setup, config_setting, finite, setup_findings

# Blob: the reconstructions vary across images less than this share of the images' own
# variation (the blob score's collapse threshold, one definition for the doctor and the
# report), or the loss removed less than BLOB_GAP of the gap between the mean image's loss and
# the loss's floor.
BLOB_VARIATION = COLLAPSE_BLOB_SCORE
BLOB_GAP = 0.1
DEAD_WARNING = 0.25  # share of a relu layer's units dead on every probe image
SATURATION_WARNING = 0.9  # share of a sigmoid/tanh layer's values within NEAR_BOUND of a bound
COLLAPSE_RATIO = 0.1  # a weight matrix whose norm fell below this share of its reference norm
GRADIENT_SPREAD = 1e3  # first vs last layer's gradient per unit of weight norm, either way
EXPLODING_RELATIVE = 10.0  # a layer whose gradient norm is this many times its weight norm

STATE_IDS = ("non-finite", "blob", "dead-units", "saturation", "weight-collapse", "vanishing-gradients",
             "exploding-gradients")  # fmt: skip
SETUP_IDS = ("input-range", "bce-target-range", "softmax-output", "output-range", "bce-floor", "code-too-wide")
DOCTOR_IDS = frozenset(STATE_IDS + SETUP_IDS + POSTERIOR_IDS)


@dataclass
class State:
    """Measurements of a model on the probe batch at one moment (an epoch's end, or now)."""

    epoch: int | None
    loss: str
    images: int
    loss_value: float
    mean_image_loss: float
    loss_floor: float
    mse: float
    mean_image_mse: float
    variation_ratio: float  # pixel variance across images: reconstructions / targets
    distance_to_mean_image: float  # mean squared distance to the mean image: reconstructions / targets
    layer_stats: list[LayerStats]
    weights: dict[str, float]
    reference_weights: dict[str, float]
    reference: str  # what reference_weights are: "initial" or "PyTorch default init"
    gradients: dict[str, float]
    nonfinite: list[str] = field(default_factory=list)
    input_range: tuple[float, float] = (0.0, 1.0)  # the probe inputs' smallest and largest value
    gradient_images: int = GRADIENT_IMAGES  # the probe's first images the gradients were taken on

    @property
    def inputs_in_unit_range(self) -> bool:
        return self.input_range[0] >= 0.0 and self.input_range[1] <= 1.0

    @property
    def gap_basis(self) -> str:
        return self.loss if math.isfinite(self.loss_floor) else "mse"

    @property
    def gap_closed(self) -> float:
        """Share of the gap between the mean image's loss and the floor that the model closed:
        0 at the mean image, 1 at the floor (on mse when the loss has no finite floor)."""
        if self.gap_basis == "mse":
            return 1 - self.mse / self.mean_image_mse if self.mean_image_mse > 0 else math.nan
        gap = self.mean_image_loss - self.loss_floor
        return (self.mean_image_loss - self.loss_value) / gap if gap > 0 else math.nan

    def summary(self) -> dict[str, float]:
        """A few numbers per epoch for metrics.jsonl."""
        dead = [s.dead_units / s.units for s in self.layer_stats if s.dead_units is not None and s.units]
        saturated = [s.saturated_share for s in self.layer_stats if s.saturated_share is not None]
        ratios = [self.weights[n] / self.reference_weights[n] for n in self.weights if self.reference_weights.get(n)]
        return {
            "doctor_variation_ratio": self.variation_ratio,
            "doctor_gap_closed": self.gap_closed,
            "doctor_dead_share": max(dead, default=0.0),
            "doctor_saturated_share": max(saturated, default=0.0),
            "doctor_min_weight_ratio": min(ratios, default=math.nan),
            "doctor_gradient_spread": _gradient_spread(self)[0],
        }


@dataclass(frozen=True)
class Baseline:
    """What the probe batch's targets score without any model: computed once per run."""

    targets: torch.Tensor  # (N, ...) as the model sees them
    mean_image_loss: float  # the loss of outputting the targets' mean image for every input
    loss_floor: float  # the loss's lowest possible value on these targets
    variance: float  # pixel variance across images = the mean image's MSE


def baseline(targets: torch.Tensor, loss: str) -> Baseline:
    mean_image = targets.mean(dim=0, keepdim=True)
    likelihood = get_likelihood(loss)
    return Baseline(
        targets=targets,
        mean_image_loss=float(likelihood.pixel_nll(mean_image.expand_as(targets), targets).mean()),
        loss_floor=float(likelihood.lowest(targets).mean()),  # NaN when unknown: the gap is then on mse
        variance=float((targets - mean_image).square().mean()),
    )


def measure(
    subject: Subject,
    base: Baseline,
    layers: list[Layer],
    reference_weights: dict[str, float],
    reference: str,
    epoch: int | None = None,
    gradient_images: int = GRADIENT_IMAGES,
) -> State:
    """Every number the state checks need: one forward pass over the probe batch and one
    backward pass over its first `gradient_images` images."""
    targets = base.targets
    pixels, losses, layer_stats = probe_forward(subject, targets, layers)
    mean_image = targets.mean(dim=0, keepdim=True)
    variation = float((pixels - pixels.mean(dim=0, keepdim=True)).square().mean())
    distance = float((pixels - mean_image).square().mean())
    weights = weight_norms(subject.model)
    gradients = gradient_norms(subject, targets[:gradient_images])
    nonfinite = []
    if not bool(torch.isfinite(losses).all()):
        nonfinite.append("loss")
    nonfinite += [f"weights of {name}" for name, value in weights.items() if not math.isfinite(value)]
    nonfinite += [f"gradient of {name}" for name, value in gradients.items() if not math.isfinite(value)]
    return State(
        epoch=epoch,
        loss=subject.loss,
        images=targets.shape[0],
        loss_value=float(losses.mean()),
        mean_image_loss=base.mean_image_loss,
        loss_floor=base.loss_floor,
        mse=float((pixels - targets).square().mean()),
        mean_image_mse=base.variance,
        variation_ratio=variation / base.variance if base.variance > 0 else math.nan,
        distance_to_mean_image=distance / base.variance if base.variance > 0 else math.nan,
        layer_stats=layer_stats,
        weights=weights,
        reference_weights=reference_weights,
        reference=reference,
        gradients=gradients,
        nonfinite=nonfinite,
        input_range=(float(targets.min()), float(targets.max())),
        gradient_images=min(gradient_images, targets.shape[0]),
    )


def _gradient_spread(state: State) -> tuple[float, str, str, float, float]:
    """(first layer's gradient per unit weight / last layer's, first, last, their values)."""
    names = [n for n in state.gradients if state.weights.get(n)]
    if len(names) < 2:
        return math.nan, "", "", math.nan, math.nan
    first, last = names[0], names[-1]
    relative_first = state.gradients[first] / state.weights[first]
    relative_last = state.gradients[last] / state.weights[last]
    spread = relative_first / relative_last if relative_last > 0 else math.nan
    return spread, first, last, relative_first, relative_last


def _check_nonfinite(state: State, context: dict[str, Any]) -> list[Finding]:
    if not state.nonfinite:
        return []
    more = len(state.nonfinite) - 4
    what = ", ".join(state.nonfinite[:4]) + (f" and {more} more" if more > 0 else "")
    fixes = []
    if context.get("learning_rate"):
        fixes.append(f"lower the learning rate (now {context['learning_rate']:g}) by 10x")
    if not state.inputs_in_unit_range:
        fixes.append("scale the pixels to [0, 1]")
    fixes.append("compute log-likelihood losses from logits (a sigmoid output with aelab's bce does)")
    return [
        Finding(
            id="non-finite",
            severity="error",
            title=f"NaN or Inf in {what}",
            evidence={"non_finite": state.nonfinite},
            explanation=(
                f"On the probe batch the model produced non-finite values in {what}. Once a weight is NaN or "
                f"Inf every later step is too, so the run learns nothing more."
            ),
            fix="; ".join(fixes),
            epoch=state.epoch,
        )
    ]


def _check_blob(state: State, context: dict[str, Any]) -> list[Finding]:
    gap = state.gap_closed
    low_variation = is_collapsed(state.variation_ratio)
    near_mean = gap < BLOB_GAP
    if not (low_variation or near_mean) or math.isnan(state.variation_ratio):
        return []
    basis = state.gap_basis
    value, mean_value, floor = (
        (state.mse, state.mean_image_mse, 0.0)
        if basis == "mse"
        else (state.loss_value, state.mean_image_loss, state.loss_floor)
    )
    evidence: dict[str, Any] = {
        "variation_ratio": state.variation_ratio,
        "distance_to_mean_image": state.distance_to_mean_image,
        f"{basis}": value,
        f"mean_image_{basis}": mean_value,
        f"{basis}_floor": floor,
        "gap_closed": gap,
        "mse": state.mse,
        "mean_image_mse": state.mean_image_mse,
        "images": state.images,
    }
    stuck = context.get("epochs_near_mean_image")
    if stuck:
        evidence["epochs_near_mean_image"] = stuck
    parts = [
        f"Across {state.images} images the reconstructions vary {_percent(state.variation_ratio)} as much as the "
        f"images themselves (pixel variance across images)"
    ]
    if state.distance_to_mean_image < BLOB_VARIATION:
        parts.append(
            f"and they sit close to the mean image (their squared distance from it is "
            f"{_percent(state.distance_to_mean_image)} of the images' own)"
        )
    parts[-1] += "."
    progress = (
        "the model scores worse than that constant image" if gap < 0 else f"the model has closed {gap:.1%} of that gap"
    )
    parts.append(
        f"The {basis} is {value:.4g} where a model that outputs the mean image for every input scores "
        f"{mean_value:.4g} (floor {floor:.4g}): {progress}"
        + (f", and has stayed within {BLOB_GAP:.0%} of it for the last {stuck} epochs." if stuck else ".")
    )
    compared = "no better than" if gap < 0 else "like"
    if low_variation and near_mean:
        title = (
            f"reconstructions barely vary ({_percent(state.variation_ratio)} of the data's variation) and "
            f"score {compared} the mean image ({basis} {value:.4g} vs {mean_value:.4g})"
        )
        parts.append("The output is close to one image whatever the input: a blob.")
    elif low_variation:
        title = (
            f"reconstructions barely vary with the input ({_percent(state.variation_ratio)} of the data's variation)"
        )
    else:
        title = f"loss stuck at the mean image's level ({basis} {value:.4g} vs {mean_value:.4g})"
    setup_errors = context.get("setup_errors")
    if setup_errors:
        fixes = [f"fix the set-up errors first ({', '.join(setup_errors)}): no amount of training gets past them"]
    elif context.get("optimizer") == "adam" and context.get("learning_rate", 1.0) < 1e-2:
        fixes = [f"train longer or raise the learning rate (now {context['learning_rate']:g}; try 1e-2)"]
    else:
        fixes = ["train longer or raise the learning rate"]
    if context.get("activation") == "sigmoid" and not setup_errors:
        fixes.append("relu hidden layers leave this plateau sooner than sigmoid ones")
    return [
        Finding(
            id="blob",
            severity="error",
            title=title,
            evidence=evidence,
            explanation=" ".join(parts),
            fix="; ".join(fixes),
            epoch=state.epoch,
        )
    ]


def _percent(share: float) -> str:
    """A share as a percentage with two significant digits, so 0.0004 reads 0.04%, not 0.0%."""
    return f"{100 * share:.2g}%"


def _check_units(state: State, context: dict[str, Any]) -> list[Finding]:
    findings = []
    for stats in state.layer_stats:
        if stats.dead_units and stats.units and stats.dead_units / stats.units >= DEAD_WARNING:
            share = stats.dead_units / stats.units
            every = stats.dead_units == stats.units
            findings.append(
                Finding(
                    id="dead-units",
                    severity="error" if every else "warning",
                    title=f"{stats.dead_units} of {stats.units} relu units in {stats.name} are dead ({share:.0%})",
                    evidence={
                        "layer": stats.name,
                        "dead_units": stats.dead_units,
                        "units": stats.units,
                        "dead_share": share,
                        "images": state.images,
                    },
                    explanation=(
                        f"{stats.dead_units} of the {stats.units} relu units after {stats.name} output 0 for every "
                        f"one of {state.images} probe images. A relu at 0 has zero gradient, so these units get no "
                        f"update from these images and carry no information to the next layer"
                        + (": nothing passes this layer at all." if every else ".")
                    ),
                    fix=_unit_fix(state, context, "dead-units"),
                    epoch=state.epoch,
                )
            )
        if stats.saturated_share is not None and stats.saturated_share >= SATURATION_WARNING:
            bound = "0 or 1" if stats.activation == "sigmoid" else "-1 or 1"
            findings.append(
                Finding(
                    id="saturation",
                    severity="warning",
                    title=f"{stats.saturated_share:.0%} of the {stats.activation} values in {stats.name} are pinned "
                    f"near {bound}",
                    evidence={
                        "layer": stats.name,
                        "activation": stats.activation,
                        "saturated_share": stats.saturated_share,
                        "pinned_units": stats.pinned_units,
                        "units": stats.units,
                        "near_bound": NEAR_BOUND,
                        "images": state.images,
                    },
                    explanation=(
                        f"On {state.images} probe images, {stats.saturated_share:.1%} of the {stats.activation} "
                        f"outputs after {stats.name} lie within {NEAR_BOUND:.0%} of the range from {bound}, and "
                        f"{stats.pinned_units} of its {stats.units} units are there for every image. There the "
                        f"{stats.activation}'s slope is under {4 * NEAR_BOUND:.2f} of its peak, so little gradient "
                        f"passes back through these units."
                    ),
                    fix=_unit_fix(state, context, "saturation"),
                    epoch=state.epoch,
                )
            )
    return findings


def _check_weights(state: State, context: dict[str, Any]) -> list[Finding]:
    findings = []
    for name, norm in state.weights.items():
        reference = state.reference_weights.get(name)
        if not reference or not math.isfinite(norm) or norm / reference >= COLLAPSE_RATIO:
            continue
        ratio = norm / reference
        decay = context.get("weight_decay")
        fix = "reduce the weight decay" + (f" (now {decay:g})" if decay else "") if decay else ""
        findings.append(
            Finding(
                id="weight-collapse",
                severity="warning",
                title=f"the weights of {name} are at {ratio:.1%} of their {state.reference} norm",
                evidence={
                    "layer": name,
                    "norm": norm,
                    "reference_norm": reference,
                    "ratio": ratio,
                    "reference": state.reference,
                    "variation_ratio": state.variation_ratio,
                },
                explanation=(
                    f"The norm of {name} is {norm:.4g}, {ratio:.1%} of its {state.reference} norm {reference:.4g}. "
                    f"Its outputs shrink with it toward the layer's biases alone, which are the same for every "
                    f"image; the reconstructions now vary {state.variation_ratio:.1%} as much as the images."
                ),
                fix=fix
                or "look for what pulls the weights to zero (weight decay or an L2 penalty too strong for "
                "the learning rate); raise the learning rate so the data's gradient outweighs it",
                epoch=state.epoch,
            )
        )
    return findings


def _check_gradients(state: State, context: dict[str, Any]) -> list[Finding]:
    spread, first, last, relative_first, relative_last = _gradient_spread(state)
    images = min(state.images, state.gradient_images)
    relative = {n: state.gradients[n] / state.weights[n] for n in state.gradients if state.weights.get(n)}
    largest = max(relative, key=relative.__getitem__, default=None)
    if largest is not None and relative[largest] > EXPLODING_RELATIVE:
        size = relative[largest]
        rate = context.get("learning_rate", 0.01)
        return [
            Finding(
                id="exploding-gradients",
                severity="warning",
                title=f"the gradient at {largest} is {size:.3g} times the norm of its weights",
                evidence={
                    "layer": largest,
                    "relative_gradient": size,
                    "relative_gradients": relative,
                    "images": images,
                },
                explanation=(
                    f"Measured on {images} probe images, |grad W| / |W| is {size:.3g} at {largest} (largest of the "
                    f"{len(relative)} weight layers). A plain gradient step with learning rate {rate:g} would change "
                    f"those weights by {rate * size:.3g} times their own size; steps like that overshoot, and "
                    f"with momentum-free SGD they can blow the weights up to Inf."
                ),
                fix="; ".join(
                    (
                        ["scale the inputs to [0, 1] (large targets make large losses and gradients)"]
                        if not state.inputs_in_unit_range
                        else []
                    )
                    + ["lower the learning rate"]
                    + ([] if context.get("setting") else ["clip the gradient norm"])
                ),
                epoch=state.epoch,
            )
        ]
    if math.isnan(spread) or 1 / GRADIENT_SPREAD <= spread <= GRADIENT_SPREAD:
        return []
    vanishing = spread < 1 / GRADIENT_SPREAD
    factor = (1 / spread if spread > 0 else math.inf) if vanishing else spread
    evidence = {
        "first_layer": first,
        "last_layer": last,
        "first_relative_gradient": relative_first,
        "last_relative_gradient": relative_last,
        "spread": spread,
        "images": images,
    }
    direction = "smaller" if vanishing else "larger"
    title = f"the gradient per unit weight at {first} is {factor:.3g} times {direction} than at {last}"
    if spread == 0:
        title = f"no gradient reaches {first} while {last} gets |grad W| / |W| = {relative_last:.3g}"
    return [
        Finding(
            id="vanishing-gradients" if vanishing else "exploding-gradients",
            severity="warning",
            title=title,
            evidence=evidence,
            explanation=(
                f"Measured on {images} probe images, |grad W| / |W| is {relative_first:.3g} for the first weight "
                f"layer ({first}) and {relative_last:.3g} for the last ({last}), {factor:.3g} times "
                + (
                    "smaller at the input end: the gradient shrinks on its way back through the layers, so the "
                    "first layers learn far more slowly than the last."
                    if vanishing
                    else "larger at the input end: the gradient grows on its way back through the layers, so "
                    "steps that suit the last layer are far too big for the first."
                )
            ),
            fix=_spread_fix(context, vanishing),
            epoch=state.epoch,
        )
    ]


def _unit_fix(state: State, context: dict[str, Any], finding: str) -> str:
    """What to change for dead (relu) or saturated (sigmoid, tanh) units, naming aelab's
    settings only for aelab runs and suggesting only what is not already so."""
    setting: Setting | None = context.get("setting")
    fixes = [] if state.inputs_in_unit_range else ["scale the inputs to [0, 1]"]
    fixes.append(
        "lower the learning rate" + (f" (now {context['learning_rate']:g})" if context.get("learning_rate") else "")
    )
    if finding == "dead-units":
        if setting is None:
            fixes.append("use He (Kaiming) initialisation or leaky_relu")
        else:
            changes = (
                [setting("model.init", "he_uniform")] if context.get("init") not in ("he_uniform", "he_normal") else []
            )
            changes.append(setting("model.activation", "leaky_relu"))
            fixes.append(" or ".join(changes))
    elif setting is None:
        fixes.append("use relu hidden layers")
    else:
        fixes.append(f"use relu hidden layers ({setting('model.activation', 'relu')})")
    return "; ".join(fixes)


def _spread_fix(context: dict[str, Any], vanishing: bool) -> str:
    setting: Setting | None = context.get("setting")
    if setting is None:
        if vanishing:
            return "use relu hidden layers with He (Kaiming) init, fewer layers, or a normalisation layer"
        return "lower the learning rate; use Glorot or He init; clip the gradient norm"
    if vanishing:
        return (
            f"use relu hidden layers with he_uniform init ({setting('model.activation', 'relu')}, "
            f"{setting('model.init', 'he_uniform')}) or fewer layers ({setting('model.hidden_dims', None)})"
        )
    rate, init = setting("train.learning_rate", None), setting("model.init", None)
    return f"lower the learning rate ({rate}); use glorot or he init ({init})"


STATE_CHECKS = (_check_nonfinite, _check_blob, _check_units, _check_weights, _check_gradients)


def state_findings(state: State, context: dict[str, Any] | None = None) -> list[Finding]:
    """Findings about a model's state. context: optional run facts for the fixes
    (learning_rate, optimizer, activation, weight_decay, epochs_near_mean_image)."""
    context = context or {}
    if state.nonfinite:
        return _check_nonfinite(state, context)  # nothing else measured on NaN is meaningful
    return [finding for check in STATE_CHECKS[1:] for finding in check(state, context)]


def epochs_near_mean_image(losses: list[float], state: State) -> int:
    """How many of the last epochs' losses stayed within BLOB_GAP of the mean image's loss."""
    if state.gap_basis != state.loss:
        return 0
    gap = state.mean_image_loss - state.loss_floor
    count = 0
    for value in reversed(losses):
        if not (gap > 0 and (state.mean_image_loss - value) / gap < BLOB_GAP):
            break
        count += 1
    return count


def others_than_doctor(run_dir: Path) -> list[Finding]:
    """The findings in run_dir's findings.json that are not the doctor's (e.g. divergence)."""
    return [f for f in read_findings(run_dir) if f.id not in DOCTOR_IDS]


def merge_and_save(run_dir: Path, findings: list[Finding]) -> None:
    """Write findings.json: the doctor's findings plus any others already there (e.g. divergence)."""
    save_findings(run_dir, others_than_doctor(run_dir) + findings)


def run_context(config: RunConfig, setting: Setting = config_setting) -> dict[str, Any]:
    """The run facts the fixes mention, and how they name a setting (config keys or flags)."""
    return {
        "learning_rate": config.train.learning_rate,
        "optimizer": config.train.optimizer,
        "weight_decay": config.train.weight_decay,
        "activation": config.model.activation,
        "init": config.model.init,
        "setting": setting,
    }


def config_setup(
    config: RunConfig,
    subject: Subject,
    targets: torch.Tensor,
    data: ImageData | None = None,
    setting: Setting = config_setting,
) -> Setup:
    """The pre-training checks' inputs for an aelab model built from `config` (trained on
    `data`, when known: 8-bit pixels loaded unscaled are what data.scale "none" kept raw)."""
    pixels, _ = subject.reconstruct(targets)
    kept_raw = data is not None and data.val.dtype == torch.uint8 and data.scale == 1.0
    return Setup(
        loss=config.train.loss,
        output_activation=config.model.output_activation,
        targets=targets,
        code_width=config.model.latent_dim,
        input_width=targets[0].numel(),
        pixels=pixels,
        setting=setting,
        raw_divisor=255.0 if kept_raw else None,
        constrained=Regularization.from_config(config.train).active,
    )


class Doctor(Callback):
    """Runs the doctor during `aelab.train`: the pre-training checks at the start; the state
    checks after every epoch on a fixed probe batch (the first EPOCH_PROBE_IMAGES validation
    images, gradients on EPOCH_GRADIENT_IMAGES of them), with a few monitor numbers returned
    for each metrics row (doctor_*); findings.json kept current in the run folder; and at the
    end the state checks once more on the whole probe (the first PROBE_IMAGES validation
    images), so the final findings are measured on every probe image. `findings` holds the latest list.

    strict: stop the run before its first step when the pre-training checks find an
        error-level problem: `on_train_start` raises SetupFindingsError (its `.findings` lists
        them; they are saved to findings.json first), and `train` marks the folder "stopped".
    setting: how fixes name a setting; config keys by default."""

    def __init__(self, *, strict: bool = False, setting: Setting = config_setting) -> None:
        self.strict = strict
        self.setting = setting
        self.findings: list[Finding] = []
        self.setup: list[Finding] = []
        self._streaks: dict[tuple[str, Any], int] = {}
        self._subject: Subject | None = None

    def on_train_start(self, trainer: RunState, run_dir: Path | None) -> None:
        self._subject = Subject(trainer.model, trainer.config.train.loss)
        self._probe = trainer.validation.batch(0, PROBE_IMAGES)
        self._baseline = baseline(self._probe, trainer.config.train.loss)
        self._epoch_baseline = baseline(self._probe[:EPOCH_PROBE_IMAGES], trainer.config.train.loss)
        self._saved: list[Finding] | None = None
        self._others: list[Finding] = []  # what else findings.json holds (`_save`)
        self._layers = trace_layers(self._subject, self._probe)
        self._initial = weight_norms(trainer.model)
        setup = config_setup(trainer.config, self._subject, self._probe, trainer.data, self.setting)
        self.setup = setup_findings(setup)
        self.findings = list(self.setup)
        self._save(trainer, run_dir, final=True)  # on disk before a strict stop
        errors = [finding for finding in self.setup if finding.severity == "error"]
        if self.strict and errors:
            raise SetupFindingsError(
                f"the set-up checks found {len(errors)} error-level problem(s) ({', '.join(f.id for f in errors)}); "
                "stopped before the first training step, as strict asks",
                errors,
            )

    def _save(self, trainer: RunState, run_dir: Path | None, *, final: bool = False) -> None:
        """findings.json, rewritten only when the findings changed: through the run's writer
        (`RunState.write_file`, on its background thread while training), and at once with
        `final`, after the run's earlier writes, for the callbacks after this one to read."""
        if run_dir is None:
            return
        if final:  # the others are read here only: during training only a divergence adds
            # one, and a diverged run's doctor writes no more
            trainer.flush_writes()
            self._others = others_than_doctor(run_dir)
        if self.findings != self._saved:
            trainer.write_file(run_dir / FINDINGS_FILE, findings_bytes(self._others + self.findings))
            self._saved = list(self.findings)
        if final:
            trainer.flush_writes()

    def _update(self, trainer: RunState, run_dir: Path | None, *, whole: bool = False) -> State:
        """Measure and check the model on the epoch probe, or with `whole` on the whole probe."""
        assert self._subject is not None, "on_train_start was not called"
        base, gradient_images = (
            (self._baseline, GRADIENT_IMAGES) if whole else (self._epoch_baseline, EPOCH_GRADIENT_IMAGES)
        )
        state = measure(
            self._subject, base, self._layers, self._initial, "initial", epoch=trainer.epoch,
            gradient_images=gradient_images,
        )  # fmt: skip
        context = run_context(trainer.config, self.setting)
        context["epochs_near_mean_image"] = epochs_near_mean_image([row["val_loss"] for row in trainer.history], state)
        context["setup_errors"] = [f.id for f in self.setup if f.severity == "error"]
        found = state_findings(state, context)
        if is_variational(trainer.model) and not state.nonfinite:
            found += self._posterior(trainer, whole)
        streaks = {}
        for finding in found:
            key = (finding.id, finding.evidence.get("layer"))
            streaks[key] = self._streaks.get(key, trainer.epoch)
        self._streaks = streaks
        found = [replace(f, epoch=streaks[(f.id, f.evidence.get("layer"))]) for f in found]
        self.findings = self.setup + found
        self._save(trainer, run_dir, final=whole)
        return state

    def _posterior(self, trainer: RunState, whole: bool) -> list[Finding]:
        """A VAE's posterior checks on the probe (the epoch probe, or with `whole` all of it)."""
        probe = self._probe if whole else self._probe[:EPOCH_PROBE_IMAGES]
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                stats = posterior_stats(*model.posterior(probe))  # type: ignore[operator]
        finally:
            model.train(was_training)
        context = vae_context(trainer.config, probe[0].numel(), self.setting)
        return posterior_findings(stats, context, trainer.history, trainer.epoch)

    def on_epoch_end(self, trainer: RunState, row: Mapping[str, Any], run_dir: Path | None) -> dict[str, Any]:
        state = self._update(trainer, run_dir)
        return {key: finite(value) for key, value in state.summary().items()}

    def on_train_end(self, trainer: RunState, result: TrainResult) -> None:
        # The final weights (the best epoch's, when they were restored) on every probe image.
        self._update(trainer, result.run_dir, whole=True)
        result.extras["findings"] = self.findings
