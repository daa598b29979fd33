"""Reading the numbers the explain experiments need from their sweep folders: results rows,
per-epoch histories, and a trained model's outputs on the validation images; and the
`FirstLayerNorm` callback, which records the first weight matrix's norm every epoch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from aelab.callbacks import Callback
from aelab.config import DataConfig
from aelab.data import load_dataset
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE
from aelab.runs import load_run, read_metrics

FIRST_WEIGHT_KEY = "explain_first_weight_ratio"  # metrics.jsonl: first weight matrix's norm / its initial norm
PROBE_IMAGES = 500  # validation images the figures and output statistics use


class FirstLayerNorm(Callback):
    """Adds FIRST_WEIGHT_KEY to every epoch's row: the Frobenius norm of the model's first weight
    matrix over its norm at initialisation (rebuilt from the run's seed, so a resumed run
    reports what the uninterrupted one would)."""

    def __init__(self) -> None:
        self.initial: float | None = None

    def on_train_start(self, trainer: Any, run_dir: Path | None) -> None:
        from aelab.nn.models import build_model

        config = trainer.config
        fresh = build_model(config.model, trainer.data.image_shape, seed=config.train.seed, loss=config.train.loss)
        self.initial = float(_first_weight(fresh).detach().norm())

    def on_epoch_end(self, trainer: Any, row: Mapping[str, Any], run_dir: Path | None) -> Mapping[str, Any]:
        norm = float(_first_weight(trainer.model).detach().norm())
        return {FIRST_WEIGHT_KEY: norm / self.initial if self.initial else math.nan}


def _first_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(p for p in model.parameters() if p.ndim >= 2)


def failed(row: Mapping[str, Any]) -> bool:
    """A run that gave no usable reconstruction: collapsed to a blob (the report's and doctor's
    threshold, COLLAPSE_BLOB_SCORE) or not finished (diverged)."""
    score = row.get("blob_score", math.nan)
    return row.get("state") != "finished" or not math.isfinite(score) or score < COLLAPSE_BLOB_SCORE


def rows(result: Any) -> list[dict[str, Any]]:
    """A SweepResult's rows, each with its run folder under "path"."""
    return [{**row, "path": result.out / row["run"]} for row in result.rows]


def select(table: Iterable[Mapping[str, Any]], **values: Any) -> list[Mapping[str, Any]]:
    """The rows whose grid values equal `values`."""
    return [row for row in table if all(row.get(k) == v for k, v in values.items())]


def mean(values: Iterable[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else math.nan


def history(row: Mapping[str, Any], key: str) -> list[float]:
    """One metric of a run by epoch (from its metrics.jsonl)."""
    return [float(epoch.get(key, math.nan)) for epoch in read_metrics(Path(row["path"]))]


def escape_epoch(row: Mapping[str, Any]) -> int | None:
    """The first epoch whose validation blob score reached COLLAPSE_BLOB_SCORE (the run left the
    blob plateau), or None when it never did."""
    for epoch, score in enumerate(history(row, "val_blob_score"), 1):
        if math.isfinite(score) and score >= COLLAPSE_BLOB_SCORE:
            return epoch
    return None


def validation_images(data: DataConfig, limit: int = PROBE_IMAGES) -> tuple[torch.Tensor, float]:
    """The first `limit` validation images as the model sees them (floats, the data's scale
    applied, not binarised), and the number to divide them by for [0, 1] units (255 for 0..255
    pixels left unscaled by data.scale none, else 1)."""
    images = load_dataset(data)
    auto = images if data.scale == "auto" else load_dataset(dataclasses.replace(data, scale="auto"))
    return images.val[:limit].float() * images.scale, images.scale / auto.scale


def outputs(row: Mapping[str, Any], images: torch.Tensor) -> torch.Tensor:
    """The pixels a trained run shows for `images` (its likelihood's mean: `Autoencoder.pixels`)."""
    run = load_run(Path(row["path"]))
    with torch.no_grad():
        return run.model.pixels(run.model(images))


def hidden_activations(row: Mapping[str, Any], images: torch.Tensor) -> torch.Tensor:
    """The first hidden layer's activations of a dense run for `images`, flattened."""
    run = load_run(Path(row["path"]))
    model = run.model
    with torch.no_grad():
        return model.hidden_activation(model.encoder[0](images.flatten(1))).flatten()
