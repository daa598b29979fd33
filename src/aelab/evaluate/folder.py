"""Evaluation of trained run folders on their validation split, on equal footing.

`evaluate_run(run_dir)` rebuilds the model from the folder alone and scores it with
`aelab.evaluate.evaluate`, the function training evaluates with. A finished run's metrics are
those of its metrics.jsonl row for the weights it saved, when that row holds every metric (the
last epoch's always does): the evaluation training did is reused, not repeated. It adds the
linear-probe accuracy of the codes, and keeps what the report draws: a fixed set of
reconstructions, the output-intensity histogram and a 2-D PCA view of the codes. The pixels
are the likelihood's mean (the cb mean for cb runs) throughout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aelab.config import DataConfig, RunConfig
from aelab.data import IN_MEMORY, ImageData, data_for_run, load_dataset, prepare_batch
from aelab.data.datasets import ImagesLike
from aelab.errors import AelabError
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE, is_collapsed, probe_accuracy
from aelab.evaluate.regularized import NOISY_VALIDATION_SEED_OFFSET, denoising_metrics, reconstruct_noisy
from aelab.evaluate.validation import Validation, evaluate, model_forward, reconstruct
from aelab.evaluate.variational import CHEAP_VARIATIONAL_METRICS, FULL_VARIATIONAL_METRICS, bpd_problem
from aelab.findings import Finding, read_findings
from aelab.likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from aelab.nn.variational import VariationalAutoencoder, interpolations, is_variational, manifold_grid, prior_samples
from aelab.regularizers import parse_noise
from aelab.runs import load_config, load_run, model_digest, read_metrics, read_status

log = logging.getLogger(__name__)

SAMPLE_COUNT = 10  # validation images shown in the reconstruction grid
PROBE_TRAIN_LIMIT = 5000  # training codes the linear probe is fitted on
HISTOGRAM_BINS = 50
CODE_POINTS = 2000  # validation codes drawn in the PCA view

# Mean output this far below the data's mean (as a share of it) counts as a dimmed image.
DIM_SHARE = 0.25


@dataclass
class Generation:
    """What a VAE generates, as pixels (its likelihood's mean): samples from the prior
    (N, C, H, W), interpolations between pairs of validation codes (P, steps, C, H, W), and
    for a 2-D code the latent manifold grid (side, side, C, H, W), else None."""

    samples: torch.Tensor
    interpolations: torch.Tensor
    manifold: torch.Tensor | None
    bpd_note: str | None = None  # why the run has no bits per dimension (`bpd_problem`), or None


@dataclass
class Evaluation:
    """One run folder, evaluated. `metrics` are validation-split numbers from the final weights;
    `error` says why there are none (the run never finished, its files are damaged)."""

    run_dir: Path
    config: RunConfig | None
    status: dict[str, Any]
    history: list[dict[str, Any]]
    findings: list[Finding]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    sample_targets: torch.Tensor | None = None  # (SAMPLE_COUNT, C, H, W)
    sample_pixels: torch.Tensor | None = None  # (SAMPLE_COUNT, C, H, W), same images
    sample_noisy: torch.Tensor | None = None  # a denoising run's corrupted copies of the same images
    sample_denoised: torch.Tensor | None = None  # and its reconstructions from them
    histogram: np.ndarray | None = None  # (HISTOGRAM_BINS,) share of output pixels per bin
    data_histogram: np.ndarray | None = None  # (HISTOGRAM_BINS,) share of target pixels per bin
    histogram_edges: np.ndarray | None = None  # (HISTOGRAM_BINS + 1,)
    codes_2d: np.ndarray | None = None  # (M, 2) validation codes projected on their top 2 PCs
    code_labels: np.ndarray | None = None  # (M,) labels, or None
    explained: tuple[float, float] | None = None  # variance share of the 2 PCs
    generation: Generation | None = None  # a VAE's pictures, None for other models

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def state(self) -> str:
        return str(self.status.get("state", "missing"))

    @property
    def collapsed(self) -> bool:
        """Outputs nearly the same image whatever the input: blob score under
        `aelab.evaluate.metrics.COLLAPSE_BLOB_SCORE`, the threshold of the doctor's blob check."""
        return is_collapsed(self.metrics.get("blob_score", math.nan))

    @property
    def dimmed(self) -> bool:
        bias, mean = self.metrics.get("intensity_bias", math.nan), self.metrics.get("data_mean", math.nan)
        return math.isfinite(bias) and math.isfinite(mean) and mean > 0 and bias < -DIM_SHARE * mean

    def _likelihood_note(self) -> str | None:
        """Why the run's likelihood dims images (`Likelihood.dimming_note`), if it says."""
        if self.config is None or self.config.train.loss not in LIKELIHOODS:
            return None
        return LIKELIHOODS[self.config.train.loss].dimming_note

    def problems(self) -> list[str]:
        """Plain-words failures of this run: not finished, collapsed, dimmed, non-finite."""
        found = []
        if self.error:
            found.append(f"no model to evaluate: {self.error}")
        elif self.state != "finished":
            found.append(f"run state is {self.state!r}, not finished")
        if self.collapsed:
            found.append(
                f"collapsed to a constant image: its reconstructions vary {self.metrics['blob_score']:.3f} times as "
                f"much as the data (blob score, under {COLLAPSE_BLOB_SCORE}); it shows about the same picture "
                "whatever the input"
            )
        if self.dimmed:
            share = -self.metrics["intensity_bias"] / self.metrics["data_mean"]
            text = (
                f"dims the image: mean output {self.metrics['output_mean']:.3f} against the data's "
                f"{self.metrics['data_mean']:.3f} ({share:.0%} darker)"
            )
            note = self._likelihood_note()
            if note is not None:
                text += f"; {note}"
            found.append(text)
        bad = [k for k in ("mse", "ssim") if k in self.metrics and not math.isfinite(self.metrics[k])]
        if bad:
            found.append(f"non-finite {', '.join(bad)}: the outputs hold NaN or Inf")
        return found

    def summary(self) -> dict[str, Any]:
        """One results row: state, epochs, training time (seconds of training and validation; a
        run trained stacked with others is charged its share of the group's step), and every metric."""
        seconds = sum(float(row.get("seconds", 0.0)) for row in self.history)
        last = self.history[-1] if self.history else {}
        return {
            "state": self.state,
            "epochs_done": len(self.history),
            "best_epoch": self.status.get("best_epoch"),
            "train_seconds": round(seconds, 2),
            "train_loss": last.get("train_loss", math.nan),
            **self.metrics,
        }

    def line(self) -> str:
        """One line for a terminal."""
        if not self.metrics:
            return f"{self.name}: {self.state}, {self.error or 'no metrics'}"
        m = self.metrics
        text = (
            f"{self.name}: val mse {m['mse']:.4f}  ssim {m['ssim']:.3f}  blob {m['blob_score']:.2f}  "
            f"sharpness {m['sharpness']:.2f}  bias {m['intensity_bias']:+.3f}"
        )
        if math.isfinite(m.get("probe_accuracy", math.nan)):
            text += f"  probe {m['probe_accuracy']:.2f}"
        problems = self.problems()
        return text + (f"  <- {problems[0].split(':')[0].upper()}" if problems else "")


class _DataCache:
    """Datasets by DataConfig, and their validation sets, so a sweep over losses reads its images
    and builds its validation set once."""

    def __init__(self) -> None:
        self._loaded: dict[DataConfig, ImageData] = {}
        self._validations: dict[tuple[int, DataConfig, int | None], tuple[ImageData, Validation]] = {}

    def get(self, config: DataConfig) -> ImageData:
        if config not in self._loaded:
            self._loaded[config] = load_dataset(config)
        return self._loaded[config]

    def validation(self, data: ImageData, config: DataConfig, seed: int) -> Validation:
        """The validation set training built for these data and settings (`Validation.build`),
        built once for the runs that share it (a sweep's runs mostly do)."""
        key = (id(data), config, seed if config.binarize != "none" else None)  # the seed draws binarised targets
        if key not in self._validations:  # the data are kept with it, so their id stays theirs
            self._validations[key] = (data, Validation.build(data, config, seed))
        return self._validations[key][1]


def evaluate_run(run_dir: str | Path, data: ImagesLike | None = None) -> Evaluation:
    """Evaluate one run folder; never raises for a damaged or unfinished folder (see `error`).
    `data`: the images it was trained on instead of loading config.data's dataset; a run
    trained on images passed in memory needs them (the same ones: their fingerprint is checked)."""
    return _evaluate(Path(run_dir), _DataCache(), data)


def evaluate_runs(run_dirs: Sequence[str | Path], data: ImagesLike | None = None) -> list[Evaluation]:
    """Evaluate several run folders, reading each dataset once; `data` as for `evaluate_run`,
    for every run."""
    cache = _DataCache()
    return [_evaluate(Path(run_dir), cache, data) for run_dir in run_dirs]


def _evaluate(run_dir: Path, cache: _DataCache, data: ImagesLike | None) -> Evaluation:
    status, findings = read_status(run_dir), read_findings(run_dir)
    try:
        history = read_metrics(run_dir)
    except AelabError as error:
        history, status = [], {**status, "error": str(error)}
    try:
        config: RunConfig | None = load_config(run_dir)
    except AelabError:
        config = None
    evaluation = Evaluation(run_dir, config, status, history, findings)
    try:
        run = load_run(run_dir)
        if data is None and run.config.data.name != IN_MEMORY:
            data = cache.get(run.config.data)
        else:
            call = f"aelab.report.render_report({str(run_dir)!r}, data=images)"
            data = data_for_run(run.config.data, data, str(run_dir), call)
    except AelabError as error:
        evaluation.error = str(error)
        return evaluation
    config = evaluation.config = run.config
    model = run.model.to("cpu").eval()
    likelihood = get_likelihood(config.train.loss)
    validation = cache.validation(data, config.data, config.train.seed + 2)  # as training built it

    targets = validation.targets  # (M, C, H, W), prepared exactly as during training
    saved = _saved_row(run_dir, status, history, config)
    measured = saved if saved is not None else evaluate(model, likelihood, validation, full=True)
    # "val_loss" (the run's own loss) keeps its prefix: a bare "loss" would read as the loss's name.
    metrics = {
        key if key.startswith("val_loss") else key.removeprefix("val_"): value for key, value in measured.items()
    }
    pixels, _ = reconstruct(model_forward(model), likelihood, targets)
    metrics["output_mean"] = float(pixels.mean())
    metrics["data_mean"] = float(targets.mean())
    with torch.no_grad():
        codes = _encode(model, targets)
    metrics["probe_accuracy"] = _probe(model, config, data, codes)
    evaluation.metrics = metrics

    index = _sample_indices(data, SAMPLE_COUNT)
    evaluation.sample_targets = targets[index].cpu()
    evaluation.sample_pixels = pixels[index].cpu()
    _denoising(evaluation, model, likelihood, validation, saved)
    top = max(1.0, validation.data_range)
    edges = np.linspace(0.0, top, HISTOGRAM_BINS + 1)
    evaluation.histogram_edges = edges
    evaluation.histogram = _shares(pixels, edges)
    evaluation.data_histogram = _shares(targets, edges)
    shown = codes[:CODE_POINTS]
    evaluation.codes_2d, evaluation.explained = _pca_2d(shown)
    if data.val_labels is not None:
        evaluation.code_labels = data.val_labels[: shown.shape[0]].numpy()
    if is_variational(model):
        evaluation.generation = _generation(model, targets[index])  # type: ignore[arg-type]
        evaluation.generation.bpd_note = bpd_problem(likelihood, validation)
    return evaluation


def _denoising(
    evaluation: Evaluation,
    model: torch.nn.Module,
    likelihood: Likelihood,
    validation: Validation,
    saved: dict[str, float] | None,
) -> None:
    """A denoising run's scores on corrupted validation inputs (as training measured them,
    else measured here) and its sample of noisy inputs and their reconstructions."""
    config = evaluation.config
    noise = parse_noise(config.train.noise) if config is not None else None
    if noise is None or evaluation.sample_targets is None:
        return
    seed = config.train.seed + NOISY_VALIDATION_SEED_OFFSET  # as training scored it
    if saved is None or "val_noisy_mse" not in saved:
        measured = denoising_metrics(model, likelihood, validation, noise, seed)
        evaluation.metrics.update({key.removeprefix("val_"): value for key, value in measured.items()})
    evaluation.sample_noisy, evaluation.sample_denoised = reconstruct_noisy(
        model, likelihood, evaluation.sample_targets, noise, seed, validation.data_range
    )


GENERATED_SAMPLES = 32
INTERPOLATION_STEPS = 10
MANIFOLD_SIDE = 15
GENERATION_SEED = 20261


def _generation(model: VariationalAutoencoder, shown: torch.Tensor) -> Generation:
    """A VAE's pictures for the report: prior samples from a fixed seed, and interpolations
    between the shown validation images taken in pairs."""
    generator = torch.Generator().manual_seed(GENERATION_SEED)
    pairs = shown[: 2 * min(4, shown.shape[0] // 2)]
    latent = model.encode(shown[:1]).shape[1]
    return Generation(
        samples=prior_samples(model, GENERATED_SAMPLES, generator).cpu(),
        interpolations=interpolations(model, pairs, INTERPOLATION_STEPS).cpu(),
        manifold=manifold_grid(model, MANIFOLD_SIDE).cpu() if latent == 2 else None,
    )


def _saved_row(
    run_dir: Path, status: dict[str, Any], history: list[dict[str, Any]], config: RunConfig
) -> dict[str, float] | None:
    """The validation metrics training measured for the weights a finished run saved (the best
    epoch's with early stopping, else the last epoch's), when that row holds every metric that
    `evaluate(full=True)` gives and model.safetensors is still the file training wrote (its
    SHA-256 in status.json); None otherwise (evaluate again)."""
    if status.get("state") != "finished" or not history:
        return None
    if status.get("model_sha256") is None or status["model_sha256"] != model_digest(run_dir):
        return None  # written before aelab recorded the digest, or the weights were changed since
    epoch = int(status.get("best_epoch", len(history))) if config.train.patience is not None else len(history)
    if not 1 <= epoch <= len(history):
        return None
    row = history[epoch - 1]
    if any(key not in row for key in FULL_METRICS):
        return None
    saved = {key: float(row[key]) for key in FULL_METRICS}
    # a VAE's own numbers (aelab.evaluate.variational), as training recorded them
    saved.update({key: row[key] for key in VARIATIONAL_METRICS if key in row})
    return saved


# Every key `evaluate(full=True)` returns, in its order.
FULL_METRICS = (
    "val_loss", "val_loss_excess", "val_mse", "val_mae", "val_bce", "val_bce_excess", "val_cb_nll", "val_psnr",
    "val_ssim", "val_intensity_bias", "val_blob_score", "val_sharpness",
)  # fmt: skip


VARIATIONAL_METRICS = CHEAP_VARIATIONAL_METRICS + FULL_VARIATIONAL_METRICS


def _encode(model: torch.nn.Module, images: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([model.encode(images[i : i + chunk]) for i in range(0, images.shape[0], chunk)]).cpu()


def _probe(model: torch.nn.Module, config: RunConfig, data: ImageData, val_codes: torch.Tensor) -> float:
    """Linear-probe accuracy of the codes, NaN without labels."""
    if data.train_labels is None or data.val_labels is None:
        return math.nan
    limit = min(PROBE_TRAIN_LIMIT, data.train.shape[0])
    generator = torch.Generator().manual_seed(config.train.seed + 3)
    images = prepare_batch(data.train[:limit], data.scale, config.data.binarize, config.data.threshold, generator)
    with torch.no_grad():
        train_codes = _encode(model, images)
    if not (torch.isfinite(train_codes).all() and torch.isfinite(val_codes).all()):
        return math.nan
    return probe_accuracy(train_codes, data.train_labels[:limit], val_codes, data.val_labels)


def _sample_indices(data: ImageData, count: int) -> torch.Tensor:
    """The first validation image of each label (digits 0-9 for MNIST), then the next images,
    so the reconstruction grid shows every class; the first `count` images without labels."""
    total = data.val.shape[0]
    if data.val_labels is None:
        return torch.arange(min(count, total))
    chosen: list[int] = []
    for label in torch.unique(data.val_labels).tolist():
        chosen.append(int((data.val_labels == label).nonzero()[0]))
        if len(chosen) == count:
            break
    chosen.sort()
    rest = [i for i in range(total) if i not in set(chosen)]
    return torch.tensor((chosen + rest)[:count])


def _shares(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    flat = values.detach().double().cpu().numpy().ravel()
    flat = np.clip(flat[np.isfinite(flat)], edges[0], edges[-1])
    counts, _ = np.histogram(flat, bins=edges)
    return counts / max(1, counts.sum())


def _pca_2d(codes: torch.Tensor) -> tuple[np.ndarray, tuple[float, float]]:
    """(M, 2) projection on the two principal components and their shares of the variance."""
    array = codes.double().numpy()
    if not np.isfinite(array).all() or array.shape[0] < 2:
        return np.zeros((array.shape[0], 2)), (math.nan, math.nan)
    centred = array - array.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    if projected.shape[1] < 2:  # a 1-D code
        projected = np.hstack([projected, np.zeros((projected.shape[0], 1))])
    variance = singular**2
    total = variance.sum()
    shares = (variance[:2] / total).tolist() if total > 0 else [0.0, 0.0]
    shares += [0.0] * (2 - len(shares))
    return projected, (float(shares[0]), float(shares[1]))
