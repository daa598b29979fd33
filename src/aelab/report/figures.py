"""The report's figures, each drawn on a `matplotlib.figure.Figure` (never pyplot's global
state) and returned as a PNG data URI: reconstructions, training curves, loss shapes,
output histograms and the codes' PCA view."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aelab.evaluate import Evaluation
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE


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


def figure_denoising(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """For each denoising run: its noisy inputs, its reconstructions from them and the
    originals, one row each, on the same validation images; None without denoising runs."""
    runs = [(e, label) for e, label in zip(evaluations, labels, strict=True) if e.sample_noisy is not None]
    if not runs:
        return None
    rows: list[tuple[str, np.ndarray]] = []
    for evaluation, label in runs:
        noisy, clean = evaluation.metrics.get("noisy_mse", math.nan), evaluation.metrics.get("mse", math.nan)
        rows.append((f"{label}\nnoisy input", _image_array(evaluation.sample_noisy)))
        scores = f"reconstruction\nMSE {noisy:.4f}\n(clean inputs {clean:.4f})"
        rows.append((scores, _image_array(evaluation.sample_denoised)))
        rows.append(("original", _image_array(evaluation.sample_targets)))
    count = rows[0][1].shape[0]
    top = max(1.0, max(float(e.sample_targets.max()) for e, _ in runs))  # type: ignore[union-attr]
    margin = 0.3 + 0.085 * max(len(line) for label, _ in rows for line in label.splitlines())
    width = 0.8 * count + margin
    figure, axes = _subplots(len(rows), count, (width, 0.84 * len(rows) + 0.2))
    for row, (label, images) in enumerate(rows):
        for column in range(count):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            axis.imshow(images[column], cmap="gray", vmin=0, vmax=top, interpolation="nearest")
            for spine in axis.spines.values():
                spine.set_visible(False)
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", multialignment="right", fontsize=9)
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
    from aelab.report.loss_curves import plot_loss_curves

    return "data:image/png;base64," + base64.b64encode(plot_loss_curves()).decode("ascii")


# --- a VAE's figures (runs without a `generation` are left out of them)


def _tile(images: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """(N, H, W) images (or (N, H, W, C)) as one picture of `columns` per row, 1-pixel gaps."""
    count, height, width = images.shape[:3]
    rows = math.ceil(count / columns)
    shape = (rows * (height + gap) - gap, columns * (width + gap) - gap, *images.shape[3:])
    canvas = np.ones(shape, dtype=np.float32) * float(images.max(initial=1.0))
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top : top + height, left : left + width] = images[index]
    return canvas


def _vaes(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> list[tuple[Evaluation, str]]:
    return [(e, label) for e, label in zip(evaluations, labels, strict=True) if e.generation is not None]


def figure_generation(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """Per VAE run: samples from the prior (left) and interpolations between the posterior
    means of pairs of validation images (right, one pair per row), as the likelihood's mean."""
    shown = _vaes(evaluations, labels)
    if not shown:
        return None
    figure, axes = _subplots(len(shown), 2, (11, 2.6 * len(shown)))
    for row, (evaluation, label) in enumerate(shown):
        generation = evaluation.generation
        assert generation is not None
        samples = _image_array(generation.samples)
        steps = generation.interpolations.shape[1]
        lines = _image_array(generation.interpolations.flatten(0, 1))
        for axis, picture, title in (
            (axes[row][0], _tile(samples, 8), f"{label}: samples from the prior N(0, I)"),
            (axes[row][1], _tile(lines, steps), f"{label}: interpolations between validation codes"),
        ):
            axis.imshow(picture, cmap="gray", vmin=0, vmax=max(1.0, float(picture.max())), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    return _figure_png(figure)


def figure_manifold(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """Per VAE run with a 2-D code: the decoded grid of the prior's quantiles (Kingma & Welling
    2014, figure 4)."""
    shown = [(e, label) for e, label in _vaes(evaluations, labels) if e.generation.manifold is not None]  # type: ignore[union-attr]
    if not shown:
        return None
    figure, axes = _small_multiples(len(shown), width=4.4, height=4.6, columns=3)
    for axis, (evaluation, label) in zip(axes, shown, strict=True):
        manifold = evaluation.generation.manifold  # type: ignore[union-attr]
        side = manifold.shape[0]
        picture = _tile(_image_array(manifold.flatten(0, 1)), side, gap=0)
        axis.imshow(picture, cmap="gray", vmin=0, vmax=max(1.0, float(picture.max())), interpolation="nearest")
        axis.set_title(f"{label}\nz1 across, z2 up: prior quantiles 0.05 .. 0.95", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return _figure_png(figure)


def figure_elbo(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> str | None:
    """Per VAE run: the ELBO's terms by epoch (-ELBO, reconstruction, KL; nats per image) on
    top, the KL of each latent dimension at the end below."""
    shown = [(e, label) for e, label in _vaes(evaluations, labels) if e.history]
    if not shown:
        return None
    figure, axes = _subplots(2, len(shown), (max(4.2 * len(shown), 5.0), 6.0))
    for column, (evaluation, label) in enumerate(shown):
        top, bottom = axes[0][column], axes[1][column]
        epochs = [row["epoch"] for row in evaluation.history]
        for key, name, sign in (("val_elbo", "-ELBO", -1), ("val_recon", "reconstruction", 1), ("val_kl", "KL", 1)):
            top.plot(epochs, [sign * row.get(key, math.nan) for row in evaluation.history], lw=1.6, label=name)
        nll = evaluation.history[-1].get("val_nll")
        if nll is not None and math.isfinite(nll):
            samples = evaluation.history[-1].get("val_nll_samples")
            top.plot([epochs[-1]], [nll], "k*", label=f"IWAE NLL (K={samples})")
        top.set_title(f"{label}\nvalidation, nats per image", fontsize=9)
        top.set_xlabel("epoch", fontsize=8)
        top.tick_params(labelsize=7)
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        per_dim = evaluation.history[-1].get("val_kl_per_dim") or []
        bottom.bar(range(len(per_dim)), per_dim, color="#4477aa")
        bottom.set_xticks(range(0, len(per_dim), max(1, len(per_dim) // 10)))
        active = evaluation.history[-1].get("val_active_units")
        bottom.set_title(f"KL per latent dimension ({active} of {len(per_dim)} units active)", fontsize=9)
        bottom.set_xlabel("latent dimension", fontsize=8)
        bottom.set_ylabel("nats per image", fontsize=8)
        bottom.tick_params(labelsize=7)
    figure.tight_layout()
    return _figure_png(figure)
