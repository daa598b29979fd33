"""Thread 001, the Keras tutorial: why a sigmoid output and binary cross-entropy on the
784-32-784 autoencoder, and may one use ReLU or MSE?

The experiment: the tutorial's model (ReLU code of 32, Adam, batch 256) with output
activations sigmoid, relu and linear times losses bce and mse; per run the reconstruction
error, the intensity bias, the sharpness and the share of output pixels outside [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from aelab.explain.measure import failed, mean, outputs, rows, select, validation_images
from aelab.explain.records import Claim, Experiment, Figure, Measured, Question, Setup, Verdict, fmt, percent
from aelab.explain.records import finite as is_finite
from aelab.sweep import SweepSpec

MODEL = {"kind": "dense", "hidden_dims": [], "latent_dim": 32, "activation": "relu", "init": "glorot_uniform"}
TRAIN = {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 256}  # the tutorial's (Keras's Adam default)
OUTPUTS = ("sigmoid", "relu", "linear")
LOSSES = ("bce", "mse")

SIMILAR = 0.10  # relative difference in val MSE under which two results are "as good"
DIMMING = 0.03  # mean output this far below the mean target (relative): the image is dimmed
DIMMING_GAP = 0.02  # and this much more than the other loss dims it
MOSTLY_BINARY = 0.9  # share of pixels within EXTREME of 0 or 1
EXTREME = 0.1
BINS = 50


def experiments(setup: Setup) -> list[Experiment]:
    base = setup.base(MODEL, {**TRAIN, "epochs": setup.budget.epochs})
    grid = {"output_activation": OUTPUTS, "loss": LOSSES, "seed": setup.budget.seeds[:1]}
    return [Experiment("outputs", "the tutorial's 784-32-784 model: output activation x loss", SweepSpec(base, grid))]


def _histogram(values: torch.Tensor, low: float, high: float) -> list[float]:
    return torch.histc(values.clamp(low, high), bins=BINS, min=low, max=high).tolist()


def measure(results: Mapping[str, Any], setup: Setup) -> dict[str, Any]:
    table = rows(results["outputs"])
    images, unit = validation_images(results["outputs"].points[0].config.data)
    targets = images / unit
    runs: dict[str, dict[str, Any]] = {}
    low = -0.5  # linear outputs go below 0
    for output in OUTPUTS:
        for loss in LOSSES:
            found = select(table, output_activation=output, loss=loss)
            if not found:
                continue
            row = found[0]
            pixels = outputs(row, images) / unit
            runs[f"{output}-{loss}"] = {
                "val_mse": row["mse"],
                "val_bce": row["bce"],
                "failed": failed(row),
                "sharpness": row["sharpness"],
                "relative_bias": row["intensity_bias"] / row["data_mean"] if row["data_mean"] else math.nan,
                "outside_share": float(((pixels < 0) | (pixels > 1)).float().mean()),
                "extreme_share": float(((pixels <= EXTREME) | (pixels >= 1 - EXTREME)).float().mean()),
                "histogram": _histogram(pixels, low, 1.5),
            }
    return {
        "runs": runs,
        "target_extreme_share": float(((targets <= EXTREME) | (targets >= 1 - EXTREME)).float().mean()),
        "target_histogram": _histogram(targets, low, 1.5),
        "histogram_range": [low, 1.5],
        "epochs": setup.budget.epochs,
        "mean_failed": mean(float(r["failed"]) for r in runs.values()),
    }


def _run(m: Measured, output: str, loss: str) -> dict[str, Any]:
    return m["runs"].get(
        f"{output}-{loss}",
        {
            "val_mse": math.nan,
            "failed": True,
            "sharpness": math.nan,
            "relative_bias": math.nan,
            "outside_share": math.nan,
        },
    )


def _works(m: Measured, output: str, loss: str) -> bool:
    run, reference = _run(m, output, loss), _run(m, "sigmoid", loss)
    return not run["failed"] and is_finite(run["val_mse"]) and run["val_mse"] <= (1 + SIMILAR) * reference["val_mse"]


def sigmoid_fits(m: Measured) -> Verdict:
    values = {o: _run(m, o, "mse")["val_mse"] for o in OUTPUTS}
    outside = {o: _run(m, o, "mse")["outside_share"] for o in OUTPUTS}
    numbers = {f"val_mse_{o}": v for o, v in values.items()} | {
        f"outside_01_{o}": outside[o] for o in ("relu", "linear")
    }
    threshold = f"with MSE, the sigmoid output's val MSE within {SIMILAR:.0%} of the best other output or below it"
    if not all(is_finite(v) for v in values.values()):
        return Verdict("depends", "Not decided: a run diverged.", numbers, threshold)
    best_other = min(values["relu"], values["linear"])
    summary = (
        f"after {m.get('epochs', '?')} epochs with MSE, val MSE {fmt(values['sigmoid'])} with a sigmoid output, "
        f"{fmt(values['relu'])} with relu, "
        f"{fmt(values['linear'])} with linear; linear put {percent(outside['linear'])} of its pixels outside [0, 1]"
    )
    if values["sigmoid"] <= (1 + SIMILAR) * best_other:
        return Verdict(
            "supported",
            f"Supported: {summary}. The sigmoid keeps every pixel in range and loses nothing.",
            numbers,
            threshold,
        )
    return Verdict(
        "contradicted",
        f"Contradicted: {summary}. Another output reconstructs better at this budget.",
        numbers,
        threshold,
    )


def relu_output(m: Measured) -> Verdict:
    mse_ok, bce_ok = _works(m, "relu", "mse"), _works(m, "relu", "bce")
    numbers = {
        "val_mse_relu_mse": _run(m, "relu", "mse")["val_mse"],
        "val_mse_sigmoid_mse": _run(m, "sigmoid", "mse")["val_mse"],
        "val_mse_relu_bce": _run(m, "relu", "bce")["val_mse"],
        "val_mse_sigmoid_bce": _run(m, "sigmoid", "bce")["val_mse"],
    }
    threshold = f"a relu output not a blob and within {SIMILAR:.0%} of the sigmoid output's val MSE with the same loss"
    detail = (
        f"with MSE relu reached val MSE {fmt(numbers['val_mse_relu_mse'])} "
        f"(sigmoid {fmt(numbers['val_mse_sigmoid_mse'])}), "
        f"with BCE {fmt(numbers['val_mse_relu_bce'])} (sigmoid {fmt(numbers['val_mse_sigmoid_bce'])})"
    )
    if mse_ok and bce_ok:
        return Verdict("supported", f"Supported: {detail}.", numbers, threshold)
    if mse_ok:
        return Verdict(
            "depends",
            f"Depends on the loss: {detail}. BCE needs probabilities, which a relu does not give.",
            numbers,
            threshold,
        )
    if bce_ok:
        return Verdict("depends", f"Depends on the loss: {detail}.", numbers, threshold)
    return Verdict("contradicted", f"Contradicted: {detail}.", numbers, threshold)


def bce_appropriate(m: Measured) -> Verdict:
    bce, mse = _run(m, "sigmoid", "bce"), _run(m, "sigmoid", "mse")
    numbers = {"val_mse_bce": bce["val_mse"], "val_mse_mse": mse["val_mse"], "bce_blob": bce["failed"]}
    threshold = f"the BCE model not a blob and its val MSE within {SIMILAR:.0%} of the MSE model's"
    if not bce["failed"] and is_finite(bce["val_mse"]) and bce["val_mse"] <= (1 + SIMILAR) * mse["val_mse"]:
        sentence = (
            f"Supported: on [0, 1] targets the sigmoid + BCE model reached val MSE {fmt(bce['val_mse'])}, the sigmoid "
            f"+ MSE model {fmt(mse['val_mse'])}: BCE does the job even by MSE's measure."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Contradicted: the sigmoid + BCE model reached val MSE {fmt(bce['val_mse'])} against {fmt(mse['val_mse'])} "
        f"with MSE{' and stayed a blob' if bce['failed'] else ''}."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def bce_dims(m: Measured) -> Verdict:
    bce, mse = _run(m, "sigmoid", "bce")["relative_bias"], _run(m, "sigmoid", "mse")["relative_bias"]
    numbers = {"relative_bias_bce": bce, "relative_bias_mse": mse}
    threshold = (
        f"the BCE model's mean output at least {DIMMING:.0%} below the mean target and {DIMMING_GAP:.0%} further "
        "below than the MSE model's"
    )
    if not is_finite(bce, mse):
        return Verdict("depends", "Not decided: a run diverged.", numbers, threshold)
    detail = f"the BCE model's mean pixel is {bce:+.1%} off the targets' mean, the MSE model's {mse:+.1%}"
    if bce <= -DIMMING and bce <= mse - DIMMING_GAP:
        return Verdict("supported", f"Supported: {detail}; BCE dims the image.", numbers, threshold)
    return Verdict(
        "contradicted", f"Contradicted: {detail}; BCE does not dim the image more than MSE here.", numbers, threshold
    )


def mse_as_well(m: Measured) -> Verdict:
    bce, mse = _run(m, "sigmoid", "bce"), _run(m, "sigmoid", "mse")
    numbers = {
        "val_mse_mse": mse["val_mse"],
        "val_mse_bce": bce["val_mse"],
        "sharpness_mse": mse["sharpness"],
        "sharpness_bce": bce["sharpness"],
    }
    threshold = f"the MSE model's val MSE within {SIMILAR:.0%} of the BCE model's and its sharpness at least 90% of it"
    if not is_finite(*numbers.values()):
        return Verdict("depends", "Not decided: a run diverged.", numbers, threshold)
    detail = (
        f"val MSE {fmt(mse['val_mse'])} with MSE and {fmt(bce['val_mse'])} with BCE; sharpness "
        f"{fmt(mse['sharpness'])} and {fmt(bce['sharpness'])}"
    )
    if (
        not mse["failed"]
        and mse["val_mse"] <= (1 + SIMILAR) * bce["val_mse"]
        and mse["sharpness"] >= 0.9 * bce["sharpness"]
    ):
        return Verdict("supported", f"Supported: {detail}.", numbers, threshold)
    return Verdict("contradicted", f"Contradicted: {detail}.", numbers, threshold)


def mostly_binary(m: Measured) -> Verdict:
    share = m["target_extreme_share"]
    bce = m["runs"].get("sigmoid-bce", {}).get("extreme_share", math.nan)
    numbers = {"target_share_near_0_or_1": share, "bce_output_share_near_0_or_1": bce}
    threshold = f"at least {MOSTLY_BINARY:.0%} of the target pixels within {EXTREME} of 0 or 1"
    detail = (
        f"{percent(share)} of the validation pixels lie within {EXTREME} of 0 or 1 (the sigmoid + BCE "
        f"reconstructions: {percent(bce)})"
    )
    if share >= MOSTLY_BINARY:
        return Verdict(
            "supported",
            f"Supported for this data: {detail}. How it 'looks best' is taste; the premise holds.",
            numbers,
            threshold,
        )
    return Verdict(
        "contradicted",
        f"Contradicted for this data: {detail}; these images are not mostly black and white.",
        numbers,
        threshold,
    )


def draw_intensities(m: Measured, figure: Any) -> None:
    low, high = m["histogram_range"]
    edges = torch.linspace(low, high, BINS + 1)
    centres = ((edges[1:] + edges[:-1]) / 2).tolist()
    for index, outputs_shown in enumerate((("sigmoid-bce", "sigmoid-mse"), ("relu-mse", "linear-mse", "relu-bce"))):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.step(centres, [max(c, 0.5) for c in m["target_histogram"]], where="mid", label="targets", color="black")
        for name in outputs_shown:
            if name in m["runs"]:
                axes.step(centres, [max(c, 0.5) for c in m["runs"][name]["histogram"]], where="mid", label=name)
        axes.set_yscale("log")
        axes.axvline(1.0, color="grey", linewidth=0.6)
        axes.set(xlabel="pixel value", ylabel="pixels (log)", title="Intensity histograms")
        axes.legend(fontsize=7)


QUESTION = Question(
    name="keras",
    thread="001_72eef270390d6e00.txt",
    title="The Keras tutorial's 784-32-784 autoencoder: why a sigmoid output and binary cross-entropy, and may one "
    "use ReLU or MSE?",
    experiments=experiments,
    measure=measure,
    claims=(
        Claim(
            "sigmoid-fits",
            "A sigmoid output is appropriate because the pixels are in [0, 1].",
            "the answer",
            sigmoid_fits,
            quick="4 epochs, far from the tutorial's 50",
        ),
        Claim(
            "relu-output",
            "One may use a ReLU output instead of the sigmoid.",
            "the question",
            relu_output,
            quick="4 epochs",
        ),
        Claim(
            "bce-appropriate",
            "BCE is an appropriate loss on [0, 1] targets.",
            "the answer",
            bce_appropriate,
            quick="4 epochs",
        ),
        Claim(
            "bce-dims",
            "BCE systematically underestimates the pixels, needlessly dimming the output.",
            "a comment (jkm)",
            bce_dims,
            quick="4 epochs: an early model's bias need not last",
        ),
        Claim("mse-as-well", "MSE works as well.", "the question and the answer", mse_as_well, quick="4 epochs"),
        Claim("mostly-binary", "MNIST would look best with most pixels 0 or 1.", "a comment (jkm)", mostly_binary),
    ),
    short=("sigmoid-fits", "bce-appropriate", "bce-dims"),
    figures=(
        Figure(
            "Pixel intensities of 500 validation images and of their reconstructions (log counts; grey: 1).",
            draw_intensities,
        ),
    ),
)
