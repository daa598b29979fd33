"""The report: one self-contained HTML page (figures embedded as PNG) for a run or a sweep.

`render_report(path)` reads run folders only (a single run folder, or a sweep folder with
one run folder per grid point), evaluates each run on its validation split with
`aelab.evaluate`, and writes `report.html` into that folder atomically. The page works
offline: no scripts, fonts or images are fetched from anywhere. Figures are drawn on
`matplotlib.figure.Figure` objects, so rendering leaves pyplot and the user's backend alone."""

from __future__ import annotations

import importlib.resources
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aelab.callbacks import Callback
from aelab.data import IN_MEMORY, data_for_run
from aelab.data.datasets import ImagesLike
from aelab.errors import AelabError, RunFolderError
from aelab.evaluate import Evaluation, evaluate_runs
from aelab.report.figures import (
    _run_colours,
    figure_codes,
    figure_denoising,
    figure_elbo,
    figure_generation,
    figure_histograms,
    figure_loss_shapes,
    figure_losses,
    figure_manifold,
    figure_reconstructions,
    figure_training,
)
from aelab.report.headline import failures, headline
from aelab.report.table import METRICS, _seconds_text, best_rows, build_rows, table_cells
from aelab.runs import CONFIG_FILE, REPORT_FILE, atomic_write_text, load_config
from aelab.sweep import Sweep, read_sweep, short_key
from aelab.train import TrainResult
from aelab.train.state import RunState

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
    from aelab.report.loss_explorer import explorer_section

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
            "denoising": figure_denoising(evaluations, labels),
            "training": figure_training(evaluations, labels, colours),
            "losses": figure_losses(evaluations, labels),
            "loss_shapes": figure_loss_shapes(),
            "histograms": figure_histograms(evaluations, labels, colours),
            "codes": figure_codes(evaluations, labels),
            "generation": figure_generation(evaluations, labels),
            "manifold": figure_manifold(evaluations, labels),
            "elbo": figure_elbo(evaluations, labels),
        },
        "vaes": _vae_rows(evaluations, labels),
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


def _vae_rows(evaluations: Sequence[Evaluation], labels: Sequence[str]) -> list[dict[str, Any]]:
    """The VAE table: one row per VAE run, its honest-scale numbers (nats per image, bits per
    dimension where its likelihood is a density, else why not)."""
    rows = []
    for evaluation, label in zip(evaluations, labels, strict=True):
        metrics = evaluation.metrics
        if evaluation.generation is None or "elbo" not in metrics or evaluation.config is None:
            continue
        bpd = metrics.get("bpd", math.nan)
        note = evaluation.generation.bpd_note or ("" if math.isfinite(bpd) else "not measured")
        rows.append(
            {
                "label": label,
                "loss": evaluation.config.train.loss,
                "negative_elbo": f"{-metrics['elbo']:.2f}",
                "recon": f"{metrics['recon']:.2f}",
                "kl": f"{metrics['kl']:.2f}",
                "nll": f"{metrics['nll']:.2f}" if "nll" in metrics else "",
                "samples": metrics.get("nll_samples", ""),
                "bpd": f"{bpd:.4f}" if not note else "",
                "note": note,
                "active": f"{metrics.get('active_units', '')} of {len(metrics.get('kl_per_dim') or [])}",
                "mse": f"{metrics['mse']:.4f}",
            }
        )
    return rows


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
