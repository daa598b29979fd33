"""Evaluation as a function: `Validation` (a run's validation set, built once), `evaluate`
(a model's validation metrics), the metrics themselves (`aelab.evaluate.metrics`) and run
folders evaluated for the report and the results table (`evaluate_run`, `evaluate_runs`)."""

from aelab.evaluate.folder import Evaluation, evaluate_run, evaluate_runs
from aelab.evaluate.validation import (
    CHEAP_METRICS,
    EVAL_CHUNK,
    Validation,
    evaluate,
    model_forward,
    reconstruct,
)

__all__ = [
    "CHEAP_METRICS",
    "EVAL_CHUNK",
    "Evaluation",
    "Validation",
    "evaluate",
    "evaluate_run",
    "evaluate_runs",
    "model_forward",
    "reconstruct",
]
