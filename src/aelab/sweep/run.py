"""`run_sweep`: train what a sweep folder lacks, evaluate every run, write the results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aelab.errors import AelabError, RunFolderError
from aelab.runs import SWEEP_FILE, atomic_write_text, load_config, read_status
from aelab.sweep.backends import _resume_or_restart, train_runs
from aelab.sweep.grid import GridPoint, SweepSpec, _config_difference
from aelab.sweep.plan import DONE_STATES, _sweep_for
from aelab.sweep.results import write_results

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What `run_sweep` did: the sweep folder, its points, the results rows, and the names of
    the runs it trained, resumed and skipped (finished before)."""

    out: Path
    points: list[GridPoint]
    rows: list[dict[str, Any]]
    evaluations: list[Any] = field(default_factory=list)  # aelab.evaluate.Evaluation per point
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    extend: bool = False,
) -> SweepResult:
    """Train every grid point of `spec` that is not finished yet into `out/NAME`, evaluate all
    runs on their validation split (`aelab.evaluate.evaluate_run`) and write results.csv and
    results.json. `echo` receives one line per run as the sweep goes.

    `out` may be a sweep folder made with this spec (or holding it among the specs it was
    extended with): its unfinished runs are finished. One made with another spec is refused
    with a RunFolderError, unless `extend` adds `spec` to the sweep: the results then cover
    the runs of every spec. A folder that holds other things and no sweep.yaml is refused."""
    from aelab.evaluate import evaluate_runs

    say = echo or (lambda line: None)
    out = Path(out)
    spec.points()  # a grid point that is not a valid config is refused before anything is written
    sweep = _sweep_for(out, spec, extend)
    points = sweep.points()

    fresh, unfinished, skipped = [], [], []
    for point in points:
        run_dir = out / point.name
        if not run_dir.exists() or not any(run_dir.iterdir()):
            fresh.append(point)
            continue
        try:
            found = load_config(run_dir)
        except AelabError:
            found = None
        if found is not None and found != point.config:
            raise RunFolderError(
                f"run folder {run_dir} holds another config ({_config_difference(point.config, found)}); "
                "choose another --out"
            )
        state = read_status(run_dir).get("state")
        (skipped if state in DONE_STATES else unfinished).append(point)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    counts = f"{len(skipped)} done before, {len(unfinished)} to resume, {len(fresh)} to train"
    say(f"sweep {out}: {_runs(len(points))} ({counts})")
    for point in unfinished:
        say(f"resuming {point.name}")
        _resume_or_restart(point, out / point.name, progress)
    if fresh:
        started = time.perf_counter()
        say(f"training {_runs(len(fresh))}: {', '.join(p.name for p in fresh)}")
        train_runs([p.config for p in fresh], [out / p.name for p in fresh], progress)
        say(f"trained {_runs(len(fresh))} in {time.perf_counter() - started:.1f} s")

    evaluations = evaluate_runs([out / p.name for p in points])
    rows = []
    for point, evaluation in zip(points, evaluations, strict=True):
        row = {"run": point.name, **point.values, **evaluation.summary()}
        rows.append(row)
        say(evaluation.line())
    write_results(out, rows)
    return SweepResult(
        out, points, rows, evaluations, [p.name for p in fresh], [p.name for p in unfinished], [p.name for p in skipped]
    )


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"
