"""Thread 003, softmax, BCE and 0..255: a ReLU 784-128-64-28-64-128-784 autoencoder with a
softmax output, binary cross-entropy and pixels left in 0..255 (Adam, 5 epochs, batch 100).

The experiment: the model as posted, each fix alone (divide by 255; a sigmoid output) and
both together, and both with MSE; the softmax's outputs against the image, and the best any
output summing to 1 could do (each image projected onto the probability simplex)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aelab.explain.measure import failed, outputs, rows, select, validation_images
from aelab.explain.records import Claim, Experiment, Figure, Measured, Question, Setup, Verdict, fmt
from aelab.explain.records import finite as is_finite
from aelab.findings import read_findings
from aelab.sweep import SweepSpec

MODEL = {"kind": "dense", "hidden_dims": [128, 64], "latent_dim": 28, "activation": "relu", "init": "glorot_uniform"}
TRAIN = {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 100, "loss": "bce"}  # Keras's Adam default
SUMS_TO_ONE = 1e-3


def experiments(setup: Setup) -> list[Experiment]:
    train = {**TRAIN, "epochs": setup.budget.posted_epochs, "seed": setup.budget.seeds[0]}
    fixes = SweepSpec(
        setup.base(MODEL, train), {"scale": ("none", "auto"), "output_activation": ("softmax", "sigmoid")}
    )
    mse = SweepSpec(
        setup.base(MODEL, {**train, "loss": "mse"}, data={"scale": "auto"}), {"output_activation": ("sigmoid",)}
    )
    return [
        Experiment("fixes", "as posted (softmax, 0..255), each fix alone and both: scale x output activation", fixes),
        Experiment("mse", "both fixes with MSE instead of BCE", mse),
    ]


def simplex_projection(targets: torch.Tensor) -> torch.Tensor:
    """Each row of `targets` (N, D) projected onto {q >= 0, sum q = 1} (Duchi et al. 2008): the
    output summing to 1 that is nearest to the image in squared error."""
    sorted_rows, _ = targets.sort(dim=1, descending=True)
    cumulative = sorted_rows.cumsum(dim=1) - 1
    index = torch.arange(1, targets.shape[1] + 1, dtype=targets.dtype)
    support = (sorted_rows - cumulative / index) > 0
    count = support.sum(dim=1, keepdim=True)
    theta = cumulative.gather(1, count - 1) / count
    return (targets - theta).clamp_min(0)


def measure(results: Mapping[str, Any], setup: Setup) -> dict[str, Any]:
    table = rows(results["fixes"])
    mse_row = rows(results["mse"])[0]
    raw_data = next(point.config.data for point in results["fixes"].points if point.config.data.scale == "none")
    raw_images, unit = validation_images(raw_data)
    unit_images = raw_images / unit
    flat = unit_images.flatten(1).double()
    runs: dict[str, dict[str, Any]] = {}
    names = {
        ("none", "softmax"): "as posted",
        ("auto", "softmax"): "divide by 255",
        ("none", "sigmoid"): "sigmoid output",
        ("auto", "sigmoid"): "both fixes",
    }
    example: dict[str, list[float]] = {"image": unit_images[0].flatten().tolist()}
    for (scale, output), name in names.items():
        row = select(table, scale=scale, output_activation=output)[0]
        factor = unit if scale == "none" else 1.0
        seen = raw_images if scale == "none" else unit_images
        pixels = outputs(row, seen)
        runs[name] = {
            "val_bce": row["val_loss"],
            "val_mse": row["mse"] / factor**2,
            "blob_score": row["blob_score"],
            "failed": failed(row),
            "output_sum": float(pixels.flatten(1).sum(dim=1).mean()),
            "output_mean": float((pixels / factor).mean()),
            "findings": sorted({f.id for f in read_findings(Path(row["path"]))}),
        }
        example[name] = (pixels[0] / factor).flatten().tolist()
    runs["both fixes, mse"] = {
        "val_mse": mse_row["mse"],
        "blob_score": mse_row["blob_score"],
        "failed": failed(mse_row),
    }
    mean_image = flat.mean(dim=0, keepdim=True)
    return {
        "runs": runs,
        "unit": unit,
        "stored_above_one": bool(raw_images.max() > 1.0),
        "stored_max": float(raw_images.max()),
        "image_sum": float(flat.sum(dim=1).mean()),
        "target_mean": float(flat.mean()),
        "best_sum_one_mse": float((simplex_projection(flat) - flat).square().mean()),
        "mean_image_mse": float((mean_image - flat).square().mean()),
        "zero_image_mse": float(flat.square().mean()),
        "example": example,
    }


def sums_to_one(m: Measured) -> Verdict:
    run = m["runs"]["divide by 255"]
    numbers = {"softmax_output_sum": run["output_sum"], "image_pixel_sum": m["image_sum"]}
    threshold = f"the softmax outputs of each image summing to 1 within {SUMS_TO_ONE}"
    if abs(run["output_sum"] - 1) < SUMS_TO_ONE:
        sentence = (
            f"Supported: the 784 softmax outputs of an image sum to {run['output_sum']:.4f}, while the image's own "
            f"pixels sum to {fmt(m['image_sum'])} on average."
        )
        return Verdict("supported", sentence, numbers, threshold)
    return Verdict("contradicted", f"Contradicted: the outputs sum to {fmt(run['output_sum'])}.", numbers, threshold)


def cannot_draw(m: Measured) -> Verdict:
    best, blob = m["best_sum_one_mse"], m["mean_image_mse"]
    trained = m["runs"]["divide by 255"]["val_mse"]
    numbers = {
        "best_sum_one_mse": best,
        "mean_image_mse": blob,
        "zero_image_mse": m["zero_image_mse"],
        "trained_softmax_val_mse": trained,
        "image_pixel_sum": m["image_sum"],
    }
    threshold = "the best output summing to 1 scoring a higher MSE than the mean image (a blob)"
    if best > blob:
        sentence = (
            f"Supported: an image's pixels sum to {fmt(m['image_sum'])}, a softmax's outputs to 1, so even the best "
            f"output summing to 1 scores MSE {fmt(best)}: worse than the mean image, a blob ({fmt(blob)}), close to "
            f"an all-black image ({fmt(m['zero_image_mse'])}). The trained softmax model reached {fmt(trained)}."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Contradicted on this data: its images' pixels sum to {fmt(m['image_sum'])}, and the best output summing to 1 "
        f"scores {fmt(best)}, better than the mean image ({fmt(blob)})."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def above_one(m: Measured) -> Verdict:
    sigmoid, posted = m["runs"]["sigmoid output"], m["runs"]["as posted"]
    numbers = {
        "val_bce_sigmoid_raw": sigmoid["val_bce"],
        "val_bce_softmax_raw": posted["val_bce"],
        "output_mean_sigmoid_raw": sigmoid["output_mean"] * m["unit"],
        "target_mean": m["target_mean"],
        "doctor_as_posted": ", ".join(posted["findings"]) or "none",
        "stored_max": m.get("stored_max", math.nan),
    }
    threshold = "the sigmoid model on unscaled pixels reaching a val BCE below 0, impossible for targets in [0, 1]"
    if not m["stored_above_one"]:
        sentence = "Depends on the data: these images are stored in [0, 1], so leaving them undivided changes nothing."
        return Verdict("depends", sentence, numbers, threshold)
    if is_finite(sigmoid["val_bce"]) and sigmoid["val_bce"] < 0:
        sentence = (
            f"Supported: with targets up to {fmt(numbers['stored_max'])}, -t log p - (1 - t) log(1 - p) has "
            "no minimum at p = t; it falls "
            f"without bound as p goes to 1 wherever t > 1. The sigmoid model trained on the unscaled pixels reached "
            f"val BCE {fmt(sigmoid['val_bce'])}, a value BCE cannot take on [0, 1] targets, with a mean output of "
            f"{fmt(numbers['output_mean_sigmoid_raw'])} (the targets' mean is {fmt(m['target_mean'])} once scaled to "
            "[0, 1]). "
            f"As posted, the softmax caps each output below 1 and BCE sits at {fmt(posted['val_bce'])}. aelab's "
            f"doctor flags the posted run with: {numbers['doctor_as_posted']}."
        )
        return Verdict("supported", sentence, numbers, threshold)
    return Verdict("contradicted", f"Contradicted: the run's val BCE is {fmt(sigmoid['val_bce'])}.", numbers, threshold)


def binary_only(m: Measured) -> Verdict:
    fixed = m["runs"]["both fixes"]
    numbers = {"blob_score": fixed["blob_score"], "val_mse": fixed["val_mse"]}
    threshold = "the model with both fixes not a blob"
    if not fixed["failed"]:
        sentence = (
            f"Contradicted: BCE treats each of the 784 pixels as its own Bernoulli, not two classes; with both fixes "
            f"the model reconstructs (val MSE {fmt(fixed['val_mse'])}, blob score {fmt(fixed['blob_score'])})."
        )
        return Verdict("contradicted", sentence, numbers, threshold)
    sentence = (
        "Depends on the budget: with both fixes the model is still a blob here "
        f"(blob score {fmt(fixed['blob_score'])})."
    )
    return Verdict("depends", sentence, numbers, threshold)


def fixed_works(m: Measured) -> Verdict:
    bce, mse = m["runs"]["both fixes"], m["runs"]["both fixes, mse"]
    numbers = {
        "val_mse_bce": bce["val_mse"],
        "val_mse_mse": mse["val_mse"],
        "bce_blob": bce["failed"],
        "mse_blob": mse["failed"],
    }
    threshold = "with both fixes, neither the BCE nor the MSE model a blob"
    detail = f"val MSE {fmt(bce['val_mse'])} with BCE and {fmt(mse['val_mse'])} with MSE"
    if not bce["failed"] and not mse["failed"]:
        return Verdict(
            "supported",
            f"Supported: divided by 255 and with a sigmoid output, both reconstruct: {detail}.",
            numbers,
            threshold,
        )
    return Verdict("contradicted", f"Contradicted: {detail}, and one stayed a blob.", numbers, threshold)


def fixes_together(m: Measured) -> Verdict:
    runs = m["runs"]
    numbers = {
        f"val_mse_{name.replace(' ', '_')}": runs[name]["val_mse"]
        for name in ("as posted", "divide by 255", "sigmoid output", "both fixes")
    }
    numbers |= {
        f"blob_{name.replace(' ', '_')}": runs[name]["failed"]
        for name in ("divide by 255", "sigmoid output", "both fixes")
    }
    threshold = "each fix alone leaving a blob (blob score below 0.2) and both together not"
    detail = (
        f"val MSE in [0, 1] units: as posted {fmt(runs['as posted']['val_mse'])}, divided by 255 "
        f"{fmt(runs['divide by 255']['val_mse'])}, sigmoid output {fmt(runs['sigmoid output']['val_mse'])}, both "
        f"{fmt(runs['both fixes']['val_mse'])}"
    )
    alone = [name for name in ("divide by 255", "sigmoid output") if not runs[name]["failed"]]
    if not alone and not runs["both fixes"]["failed"]:
        return Verdict("supported", f"Supported: {detail}; only both together give a digit.", numbers, threshold)
    if alone:
        return Verdict(
            "contradicted", f"Contradicted: {detail}; '{alone[0]}' alone already reconstructs.", numbers, threshold
        )
    return Verdict("depends", f"Depends on the budget: {detail}; even both together stayed a blob.", numbers, threshold)


def draw_outputs(m: Measured, figure: Any) -> None:
    side = math.isqrt(len(m["example"]["image"]))
    shown = [
        name for name in ("image", "as posted", "divide by 255", "sigmoid output", "both fixes") if name in m["example"]
    ]
    for index, name in enumerate(shown):
        axes = figure.add_subplot(1, len(shown), index + 1)
        values = torch.tensor(m["example"][name])
        if values.numel() == side * side:
            axes.imshow(values.view(side, side).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        axes.set_title(f"{name}\nsum {values.sum():.3g}", fontsize=8)
        axes.axis("off")


QUESTION = Question(
    name="softmax",
    thread="003_6d8e4d8e83294bac.txt",
    title="A ReLU 784-128-64-28-64-128-784 autoencoder with a softmax output, binary cross-entropy and pixels left in "
    "0..255: how does BCE work on these values?",
    experiments=experiments,
    measure=measure,
    claims=(
        Claim("sums-to-one", "A softmax gives 784 values between 0 and 1 that sum to 1.", "the question", sums_to_one),
        Claim(
            "cannot-draw",
            "A softmax over the pixels cannot draw a digit: its outputs sum to 1, an image's pixels to about 100.",
            "the experiment (the issue)",
            cannot_draw,
        ),
        Claim(
            "above-one",
            "BCE on targets above 1 (pixels left in 0..255) is not minimised at the target.",
            "the answer (normalise first)",
            above_one,
            quick="2 epochs instead of the posted 5",
        ),
        Claim(
            "binary-only",
            "Binary cross-entropy is for two output values.",
            "the question",
            binary_only,
            quick="2 epochs instead of the posted 5",
        ),
        Claim(
            "fixed-works",
            "With inputs divided by 255, a sigmoid output with binary_crossentropy or mse works.",
            "the answer",
            fixed_works,
            quick="2 epochs instead of the posted 5",
        ),
        Claim(
            "fixes-together",
            "Each fix alone is not enough; both together are.",
            "the experiment (the issue)",
            fixes_together,
            quick="2 epochs instead of the posted 5",
        ),
    ),
    short=("cannot-draw", "above-one", "fixes-together"),
    figures=(
        Figure(
            "The first validation image and what each model makes of it, in [0, 1] units (clipped for display); "
            "the sums are of the shown pixels.",
            draw_outputs,
        ),
    ),
)
