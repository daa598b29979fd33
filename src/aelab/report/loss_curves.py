"""Losses as functions of the prediction: the `aelab loss` calculator and the report's curves.

Predictions are pixel values, what a model shows: for bce, mse and mae the output itself,
for cb the continuous Bernoulli *mean* (aelab's pixels for a cb-trained model), so the cb
loss of a prediction p is its NLL at the parameter whose mean is p. Every loss here is the
mean over the given elements, as in training.

Each likelihood of `aelab.likelihoods.LIKELIHOODS` is one line and one panel; its record says
how to read a prediction (`Likelihood.prediction_nll`), its floor and, in words, where it is
minimal. For the built-in ones, given a target t in [0, 1]:
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
from aelab.likelihoods import LIKELIHOODS, get_likelihood, probability_text

CURVE_TARGETS = (0.0, 0.3, 0.5, 0.8, 1.0)
PREDICTION_EDGE = 1e-3  # curves are drawn for predictions in [edge, 1 - edge]
PLOT_FORMATS = ("png", "svg", "pdf")  # what a file name may end in; the suffix picks the format
PANELS_PER_ROW = 5  # the figure wraps onto more rows beyond this many losses


def elementwise_loss(name: str, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each loss per element (same shape as the inputs, float64) for pixel predictions in [0, 1]."""
    predictions, targets = torch.broadcast_tensors(predictions.double(), targets.double())
    output, target = predictions.reshape(-1, 1), targets.reshape(-1, 1)  # one "image" per element
    values = get_likelihood(name).prediction_nll(output, target)
    return values.reshape(predictions.shape)


def floors(targets: torch.Tensor) -> dict[str, float]:
    """Each loss's lowest mean value over the given targets (1-D); NaN where it has no floor."""
    batch = targets.double().reshape(1, -1)
    return {name: float(record.lowest(batch)[0]) for name, record in LIKELIHOODS.items()}


def minimum_text(name: str, targets: Sequence[float]) -> str:
    """Where `name` is minimal for these targets, in words."""
    return get_likelihood(name).minimum_text(targets)


_probability_text = probability_text  # the older private name


@dataclass(frozen=True)
class LossLine:
    """One loss for the calculator: its mean value, floor, excess and where it is minimal."""

    loss: str
    value: float
    floor: float
    excess: float
    minimal_at: str


def loss_table(targets: Sequence[float], predictions: Sequence[float]) -> list[LossLine]:
    """Every loss of `aelab.LIKELIHOODS` for these targets and predictions (equal lengths,
    values in [0, 1]); each value is the mean over the elements."""
    target = torch.tensor(list(targets), dtype=torch.float64)
    prediction = torch.tensor(list(predictions), dtype=torch.float64)
    if target.shape != prediction.shape:
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions; give as many of each")
    lowest = floors(target)
    lines = []
    for name in LIKELIHOODS:
        value = float(elementwise_loss(name, prediction, target).mean())
        floor = lowest[name]
        lines.append(LossLine(name, value, floor, value - floor, minimum_text(name, list(targets))))
    return lines


def format_loss_table(targets: Sequence[float], predictions: Sequence[float]) -> str:
    """The calculator's printout: targets, predictions, and one line per loss."""
    lines = loss_table(targets, predictions)
    width = max(5, *(len(line.loss) for line in lines))
    out = [
        "targets:     " + "  ".join(f"{t:g}" for t in targets),
        "predictions: " + "  ".join(f"{p:g}" for p in predictions),
        _units_text(),
        "",
        f"{'loss':<{width}} {'value':>8} {'floor':>8} {'excess':>8}  minimal where",
    ]
    for line in lines:
        values = f"{_number(line.value):>8} {_number(line.floor):>8} {_number(line.excess):>8}"
        out.append(f"{line.loss:<{width}} {values}  {line.minimal_at}")
    for line in lines:
        note = LIKELIHOODS[line.loss].floor_note
        if note is not None and math.isfinite(line.floor) and line.floor > 1e-12:
            out += ["", note.format(floor=line.floor)]
    return "\n".join(out)


def _number(value: float) -> str:
    if math.isnan(value):
        return "none"  # no floor known
    return f"{value:.4f}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def _names_text(names: Sequence[str]) -> str:
    """["bce", "cb"] -> "bce and cb"; ["a", "b", "c"] -> "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _units_text() -> str:
    """ "(each loss is the mean over the elements, in nats for bce and cb; cb reads ...)"."""
    nats = [name for name, record in LIKELIHOODS.items() if record.unit == "nats"]
    parts = ["each loss is the mean over the elements" + (f", in nats for {_names_text(nats)}" if nats else "")]
    parts += [f"{name} reads a prediction as its mean" for name, record in LIKELIHOODS.items() if record.mean_words]
    parts += [record.prediction_words for record in LIKELIHOODS.values() if record.prediction_words]
    return "(" + "; ".join(parts) + ")"


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
    names = list(LIKELIHOODS)
    columns = min(len(names), PANELS_PER_ROW)
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(3.3 * columns, 3.3 * rows + 0.4))
    grid_axes = figure.subplots(rows, columns, sharex=True, squeeze=False).flatten()
    for spare in grid_axes[len(names) :]:
        spare.set_visible(False)
    axes = grid_axes[: len(names)]
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
        mean_words = LIKELIHOODS[name].mean_words
        axis.set_title(f"{name} (x: {mean_words})" if mean_words else name)
        axis.set_xlabel("prediction")
        axis.set_ylim(bottom=0)
        axis.set_ylim(top=min(axis.get_ylim()[1], 4.0))
        axis.grid(alpha=0.3)
    for axis in axes[::columns]:
        axis.set_ylabel("loss - its minimum")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08 / rows, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, dpi=100)
    data = buffer.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
