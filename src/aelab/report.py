"""The report: one self-contained HTML page (figures embedded as PNG) for a run or a sweep.

`render_report(path)` reads run folders only (a single run folder, or a sweep folder with
one run folder per grid point), evaluates each run on its validation split with
`aelab.evaluate`, and writes `report.html` into that folder atomically. The page works
offline: no scripts, fonts or images are fetched from anywhere. Figures are drawn on
`matplotlib.figure.Figure` objects, so rendering leaves pyplot and the user's backend alone.
"""

from __future__ import annotations

import base64
import importlib.resources
import io
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from aelab.callbacks import Callback
from aelab.data import IN_MEMORY, data_for_run
from aelab.data.datasets import ImagesLike
from aelab.errors import AelabError, RunFolderError
from aelab.evaluate import Evaluation, evaluate_runs
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE
from aelab.runs import CONFIG_FILE, REPORT_FILE, atomic_write_text, load_config
from aelab.sweep import Sweep, read_sweep, short_key
from aelab.train import TrainResult
from aelab.train.state import RunState

# (key, column label, which value is best, format, meaning). Best: "min", "max", or the value
# to be closest to ("zero", "one").
METRICS: list[tuple[str, str, str, str, str]] = [
    ("mse", "MSE", "min", ".4f", "mean squared error per pixel"),
    ("mae", "MAE", "min", ".4f", "mean absolute error per pixel"),
    ("psnr", "PSNR (dB)", "max", ".2f", "peak signal-to-noise ratio, 10 log10(1 / MSE), mean over images"),
    (
        "ssim",
        "SSIM",
        "max",
        ".3f",
        "structural similarity: 7x7 uniform window (smaller for small images), "
        "valid positions, K1 0.01, K2 0.03; 1 for identical images",
    ),
    ("bce", "BCE", "min", ".4f", "binary cross-entropy of the pixels, nats per pixel"),
    (
        "bce_excess",
        "BCE excess",
        "min",
        ".4f",
        "BCE minus its floor (the targets' entropy): 0 only when output = target",
    ),
    (
        "cb_nll",
        "cb NLL",
        "min",
        ".3f",
        "continuous Bernoulli negative log-likelihood per pixel (can be negative) with the output "
        "activation's value (the sigmoid) as its parameter lambda: for cb runs, which show the cb mean of "
        "that lambda, their validation loss; for other runs lambda is the pixels they show",
    ),
    ("intensity_bias", "bias", "zero", "+.4f", "mean output minus mean target: negative dims the image"),
    (
        "blob_score",
        "blob score",
        "one",
        ".2f",
        "image-to-image variance of the reconstructions over the data's: "
        f"0 = the same image for every input; under {COLLAPSE_BLOB_SCORE} is flagged as collapsed, the "
        "threshold of the doctor's blob check",
    ),
    (
        "sharpness",
        "sharpness",
        "one",
        ".2f",
        "edge energy (squared neighbour differences) of the reconstructions "
        "over the originals': 1 as crisp as the data, below 1 blurred",
    ),
    ("probe_accuracy", "probe acc.", "max", ".3f", "logistic regression on the codes predicting the label"),
]


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _subplots(rows: int, columns: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its (rows, columns) array of axes, outside pyplot: no global figure list,
    no backend switch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _run_colours(count: int) -> list[Any]:
    cmap = _colormap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def _image_array(images: Any) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W) or (N, H, W, C) array for imshow."""
    array = images.detach().cpu().float().numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1).clip(0, 1)


# --- figures


def figure_reconstructions(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """Originals on top, then one row per run: the same validation images."""
    first = next((e for e in evaluations if e.sample_targets is not None), None)
    if first is None:
        return None
    originals = _image_array(first.sample_targets)
    count = originals.shape[0]
    rows = [("originals", originals, None)]
    for evaluation, label in zip(evaluations, labels, strict=True):
        pixels = None if evaluation.sample_pixels is None else _image_array(evaluation.sample_pixels)
        rows.append((label, pixels, evaluation))
    top = max(1.0, float(first.sample_targets.max()))
    margin = 0.3 + 0.085 * max(len(label) for label, _, _ in rows)  # inches for the row labels
    width = 0.8 * count + margin
    figure, axes = _subplots(len(rows), count, (width, 0.84 * len(rows) + 0.2))
    for row, (label, images, evaluation) in enumerate(rows):
        for column in range(count):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if images is not None:
                axis.imshow(images[column], cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            else:
                axis.set_facecolor("#eee")
            for spine in axis.spines.values():
                spine.set_visible(False)
        flag = ""
        colour = "black"
        if evaluation is not None:
            problems = evaluation.problems()
            if evaluation.collapsed:
                flag, colour = "\nCOLLAPSED", "#c0392b"
            elif evaluation.dimmed:
                flag, colour = "\nDIM", "#d35400"
            elif problems:
                flag, colour = "\nNOT EVALUATED" if images is None else "\nCHECK", "#c0392b"
        axes[row][0].set_ylabel(
            label + flag,
            rotation=0,
            ha="right",
            va="center",
            multialignment="right",
            fontsize=9,
            color=colour,
            weight="bold" if flag else None,
        )
        if row == 0:
            for spine in axes[row][0].spines.values():
                spine.set_visible(False)
    figure.subplots_adjust(left=(margin - 0.1) / width, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.08)
    return _figure_png(figure)


def figure_training(evaluations: Sequence[Evaluation], labels: Sequence[str], colours: Sequence[Any]) -> str | None:
    """Left: validation MSE by epoch for every run (equal footing); right: blob score by epoch."""
    if not any(e.history for e in evaluations):
        return None
    figure, grid = _subplots(1, 2, (11, 3.6))
    axes = grid[0]
    for evaluation, label, colour in zip(evaluations, labels, colours, strict=True):
        epochs = [row["epoch"] for row in evaluation.history]
        style = "--" if evaluation.collapsed else "-"
        for axis, key in zip(axes, ("val_mse", "val_blob_score"), strict=True):
            values = [row.get(key, math.nan) for row in evaluation.history]
            if any(math.isfinite(v) for v in values):
                axis.plot(epochs, values, style, color=colour, lw=1.6, label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("validation MSE (every run on the same scale)")
    axes[1].set_title("blob score: reconstructions' variety / data's")
    axes[1].axhline(COLLAPSE_BLOB_SCORE, color="#c0392b", lw=0.8, ls=":")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.tight_layout()
    return _figure_png(figure)


def _small_multiples(count: int, width: float = 2.9, height: float = 2.4, columns: int = 4) -> tuple[Any, list[Any]]:
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure, axes = _subplots(rows, columns, (width * columns, height * rows))
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def figure_losses(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """One panel per run: its own training and validation loss by epoch."""
    shown = [(e, label) for e, label in zip(evaluations, labels, strict=True) if e.history]
    if not shown:
        return None
    figure, axes = _small_multiples(len(shown))
    for axis, (evaluation, label) in zip(axes, shown, strict=True):
        epochs = [row["epoch"] for row in evaluation.history]
        axis.plot(epochs, [row.get("train_loss", math.nan) for row in evaluation.history], label="train", lw=1.6)
        axis.plot(epochs, [row.get("val_loss", math.nan) for row in evaluation.history], label="validation", lw=1.6)
        loss = evaluation.config.train.loss if evaluation.config else "loss"
        axis.set_title(f"{label}\n({loss})", fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return _figure_png(figure)


def figure_histograms(evaluations: Sequence[Evaluation], labels: Sequence[str], colours: Sequence[Any]) -> str | None:
    """One panel per run: share of output pixels per intensity against the data's (grey)."""
    shown = [(e, label, c) for e, label, c in zip(evaluations, labels, colours, strict=True) if e.histogram is not None]
    if not shown:
        return None
    figure, axes = _small_multiples(len(shown))
    for axis, (evaluation, label, colour) in zip(axes, shown, strict=True):
        edges = evaluation.histogram_edges
        axis.stairs(evaluation.data_histogram, edges, fill=True, color="#bbb", label="data")
        axis.stairs(evaluation.histogram, edges, baseline=None, color=colour, lw=1.8, label="output")
        axis.set_yscale("log")
        axis.set_ylim(1e-5, 1.5)
        bias = evaluation.metrics.get("intensity_bias", math.nan)
        axis.set_title(f"{label}\nbias {bias:+.3f}", fontsize=9)
        axis.set_xlabel("pixel intensity", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0].set_ylabel("share of pixels", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper center")
    figure.tight_layout()
    return _figure_png(figure)


def figure_codes(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """One panel per run: validation codes on their first two principal components."""
    shown = [(e, label) for e, label in zip(evaluations, labels, strict=True) if e.codes_2d is not None]
    if not shown:
        return None
    from matplotlib.lines import Line2D

    figure, axes = _small_multiples(len(shown), height=2.7)
    for axis, (evaluation, label) in zip(axes, shown, strict=True):
        points = evaluation.codes_2d
        if evaluation.code_labels is not None:
            axis.scatter(
                points[:, 0],
                points[:, 1],
                c=evaluation.code_labels,
                cmap="tab10",
                vmin=-0.5,
                vmax=9.5,
                s=3,
                alpha=0.7,
                linewidths=0,
            )
        else:
            axis.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6, linewidths=0)
        first, second = evaluation.explained or (math.nan, math.nan)
        axis.set_title(f"{label}\nPCs explain {first:.0%} + {second:.0%}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        # One unit is as long on both axes, so a second component that explains little shows
        # as the thin band it is rather than stretched to a square cloud.
        axis.set_aspect("equal", adjustable="datalim")
    if shown[0][0].code_labels is not None:
        colours = _colormap("tab10")
        handles = [Line2D([], [], marker="o", ls="", color=colours(i), label=str(i)) for i in range(10)]
        figure.legend(handles=handles, loc="lower center", ncol=10, fontsize=8, frameon=False)
        figure.tight_layout(rect=(0, 0.07 / math.ceil(len(shown) / 4), 1, 1))
    else:
        figure.tight_layout()
    return _figure_png(figure)


def figure_loss_shapes() -> str:
    from aelab.loss_curves import plot_loss_curves

    return "data:image/png;base64," + base64.b64encode(plot_loss_curves()).decode("ascii")


# --- the summary table, with seeds folded into mean and spread


@dataclass
class Row:
    """A table row: one run, or several seeds of one grid point."""

    label: str
    members: list[Evaluation]
    values: dict[str, Any] = field(default_factory=dict)  # grid values

    def metric(self, key: str) -> float:
        values = [e.metrics.get(key, math.nan) for e in self.members]
        finite = [v for v in values if math.isfinite(v)]
        return statistics.fmean(finite) if finite and len(finite) == len(values) else math.nan

    def spread(self, key: str) -> float:
        values = [e.metrics.get(key, math.nan) for e in self.members]
        return statistics.stdev(values) if len(values) > 1 and all(math.isfinite(v) for v in values) else math.nan

    @property
    def collapsed(self) -> bool:
        return any(e.collapsed for e in self.members)

    @property
    def dimmed(self) -> bool:
        return any(e.dimmed for e in self.members)

    @property
    def broken(self) -> bool:
        return any(e.problems() for e in self.members) and not (self.collapsed or self.dimmed)

    @property
    def ranked(self) -> bool:
        """Whether the row may be called best at anything: every member finished and none
        collapsed. A collapsed, diverged or unfinished run is never "most faithful"."""
        return not self.collapsed and all(e.state == "finished" and not e.error for e in self.members)

    @property
    def unranked_reason(self) -> str:
        if self.collapsed:
            return "collapsed"
        states = sorted({e.state for e in self.members if e.state != "finished"})
        return "/".join(states) if states else "not evaluated"

    @property
    def seconds(self) -> float:
        """Training time of the members: each epoch's training and validation, a stacked run
        charged its share of its group's step (see `aelab.train.stacking`)."""
        return sum(float(r.get("seconds", 0.0)) for e in self.members for r in e.history)


def _score(direction: str, value: float) -> float:
    """Lower is better."""
    return {"min": value, "max": -value, "zero": abs(value), "one": abs(value - 1.0)}[direction]


def build_rows(evaluations: Sequence[Evaluation], labels: Sequence[str], group_keys: Sequence[str]) -> list[Row]:
    """One row per run, or one per grid point with its seeds together when there are several."""
    groups: dict[str, Row] = {}
    for evaluation, key in zip(evaluations, group_keys, strict=True):
        groups.setdefault(key, Row(key, []))
        groups[key].members.append(evaluation)
    if all(len(row.members) == 1 for row in groups.values()):
        return [Row(label, [e]) for e, label in zip(evaluations, labels, strict=True)]
    return list(groups.values())


def best_rows(rows: Sequence[Row]) -> dict[str, int]:
    """Index of the best row per metric, among the ranked rows (finished, not collapsed) with a
    finite value; none at all with fewer than two ranked rows: one run is best at nothing."""
    best: dict[str, int] = {}
    if sum(row.ranked for row in rows) < 2:
        return best
    for key, _, direction, _, _ in METRICS:
        scored = [
            (_score(direction, row.metric(key)), i)
            for i, row in enumerate(rows)
            if row.ranked and math.isfinite(row.metric(key))
        ]
        if scored:
            best[key] = min(scored)[1]
    return best


def table_cells(rows: Sequence[Row]) -> list[dict[str, Any]]:
    best = best_rows(rows)
    out = []
    for index, row in enumerate(rows):
        cells = []
        for key, _, _, fmt, _ in METRICS:
            value, spread = row.metric(key), row.spread(key)
            text = "–" if not math.isfinite(value) else format(value, fmt)
            if math.isfinite(spread):
                text += f" ± {format(spread, fmt.lstrip('+'))}"
            cells.append({"text": text, "best": best.get(key) == index})
        epochs = max((len(e.history) for e in row.members), default=0)
        states = sorted({e.state for e in row.members})
        flags = []
        if row.collapsed:
            flags.append(("collapsed", "COLLAPSED"))
        if row.dimmed:
            flags.append(("dim", "DIM"))
        if row.broken or states != ["finished"]:
            flags.append(("broken", "/".join(states).upper() if states != ["finished"] else "CHECK"))
        out.append(
            {
                "label": row.label,
                "seeds": len(row.members),
                "cells": cells,
                "epochs": epochs,
                "seconds": _seconds_text(row.seconds),
                "flags": flags,
                "css": "collapsed" if row.collapsed else ("dim" if row.dimmed else ("broken" if flags else "")),
            }
        )
    return out


def _seconds_text(seconds: float) -> str:
    """113, 4.2, 0.037: whole seconds from 10 on, else two significant digits."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"


# --- the headline: which run was the most faithful and the sharpest, and by how much


def _ratio_text(better: float, worse: float) -> str:
    if better <= 0 or not math.isfinite(worse):
        return ""
    ratio = worse / better
    return f"{ratio:.1f}× lower" if ratio >= 1.5 else f"{(1 - better / worse):.0%} lower"


def _one_run(row: Row) -> dict[str, str]:
    """A single run's card: its numbers, with nothing to be best against."""
    text = (
        f"validation MSE {row.metric('mse'):.4f}, SSIM {row.metric('ssim'):.3f}, PSNR {row.metric('psnr'):.1f} dB, "
        f"sharpness {row.metric('sharpness'):.2f}, blob score {row.metric('blob_score'):.2f}."
    )
    if not row.ranked:
        text += f" It {'collapsed' if row.collapsed else 'is ' + row.unranked_reason}: see what went wrong below."
    return {"title": f"One run: {row.label}", "text": text, "kind": "neutral" if row.ranked else "bad"}


def headline(rows: Sequence[Row]) -> list[dict[str, str]]:
    """Plain-words findings of the comparison: most faithful (lowest MSE, with SSIM), sharpest
    (sharpness nearest 1), and the per-loss best when the grid varies the loss, all among the
    ranked runs (finished, not collapsed). A single run gets a neutral summary instead."""
    usable = [row for row in rows if math.isfinite(row.metric("mse"))]
    if not usable:
        return [{"title": "No run could be evaluated", "text": "See the failures below.", "kind": "bad"}]
    if len(rows) == 1:
        return [_one_run(rows[0])]
    ranked = [row for row in usable if row.ranked]
    left_out = [f"{row.label} ({row.unranked_reason})" for row in rows if not row.ranked]
    if not ranked:
        return [
            {
                "title": "No run to recommend",
                "text": f"Every run collapsed or did not finish: {', '.join(left_out)}. See what went wrong below.",
                "kind": "bad",
            }
        ]
    items = []
    by_mse = sorted(ranked, key=lambda row: row.metric("mse"))
    best = by_mse[0]
    text = (
        f"validation MSE {best.metric('mse'):.4f}, SSIM {best.metric('ssim'):.3f}, PSNR {best.metric('psnr'):.1f} dB."
    )
    if len(by_mse) > 1:
        second, worst = by_mse[1], by_mse[-1]
        text += (
            f" That is {_ratio_text(best.metric('mse'), second.metric('mse'))} than the runner-up, {second.label} "
            f"({second.metric('mse'):.4f}), and {_ratio_text(best.metric('mse'), worst.metric('mse'))} than the "
            f"least faithful, {worst.label} ({worst.metric('mse'):.4f})."
        )
    if left_out:
        text += f" Not ranked: {', '.join(left_out)}."
    items.append({"title": f"Most faithful: {best.label}", "text": text})

    sharp = [row for row in ranked if math.isfinite(row.metric("sharpness"))]
    if len(sharp) > 1:
        by_sharp = sorted(sharp, key=lambda row: abs(row.metric("sharpness") - 1))
        top = by_sharp[0]
        blurriest = min(sharp, key=lambda row: row.metric("sharpness"))
        runner = by_sharp[1]
        text = (
            f"its reconstructions keep {top.metric('sharpness'):.0%} of the originals' edge energy "
            f"(sharpness {top.metric('sharpness'):.2f}; 1 = as crisp as the data), against "
            f"{runner.metric('sharpness'):.0%} for the runner-up, {runner.label}, and "
            f"{blurriest.metric('sharpness'):.0%} for the blurriest, {blurriest.label}."
        )
        if top is not best:
            # Crisp edges in the wrong places are not faithfulness: say what the sharp run costs.
            text += (
                f" Crisp is not the same as right: its validation MSE is {top.metric('mse'):.4f}, "
                f"{top.metric('mse') / best.metric('mse'):.1f}× that of the most faithful run, and its SSIM "
                f"{top.metric('ssim'):.3f} against {best.metric('ssim'):.3f}."
            )
        items.append({"title": f"Sharpest: {top.label}", "text": text})

    losses = {}
    for row in ranked:
        config = row.members[0].config
        if config is not None:
            losses.setdefault(config.train.loss, []).append(row)
    if len(losses) > 1:
        parts = []
        by_loss = sorted(losses.items(), key=lambda item: min(r.metric("mse") for r in item[1]))
        lowest = min(r.metric("mse") for r in by_loss[0][1])
        for place, (loss, loss_rows) in enumerate(by_loss, start=1):
            top = min(loss_rows, key=lambda row: row.metric("mse"))
            ratio = top.metric("mse") / lowest if lowest > 0 else math.nan
            relative = "" if place == 1 else (f", {ratio:.1f}× the best" if ratio >= 1.5 else f", +{ratio - 1:.0%}")
            parts.append(
                f"{loss}: MSE {top.metric('mse'):.4f}{relative}, sharpness {top.metric('sharpness'):.2f} ({top.label})"
            )
        items.append({"title": "Losses ranked by their best run's MSE", "text": "", "lines": parts})
    return items


def failures(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Each run that went wrong, in words: collapse, dimming, unfinished, and the diagnostics'
    error and warning findings."""
    out = []
    for evaluation, label in zip(evaluations, labels, strict=True):
        lines = evaluation.problems()
        lines += [f"{f.severity}: {f.title}" for f in evaluation.findings if f.severity in ("error", "warning")]
        if lines:
            out.append({"label": label, "lines": lines, "severe": evaluation.collapsed or bool(evaluation.error)})
    return out


# --- collecting run folders and rendering


def find_runs(path: Path) -> tuple[list[Path], Sweep | None]:
    """The run folders a report covers: `path` itself when it is a run folder; for a sweep
    folder (it has a sweep.yaml) the sweep's runs that have started, in grid order, the runs
    results.json lists; else the subfolders holding a config.yaml."""
    if not path.is_dir():
        raise RunFolderError(f"{path} is not a folder; pass a run folder or a sweep folder")
    if (path / CONFIG_FILE).exists():
        return [path], None
    spec = read_sweep(path)
    if spec is not None:
        found = [path / point.name for point in spec.points() if (path / point.name / CONFIG_FILE).exists()]
    else:
        found = sorted(child for child in path.iterdir() if (child / CONFIG_FILE).exists())
    if not found:
        raise RunFolderError(f"{path} holds no run folders (no */{CONFIG_FILE}); pass a run or sweep folder")
    return found, spec


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value  # bce, relu, adam: clear without their key
    if isinstance(value, (list, tuple)):
        value = "x".join(map(str, value)) or "none"
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{key} {value}"


def _labels(run_dirs: Sequence[Path], spec: Sweep | None) -> tuple[list[str], list[str]]:
    """(label, seed-free group key) per run: "bce · relu · seed 1" and "bce · relu" for a sweep's
    runs, the folder name otherwise."""
    points = {point.name: point.values for point in spec.points()} if spec is not None else {}
    labels, groups = [], []
    for run_dir in run_dirs:
        values = points.get(run_dir.name)
        if not values:
            labels.append(run_dir.name)
            groups.append(re.sub(r"(^|_)seed-\d+", "", run_dir.name).strip("_") or run_dir.name)
            continue
        labels.append(" · ".join(_value_text(k, v) for k, v in values.items()))
        rest = [_value_text(k, v) for k, v in values.items() if k != "seed"]
        groups.append(" · ".join(rest) or "all seeds")
    return labels, groups


def _shared_settings(evaluations: Sequence[Evaluation], spec: Sweep | None) -> list[tuple[str, str]]:
    configs = [e.config.to_dict() for e in evaluations if e.config is not None]
    if not configs:
        return []
    settings = []
    for section, values in configs[0].items():
        for key, value in values.items():
            if all(c[section][key] == value for c in configs) and value is not None:
                settings.append((f"{section}.{key}", str(value)))
    return settings


def render_report(
    path: str | Path,
    out: str | Path | None = None,
    evaluations: Sequence[Evaluation] | None = None,
    *,
    data: ImagesLike | None = None,
) -> Path:
    """Write the report for a run folder or a sweep folder (default `path/report.html`) and
    return its path. `evaluations` skips re-evaluating when the caller already has them.
    `data`: the images the runs were trained on, instead of loading their config's dataset; a
    run trained on images passed in memory needs them (the same ones: their fingerprint is
    checked), else a DataError says so before anything is written."""
    from jinja2 import Environment, StrictUndefined

    import aelab
    from aelab.loss_explorer import explorer_section

    path = Path(path)
    run_dirs, spec = find_runs(path)
    if evaluations is None:
        _check_data(run_dirs, path, data)
        evaluations = evaluate_runs(run_dirs, data=data)
    else:
        run_dirs = [evaluation.run_dir for evaluation in evaluations]
    labels, group_keys = _labels(run_dirs, spec)
    colours = _run_colours(len(evaluations))
    rows = build_rows(evaluations, labels, group_keys)
    first = next((e for e in evaluations if e.config is not None), None)
    context = {
        "title": f"aelab report: {path.name}",
        "path": str(path),
        "made": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": aelab.__version__,
        "count": len(evaluations),
        "dataset": first.config.data.name if first and first.config else "?",
        "headline": [{"text": "", "lines": [], "kind": "best", **item} for item in headline(rows)],
        "train_seconds": _seconds_text(sum(row.seconds for row in rows)),
        "stars": bool(best_rows(rows)),
        "failures": failures(evaluations, labels),
        "metrics": [{"label": m[1], "best": m[2], "meaning": m[4]} for m in METRICS],
        "rows": table_cells(rows),
        "several_seeds": any(len(row.members) > 1 for row in rows),
        "grid": [(short_key(k), ", ".join(map(str, v))) for k, v in spec.grid.items()] if spec else [],
        "settings": _shared_settings(evaluations, spec),
        "figures": {
            "reconstructions": figure_reconstructions(evaluations, labels),
            "training": figure_training(evaluations, labels, colours),
            "losses": figure_losses(evaluations, labels),
            "loss_shapes": figure_loss_shapes(),
            "histograms": figure_histograms(evaluations, labels, colours),
            "codes": figure_codes(evaluations, labels),
        },
        "findings": [
            {"label": label, "findings": [f.to_dict() for f in e.findings]}
            for e, label in zip(evaluations, labels, strict=True)
        ],
        "any_findings": any(e.findings for e in evaluations),
        "loss_explorer": explorer_section(),
        "has_labels": any(e.code_labels is not None for e in evaluations),
    }
    template_text = importlib.resources.files("aelab").joinpath("templates", "report.html").read_text("utf-8")
    environment = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["number"] = lambda value: f"{value:.4g}" if isinstance(value, float) else value
    html = environment.from_string(template_text).render(**context)
    target = Path(out) if out is not None else path / REPORT_FILE
    atomic_write_text(target, html)
    return target


def _check_data(run_dirs: Sequence[Path], path: Path, data: ImagesLike | None) -> None:
    """Refuse, in one line, a report on runs trained on images passed in memory when those
    images are not given or are not the same ones: a report without their evaluation would
    read as if the runs had failed."""
    for run_dir in run_dirs:
        try:
            config = load_config(run_dir)
        except AelabError:
            continue  # a damaged folder: the report says so for that run
        if config.data.name == IN_MEMORY:
            data_for_run(config.data, data, str(run_dir), f"aelab.report.render_report({str(path)!r}, data=images)")


class ReportWriter(Callback):
    """Writes the run folder's report.html when a run finishes (`aelab.train(..., report=True)`),
    evaluated on the images it trained on; `result.extras["report"]` is its path."""

    def on_train_end(self, trainer: RunState, result: TrainResult) -> None:
        if result.run_dir is not None:
            result.extras["report"] = render_report(result.run_dir, data=trainer.data)
