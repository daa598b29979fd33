"""Thread 000, the blob: a sigmoid 784-100-50-100-784 autoencoder trained with BCE gives a blob
and its first-layer weights go to zero, while MSE works.

The experiment: both losses at equal budget over optimizers (adam, sgd), learning rates and
seeds, the same with ReLU and SELU hidden layers; per epoch the blob score (the plateau and
when it breaks), the first weight matrix's norm and the hidden units' saturation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from aelab.doctor.monitor import COLLAPSE_RATIO, SATURATION_WARNING
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE
from aelab.explain.measure import (
    FIRST_WEIGHT_KEY,
    escape_epoch,
    failed,
    hidden_activations,
    history,
    mean,
    rows,
    select,
    validation_images,
)
from aelab.explain.records import Claim, Experiment, Figure, Measured, Question, Setup, Verdict, fmt, percent
from aelab.explain.records import finite as is_finite
from aelab.losses import bce_from_pixels, binary_entropy, mse_from_pixels
from aelab.sweep import SweepSpec

MODEL = {
    "kind": "dense",
    "hidden_dims": [100],
    "latent_dim": 50,
    "activation": "sigmoid",
    "output_activation": "sigmoid",
    "init": "glorot_uniform",
}
LEARNING_RATES = {"adam": (1e-3, 1e-2), "sgd": (0.1, 1.0)}
ACTIVATION_LR = 1e-3  # adam's rate at which the sigmoid model sits on the plateau: where ReLU/SELU are tried

LOSS_GAP = 0.25  # blob shares of BCE and MSE runs differing by this much: the loss decides
SIMILAR = 0.10  # relative difference in val MSE under which two results are "similar"
WORSE = 1.2  # val MSE this many times higher: "worse"
ASYMMETRY = 1.1  # excess ratio over which a loss is asymmetric
GREY_TARGET, ABOVE, BELOW = 0.8, 0.9, 0.7  # the accepted answer's example


def experiments(setup: Setup) -> list[Experiment]:
    seeds = setup.budget.seeds
    train = {"batch_size": 256, "epochs": setup.budget.epochs}
    found = []
    for optimizer, rates in LEARNING_RATES.items():
        base = setup.base(MODEL, {**train, "optimizer": optimizer})
        grid = {"loss": ("bce", "mse"), "lr": rates, "seed": seeds}
        found.append(
            Experiment(optimizer, f"sigmoid model, {optimizer}: loss x learning rate x seed", SweepSpec(base, grid))
        )
    base = setup.base(MODEL, {**train, "optimizer": "adam", "learning_rate": ACTIVATION_LR})
    grid = {"loss": ("bce", "mse"), "activation": ("relu", "selu"), "seed": seeds}
    found.append(
        Experiment("activation", "the same model with ReLU and SELU hidden layers, adam", SweepSpec(base, grid))
    )
    return found


def _setting(optimizer: str, lr: float) -> str:
    return f"{optimizer} lr {lr:g}"


def _final(row: Mapping[str, Any], key: str) -> float:
    values = history(row, key)
    return values[-1] if values else math.nan


def measure(results: Mapping[str, Any], setup: Setup) -> dict[str, Any]:
    sigmoid = []
    for optimizer in LEARNING_RATES:
        for row in rows(results[optimizer]):
            sigmoid.append({**row, "optimizer": optimizer})
    activation = rows(results["activation"])
    settings = []
    for optimizer, rates in LEARNING_RATES.items():
        for lr in rates:
            for loss in ("bce", "mse"):
                runs = select(sigmoid, optimizer=optimizer, lr=lr, loss=loss)
                settings.append(
                    {
                        "setting": _setting(optimizer, lr),
                        "loss": loss,
                        "failed_share": mean(float(failed(r)) for r in runs),
                        "val_mse": mean(r["mse"] for r in runs),
                        "escape_epochs": [escape_epoch(r) for r in runs],
                    }
                )
    bce_runs, mse_runs = select(sigmoid, loss="bce"), select(sigmoid, loss="mse")
    failed_bce = [r for r in bce_runs if failed(r)]
    failed_sigmoid = [r for r in sigmoid if failed(r)]
    escaped_sigmoid = [r for r in sigmoid if not failed(r)]

    def best(loss: str, optimizer: str | None = None) -> float:
        chosen = [
            s for s in settings if s["loss"] == loss and (optimizer is None or s["setting"].startswith(optimizer))
        ]
        return min((s["val_mse"] for s in chosen if math.isfinite(s["val_mse"])), default=math.nan)

    def both_failed(value: bool) -> list[str]:
        names = []
        for name in dict.fromkeys(s["setting"] for s in settings):
            shares = [s["failed_share"] for s in settings if s["setting"] == name]
            if all((share > 0.5) == value for share in shares):
                names.append(name)
        return names

    at_lr = select(sigmoid, optimizer="adam", lr=ACTIVATION_LR)
    grid = torch.linspace(0.0005, 0.9995, 1999, dtype=torch.float64)
    targets = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    deviation = {}
    for name, loss in (("bce", bce_from_pixels), ("mse", mse_from_pixels)):
        values = loss(
            grid.view(1, -1).expand(len(targets), -1).reshape(-1, 1), targets.repeat_interleave(len(grid)).view(-1, 1)
        )
        argmin = grid[values.view(len(targets), -1).argmin(dim=1)]
        deviation[name] = float((argmin - targets).abs().max())

    def excess(loss: Any, prediction: float) -> float:
        t, p = torch.tensor([[GREY_TARGET]], dtype=torch.float64), torch.tensor([[prediction]], dtype=torch.float64)
        floor = float(binary_entropy(t)) if loss is bce_from_pixels else 0.0
        return float(loss(p, t)) - floor

    weight_final = [_final(r, FIRST_WEIGHT_KEY) for r in (failed_bce or bce_runs)]
    images, _ = validation_images(results["adam"].points[0].config.data, limit=200)
    blobbed_bce = next(iter(failed_bce), None)
    escaped_bce = next((r for r in bce_runs if not failed(r)), None)
    return {
        "settings": settings,
        "blob_share_bce": mean(float(failed(r)) for r in bce_runs),
        "blob_share_mse": mean(float(failed(r)) for r in mse_runs),
        "settings_both_blob": both_failed(True),
        "settings_both_escape": both_failed(False),
        "best_val_mse_bce": best("bce"),
        "best_val_mse_mse": best("mse"),
        "best_val_mse_bce_adam": best("bce", "adam"),
        "best_val_mse_bce_sgd": best("bce", "sgd"),
        "best_val_mse_mse_adam": best("mse", "adam"),
        "best_val_mse_mse_sgd": best("mse", "sgd"),
        "weights_from_blobbed_runs": bool(failed_bce),
        "first_weight_ratio_min": min(weight_final, default=math.nan),
        "first_weight_ratio_max": max(weight_final, default=math.nan),
        "saturation_blobbed": mean(_final(r, "doctor_saturated_share") for r in failed_sigmoid),
        "saturation_escaped": mean(_final(r, "doctor_saturated_share") for r in escaped_sigmoid),
        "activation_lr": ACTIVATION_LR,
        "blob_share_sigmoid_at_lr": mean(float(failed(r)) for r in at_lr),
        "blob_share_relu_at_lr": mean(float(failed(r)) for r in select(activation, activation="relu")),
        "selu_val_mse_bce": mean(r["mse"] for r in select(activation, activation="selu", loss="bce")),
        "selu_val_mse_mse": mean(r["mse"] for r in select(activation, activation="selu", loss="mse")),
        "selu_blob_share": mean(float(failed(r)) for r in select(activation, activation="selu")),
        "bce_excess_above": excess(bce_from_pixels, ABOVE),
        "bce_excess_below": excess(bce_from_pixels, BELOW),
        "mse_above": excess(mse_from_pixels, ABOVE),
        "mse_below": excess(mse_from_pixels, BELOW),
        "minimiser_deviation_bce": deviation["bce"],
        "minimiser_deviation_mse": deviation["mse"],
        "minimiser_grid_step": float(grid[1] - grid[0]),
        # series for the figures
        "curves": [
            {
                "label": f"{r['loss']} {_setting(r['optimizer'], r['lr'])}",
                "blob": history(r, "val_blob_score"),
                "weights": history(r, FIRST_WEIGHT_KEY),
            }
            for r in sigmoid
            if r["seed"] == min(setup.budget.seeds)
        ],
        "hidden": {
            label: hidden_activations(r, images).tolist()
            for label, r in (("blobbed bce run", blobbed_bce), ("escaped bce run", escaped_bce))
            if r is not None
        },
    }


# --- the decisions


def _escapes(m: Measured) -> str:
    parts = []
    for s in m["settings"]:
        epochs = [e for e in s["escape_epochs"] if e is not None]
        low, high = min(epochs, default=0), max(epochs, default=0)
        when = f"{low}" if low == high else f"{low}-{high}"
        seeds = f" ({len(epochs)} of {len(s['escape_epochs'])} seeds)" if len(epochs) < len(s["escape_epochs"]) else ""
        left = f"left it at epoch {when}{seeds}" if epochs else "never left it"
        parts.append(f"{s['loss']} at {s['setting']} {left}")
    return "; ".join(parts)


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "no setting"


def bce_causes_blob(m: Measured) -> Verdict:
    b, s = m["blob_share_bce"], m["blob_share_mse"]
    numbers = {
        "blob_share_bce": b,
        "blob_share_mse": s,
        "settings_both_blob": _names(m["settings_both_blob"]),
        "settings_both_escape": _names(m["settings_both_escape"]),
    }
    threshold = (
        f"the share of runs ending as a blob (blob score < {COLLAPSE_BLOB_SCORE}) differs by at least {LOSS_GAP}"
    )
    if b - s >= LOSS_GAP:
        sentence = (
            f"Supported: at equal budget {percent(b)} of the BCE runs ended as a blob against {percent(s)} of the "
            f"MSE runs. On the plateau: {_escapes(m)}."
        )
        return Verdict("supported", sentence, numbers, threshold)
    if s - b >= LOSS_GAP:
        sentence = (
            f"Contradicted: MSE blobbed more often than BCE ({percent(s)} of its runs against {percent(b)}). "
            f"On the plateau: {_escapes(m)}."
        )
        return Verdict("contradicted", sentence, numbers, threshold)
    sentence = (
        f"Contradicted: BCE and MSE ended as a blob about equally often ({percent(b)} and {percent(s)} of their "
        f"runs). The optimizer and learning rate decided it: both blobbed at {numbers['settings_both_blob']}, both "
        f"escaped at {numbers['settings_both_escape']}. The blob is a plateau every run starts on: {_escapes(m)}."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def bce_ill_suited(m: Measured) -> Verdict:
    b, s = m["best_val_mse_bce"], m["best_val_mse_mse"]
    numbers = {"best_val_mse_bce": b, "best_val_mse_mse": s}
    threshold = f"BCE's best val MSE above {1 + SIMILAR:g} times MSE's best"
    if not is_finite(b, s):
        return Verdict("depends", "Not decided: a best run could not be measured.", numbers, threshold)
    if b > (1 + SIMILAR) * s:
        sentence = (
            f"Supported: BCE's best run reconstructs worse than MSE's (val MSE {fmt(b)} against {fmt(s)}), even "
            "when judged by MSE."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Contradicted: BCE's best run reached val MSE {fmt(b)}, MSE's {fmt(s)}: judged even by MSE's own measure, "
        "BCE is as good on these images, so its modelling assumption did not make the blob."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def weights_collapse(m: Measured) -> Verdict:
    low, high = m["first_weight_ratio_min"], m["first_weight_ratio_max"]
    which = "blobbed BCE runs" if m["weights_from_blobbed_runs"] else "BCE runs (none blobbed)"
    numbers = {"first_weight_ratio_min": low, "first_weight_ratio_max": high, "runs": which}
    threshold = f"the first weight matrix's final norm below {COLLAPSE_RATIO} of its initial norm (the doctor's rule)"
    if not is_finite(low, high):
        return Verdict("depends", "Not decided: the weight norms were not recorded.", numbers, threshold)
    if low < COLLAPSE_RATIO:
        sentence = f"Supported: in the {which} the first layer's weight norm fell to {fmt(low)} of its initial value."
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Contradicted: in the {which} the first layer's weight norm ended between {fmt(low)} and {fmt(high)} times "
        "its initial value; it did not go to zero."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def saturation_cause(m: Measured) -> Verdict:
    blobbed, escaped = m["saturation_blobbed"], m["saturation_escaped"]
    numbers = {"saturation_blobbed": blobbed, "saturation_escaped": escaped}
    threshold = (
        f"at least {SATURATION_WARNING:.0%} of hidden sigmoid values pinned near 0 or 1 in blobbed runs "
        "(the doctor's rule)"
    )
    if not is_finite(blobbed):
        return Verdict("depends", "Not decided: no sigmoid run ended as a blob here.", numbers, threshold)
    if blobbed >= SATURATION_WARNING and not (is_finite(escaped) and escaped >= blobbed):
        sentence = f"Supported: {percent(blobbed)} of the hidden sigmoid values were pinned in the blobbed runs."
        return Verdict("supported", sentence, numbers, threshold)
    against = f" (against {percent(escaped)} in the runs that escaped)" if is_finite(escaped) else ""
    sentence = (
        f"Contradicted: only {percent(blobbed)} of the hidden sigmoid values were pinned near 0 or 1 in the blobbed "
        f"runs{against}: the hidden layers were not saturated, so saturation is not what held them on the plateau."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def relu_helps(m: Measured) -> Verdict:
    sig, relu = m["blob_share_sigmoid_at_lr"], m["blob_share_relu_at_lr"]
    numbers = {"blob_share_sigmoid": sig, "blob_share_relu": relu, "setting": f"adam lr {m['activation_lr']:g}"}
    threshold = "ReLU's blob share at least 0.5 below the sigmoid model's at the same setting"
    if not is_finite(sig, relu):
        return Verdict("depends", "Not decided: the runs could not be measured.", numbers, threshold)
    if sig < 0.5:
        sentence = (
            f"Depends: the sigmoid model did not blob at {numbers['setting']} on this data ({percent(sig)} of its "
            f"runs), so there was nothing for ReLU to fix ({percent(relu)} of the ReLU runs blobbed)."
        )
        return Verdict("depends", sentence, numbers, threshold)
    if relu <= sig - 0.5:
        sentence = (
            f"Supported: at {numbers['setting']}, where {percent(sig)} of the sigmoid runs stayed a blob, "
            f"{percent(relu)} of the ReLU runs did."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = f"Contradicted: ReLU blobbed as well ({percent(relu)} of its runs against {percent(sig)} with sigmoid)."
    return Verdict("contradicted", sentence, numbers, threshold)


def bce_asymmetric(m: Measured) -> Verdict:
    above, below = m["bce_excess_above"], m["bce_excess_below"]
    ratio = above / below if below > 0 else math.inf
    numbers = {
        "bce_excess_at_0.9": above,
        "bce_excess_at_0.7": below,
        "ratio": ratio,
        "mse_at_0.9": m["mse_above"],
        "mse_at_0.7": m["mse_below"],
    }
    threshold = f"BCE's excess for 0.9 over its excess for 0.7 above {ASYMMETRY}"
    if ratio > ASYMMETRY:
        sentence = (
            f"Supported: for a {GREY_TARGET} pixel BCE charges {fmt(above)} nats above its floor for predicting "
            f"{ABOVE} and {fmt(below)} for {BELOW} ({fmt(ratio)} times as much), while MSE charges "
            f"{fmt(m['mse_above'])} "
            f"for both. BCE does count 0.9 as worse: it punishes a step toward the nearer bound harder."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = f"Contradicted: BCE charges {fmt(above)} for {ABOVE} and {fmt(below)} for {BELOW}, about the same."
    return Verdict("contradicted", sentence, numbers, threshold)


def same_minimiser(m: Measured) -> Verdict:
    step = m["minimiser_grid_step"]
    dev_b, dev_m = m["minimiser_deviation_bce"], m["minimiser_deviation_mse"]
    b, s = m["best_val_mse_bce"], m["best_val_mse_mse"]
    rel = abs(b - s) / min(b, s) if is_finite(b, s) and min(b, s) > 0 else math.nan
    numbers = {
        "argmin_deviation_bce": dev_b,
        "argmin_deviation_mse": dev_m,
        "grid_step": step,
        "best_val_mse_bce": b,
        "best_val_mse_mse": s,
        "relative_difference": rel,
    }
    threshold = (
        f"both losses minimal at prediction = target (within the grid step {fmt(step)}); trained results within "
        f"{SIMILAR:.0%}"
    )
    if dev_b > step or dev_m > step:
        sentence = f"Contradicted: the minimisers differ from the target by up to {fmt(max(dev_b, dev_m))}."
        return Verdict("contradicted", sentence, numbers, threshold)
    if is_finite(rel) and rel <= SIMILAR:
        sentence = (
            f"Supported: for every grey level both losses are smallest at prediction = target, and the best trained "
            f"models agree (val MSE {fmt(b)} with BCE, {fmt(s)} with MSE, {percent(rel)} apart)."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Depends on the budget: both losses are smallest at prediction = target, but at this budget the trained "
        f"models differ by {percent(rel)} in val MSE ({fmt(b)} with BCE, {fmt(s)} with MSE): a shared minimum "
        "says nothing about how fast each loss gets there."
    )
    return Verdict("depends", sentence, numbers, threshold)


def selu_similar(m: Measured) -> Verdict:
    b, s, share = m["selu_val_mse_bce"], m["selu_val_mse_mse"], m["selu_blob_share"]
    rel = abs(b - s) / min(b, s) if is_finite(b, s) and min(b, s) > 0 else math.nan
    numbers = {"selu_val_mse_bce": b, "selu_val_mse_mse": s, "relative_difference": rel, "selu_blob_share": share}
    threshold = f"val MSE within {SIMILAR:.0%} and no SELU run a blob"
    if not is_finite(rel):
        return Verdict("depends", "Not decided: the SELU runs could not be measured.", numbers, threshold)
    if rel <= SIMILAR and share == 0:
        sentence = (
            f"Supported: with SELU hidden layers BCE reached val MSE {fmt(b)} and MSE {fmt(s)} ({percent(rel)} apart)."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Contradicted: with SELU hidden layers BCE reached val MSE {fmt(b)} and MSE {fmt(s)} ({percent(rel)} apart; "
        f"{percent(share)} of the SELU runs blobbed)."
    )
    return Verdict("contradicted", sentence, numbers, threshold)


def sgd_worse(m: Measured) -> Verdict:
    bce_ratio = m["best_val_mse_bce_sgd"] / m["best_val_mse_bce_adam"]
    mse_ratio = m["best_val_mse_mse_sgd"] / m["best_val_mse_mse_adam"]
    numbers = {
        "bce_sgd": m["best_val_mse_bce_sgd"],
        "bce_adam": m["best_val_mse_bce_adam"],
        "bce_ratio": bce_ratio,
        "mse_sgd": m["best_val_mse_mse_sgd"],
        "mse_adam": m["best_val_mse_mse_adam"],
        "mse_ratio": mse_ratio,
    }
    threshold = f"BCE's best val MSE under SGD at least {WORSE} times its best under Adam (and than MSE's ratio by 10%)"
    if not is_finite(bce_ratio, mse_ratio):
        return Verdict("depends", "Not decided: a best run could not be measured.", numbers, threshold)
    if bce_ratio < WORSE:
        sentence = (
            f"Contradicted: BCE's best val MSE was {fmt(numbers['bce_sgd'])} with SGD and "
            f"{fmt(numbers['bce_adam'])} with Adam."
        )
        return Verdict("contradicted", sentence, numbers, threshold)
    if bce_ratio >= 1.1 * mse_ratio:
        sentence = (
            f"Supported: SGD left BCE at val MSE {fmt(numbers['bce_sgd'])} against {fmt(numbers['bce_adam'])} with "
            f"Adam ({fmt(bce_ratio)} times), and hurt MSE less ({fmt(mse_ratio)} times)."
        )
        return Verdict("supported", sentence, numbers, threshold)
    sentence = (
        f"Depends on the optimizer, not the loss: SGD left BCE at {fmt(bce_ratio)} times its Adam val MSE and MSE at "
        f"{fmt(mse_ratio)} times. Plain SGD at these learning rates keeps both on the plateau longer."
    )
    return Verdict("depends", sentence, numbers, threshold)


# --- figures


def draw_plateau(m: Measured, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    for curve in m["curves"]:
        axes.plot(
            range(1, len(curve["blob"]) + 1),
            curve["blob"],
            label=curve["label"],
            linestyle="-" if curve["label"].startswith("bce") else "--",
        )
    axes.axhline(COLLAPSE_BLOB_SCORE, color="grey", linewidth=0.8)
    axes.set(xlabel="epoch", ylabel="val blob score", title="The plateau and its escape (grey: blob threshold)")
    axes.legend(fontsize=7)


def draw_weights(m: Measured, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    for curve in m["curves"]:
        axes.plot(
            range(1, len(curve["weights"]) + 1),
            curve["weights"],
            label=curve["label"],
            linestyle="-" if curve["label"].startswith("bce") else "--",
        )
    axes.axhline(COLLAPSE_RATIO, color="grey", linewidth=0.8)
    axes.set(xlabel="epoch", ylabel="first-layer weight norm / initial", title="First-layer weight norm by epoch")
    axes.legend(fontsize=7)


def draw_asymmetry(m: Measured, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    p = torch.linspace(0.5, 0.99, 200, dtype=torch.float64).view(-1, 1)
    t = torch.full_like(p, GREY_TARGET)
    x = p.flatten().numpy()
    axes.plot(x, (bce_from_pixels(p, t) - binary_entropy(t).flatten()).numpy(), label="BCE minus its floor")
    axes.plot(x, mse_from_pixels(p, t).numpy(), label="MSE")
    for x in (ABOVE, BELOW):
        axes.axvline(x, color="grey", linewidth=0.6)
    axes.set(xlabel="prediction", ylabel="loss", title=f"Loss for a target pixel of {GREY_TARGET}")
    axes.legend(fontsize=8)


def draw_hidden(m: Measured, figure: Any) -> None:
    axes = figure.add_subplot(1, 1, 1)
    for label, values in m["hidden"].items():
        axes.hist(values, bins=50, range=(min(values), max(values)), histtype="step", label=label, density=True)
    axes.set(
        xlabel="first hidden layer activation", ylabel="density", title="Hidden activations on 200 validation images"
    )
    axes.legend(fontsize=8)


QUESTION = Question(
    name="blob",
    thread="000_b6a059c425f7da2d.txt",
    title="A sigmoid 784-100-50-100-784 autoencoder trained with cross-entropy gives a blob and its first-layer "
    "weights go to zero, while MSE works: why?",
    experiments=experiments,
    measure=measure,
    claims=(
        Claim(
            "bce-causes-blob",
            "BCE gives a blob; MSE reconstructs.",
            "the question",
            bce_causes_blob,
            quick="one seed and 4 epochs: a run that would leave the plateau later counts as a blob",
        ),
        Claim(
            "bce-ill-suited",
            "Cross-entropy is ill-suited to MNIST because its pixels are not binary; that is why the blob appears.",
            "the accepted answer",
            bce_ill_suited,
            quick="4 epochs: the best runs are far from converged",
        ),
        Claim(
            "weights-collapse", "The first-layer weights converge to a zero matrix.", "the question", weights_collapse
        ),
        Claim("saturation", "Sigmoid saturation is the cause.", "a comment (Jerry)", saturation_cause),
        Claim(
            "relu-helps",
            "ReLU hidden layers avoid the problem.",
            "a comment (Jerry)",
            relu_helps,
            quick="one seed: a single run per activation",
        ),
        Claim(
            "bce-asymmetric",
            "BCE is asymmetric for grey targets: predicting 0.9 for a 0.8 pixel costs more than 0.7.",
            "the accepted answer",
            bce_asymmetric,
        ),
        Claim(
            "same-minimiser",
            "BCE and MSE share the same minimiser (Creswell et al. 2017, arXiv 1708.08487).",
            "a comment (mrgloom)",
            same_minimiser,
            quick="4 epochs: the trained models are compared early",
        ),
        Claim(
            "selu-similar",
            "With SELU hidden layers (Hands-On ML) BCE and MSE give similar results.",
            "the second answer",
            selu_similar,
            quick="one seed and 4 epochs",
        ),
        Claim(
            "sgd-worse",
            "SGD makes BCE worse.",
            "a comment (mrgloom)",
            sgd_worse,
            quick="one seed and 4 epochs: SGD's slow start weighs more",
        ),
    ),
    short=("bce-causes-blob", "weights-collapse", "saturation"),
    figures=(
        Figure(
            "Validation blob score by epoch, seed 0: every run starts on the plateau; which ones leave it, and when.",
            draw_plateau,
        ),
        Figure(
            "The first weight matrix's norm over its initial norm, by epoch (grey: the doctor's collapse line).",
            draw_weights,
        ),
        Figure("The accepted answer's curves: BCE (less its floor) and MSE around a 0.8 pixel.", draw_asymmetry),
        Figure(
            "The first hidden layer's activations, for a BCE run that stayed a blob and one that escaped.", draw_hidden
        ),
    ),
)
