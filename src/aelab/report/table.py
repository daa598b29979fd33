"""The report's summary table: the metrics it shows (METRICS), one `Row` per run or per group
of seeds (mean and spread), the best value of each column, and the cells as the page shows them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aelab.evaluate import Evaluation
from aelab.evaluate.metrics import COLLAPSE_BLOB_SCORE

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
