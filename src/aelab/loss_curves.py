"""Losses as functions of the prediction: the `aelab loss` calculator and the report's curves.

Predictions are pixel values, what a model shows: for bce, mse and mae the output itself,
for cb the continuous Bernoulli *mean* (aelab's pixels for a cb-trained model), so the cb
loss of a prediction p is its NLL at the parameter whose mean is p. Every loss here is the
mean over the given elements, as in training.

Where each loss is minimal, given a target t in [0, 1]:
    bce  at p = t, where it equals the binary entropy H(t) > 0 for grey t: BCE's floor
    mse  at p = t (floor 0)
    mae  at p = t for one element; over many, at their median (floor 0)
    cb   where the cb mean equals t, i.e. at the parameter lambda with E[x] = t, not lambda = t;
         for t exactly 0 or 1 there is no minimum: the density grows without bound as the
         mean goes to t, so the floor is -inf
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aelab.errors import ConfigError
from aelab.losses import LOSS_FLOORS, LOSSES, cb_logits_for_mean

CURVE_TARGETS = (0.0, 0.3, 0.5, 0.8, 1.0)
PREDICTION_EDGE = 1e-3  # curves are drawn for predictions in [edge, 1 - edge]
PLOT_FORMATS = ("png", "svg", "pdf")  # what a file name may end in; the suffix picks the format


def elementwise_loss(name: str, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each loss per element (same shape as the inputs, float64) for pixel predictions in [0, 1]."""
    predictions, targets = torch.broadcast_tensors(predictions.double(), targets.double())
    output, target = predictions.reshape(-1, 1), targets.reshape(-1, 1)  # one "image" per element
    if name == "cb":
        inside = output.clamp(1e-12, 1 - 1e-12)
        values = LOSSES["cb"](cb_logits_for_mean(inside), target, True)
    else:
        values = LOSSES[name](output, target, False)
    return values.reshape(predictions.shape)


def floors(targets: torch.Tensor) -> dict[str, float]:
    """Each loss's lowest mean value over the given targets (1-D)."""
    batch = targets.double().reshape(1, -1)
    return {name: float(floor(batch)[0]) for name, floor in LOSS_FLOORS.items()}


def minimum_text(name: str, targets: Sequence[float]) -> str:
    """Where `name` is minimal for these targets, in words."""
    if name == "bce":
        return "prediction = target; the minimum is the targets' mean binary entropy, > 0 for grey targets"
    if name == "mse":
        return "prediction = target"
    if name == "mae":
        return "prediction = target (per element; over several equal predictions, their median)"
    parameters = []
    for target in targets:
        if target <= 0 or target >= 1:
            parameters.append(f"{target:g}: none (-inf)")
        else:
            logit = float(cb_logits_for_mean(torch.tensor([target], dtype=torch.float64))[0])
            parameters.append(_probability_text(1 / (1 + math.exp(-logit))))
    return (
        "cb mean = target (the prediction), i.e. at parameter lambda = "
        + ", ".join(parameters)
        + "; a target of exactly 0 or 1 has no minimum (floor -inf)"
    )


def _probability_text(value: float) -> str:
    """0.0652 -> "0.065"; 0.99995 -> "1 - 4.5e-05": enough digits to tell it from 0 or 1."""
    if value > 0.99:
        return f"1 - {1 - value:.2g}"
    if value < 0.01:
        return f"{value:.2g}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class LossLine:
    """One loss for the calculator: its mean value, floor, excess and where it is minimal."""

    loss: str
    value: float
    floor: float
    excess: float
    minimal_at: str


def loss_table(targets: Sequence[float], predictions: Sequence[float]) -> list[LossLine]:
    """Every loss of `aelab.losses.LOSSES` for these targets and predictions (equal lengths,
    values in [0, 1]); each value is the mean over the elements."""
    target = torch.tensor(list(targets), dtype=torch.float64)
    prediction = torch.tensor(list(predictions), dtype=torch.float64)
    if target.shape != prediction.shape:
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions; give as many of each")
    lowest = floors(target)
    lines = []
    for name in LOSSES:
        value = float(elementwise_loss(name, prediction, target).mean())
        floor = lowest[name]
        lines.append(LossLine(name, value, floor, value - floor, minimum_text(name, list(targets))))
    return lines


def format_loss_table(targets: Sequence[float], predictions: Sequence[float]) -> str:
    """The calculator's printout: targets, predictions, and one line per loss."""
    lines = loss_table(targets, predictions)
    number = lambda v: f"{v:.4f}" if math.isfinite(v) else ("-inf" if v < 0 else "inf")  # noqa: E731
    out = [
        "targets:     " + "  ".join(f"{t:g}" for t in targets),
        "predictions: " + "  ".join(f"{p:g}" for p in predictions),
        "(each loss is the mean over the elements, in nats for bce and cb; cb reads a prediction as its mean)",
        "",
        f"{'loss':<5} {'value':>8} {'floor':>8} {'excess':>8}  minimal where",
    ]
    for line in lines:
        values = f"{number(line.value):>8} {number(line.floor):>8} {number(line.excess):>8}"
        out.append(f"{line.loss:<5} {values}  {line.minimal_at}")
    bce_line = next(line for line in lines if line.loss == "bce")
    if bce_line.floor > 1e-12:
        out += [
            "",
            f"bce is not zero at prediction = target: its floor here is {bce_line.floor:.4f} nats, the mean binary "
            "entropy of the targets; only targets of exactly 0 or 1 have a floor of 0. Watch the excess.",
        ]
    return "\n".join(out)


def prediction_grid(points: int = 399) -> torch.Tensor:
    return torch.linspace(PREDICTION_EDGE, 1 - PREDICTION_EDGE, points, dtype=torch.float64)


def shifted_curve(name: str, target: float, grid: torch.Tensor) -> torch.Tensor:
    """`name` against the predictions in `grid` for one target, shifted so its minimum on the
    grid is zero."""
    values = elementwise_loss(name, grid, torch.tensor(target, dtype=torch.float64))
    return values - values.min()


def plot_format(path: str | Path) -> str:
    """The image format a file name asks for, from its suffix: "png", "svg" or "pdf". Raises
    ConfigError for any other name, before anything is drawn."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        names = ", ".join(f".{name}" for name in PLOT_FORMATS)
        raise ConfigError(f"cannot draw the curves into {path}: the file name must end in {names}")
    return suffix


def plot_loss_curves(
    targets: Sequence[float] = CURVE_TARGETS,
    path: str | Path | None = None,
    predictions: Sequence[float] | None = None,
) -> bytes:
    """A figure with one panel per loss: its curve against the prediction for each target,
    shifted so each curve's minimum is zero. With `predictions` (one per target), each
    (prediction, loss) is marked on its target's curve. Written to `path` when given
    (atomically), in the format its suffix names (`plot_format`: .png, .svg or .pdf); the
    file's bytes are returned either way (PNG without `path`)."""
    image_format = "png" if path is None else plot_format(path)
    import matplotlib
    from matplotlib.figure import Figure  # not pyplot: no global figures, the user's backend kept

    from aelab.runs import atomic_write_bytes

    grid = prediction_grid()
    names = list(LOSSES)
    figure = Figure(figsize=(3.3 * len(names), 3.3))
    axes = figure.subplots(1, len(names), sharex=True, squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"]
    for axis, name in zip(axes, names, strict=True):
        for index, target in enumerate(targets):
            colour = colours(index / max(1, len(targets) - 1) * 0.9)
            curve = shifted_curve(name, target, grid)
            axis.plot(grid.numpy(), curve.numpy(), color=colour, lw=1.8, label=f"target {target:g}")
            if predictions is not None:
                raw = elementwise_loss(name, grid, torch.tensor(target, dtype=torch.float64))
                point = float(elementwise_loss(name, torch.tensor([predictions[index]]), torch.tensor([target]))[0])
                axis.plot([predictions[index]], [point - float(raw.min())], "o", color=colour, ms=6, mec="black")
        axis.set_title({"cb": "cb (x: the cb mean)"}.get(name, name))
        axis.set_xlabel("prediction")
        axis.set_ylim(bottom=0)
        axis.set_ylim(top=min(axis.get_ylim()[1], 4.0))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("loss - its minimum")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, dpi=100)
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
