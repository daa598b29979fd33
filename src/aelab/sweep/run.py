"""`run_sweep`: train what a sweep folder lacks, evaluate every run, write the results."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aelab.runs import SWEEP_FILE, atomic_write_text
from aelab.sweep.backends import Backend, MakeCallbacks, _runs, get_backend
from aelab.sweep.grid import GridPoint, SweepSpec
from aelab.sweep.plan import plan_sweep, sweep_for
from aelab.sweep.results import write_results


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
    backend: str | Backend = "local",
    make_callbacks: MakeCallbacks | None = None,
    loggers: Iterable[str] = (),
) -> SweepResult:
    """Train every grid point of `spec` that is not finished yet into `out/NAME`, evaluate all
    runs on their validation split (`aelab.evaluate.evaluate_run`) and write results.csv and
    results.json. `echo` receives one line per run as the sweep goes.

    `out` may be a sweep folder made with this spec (or holding it among the specs it was
    extended with): its unfinished runs are finished. One made with another spec is refused
    with a RunFolderError, unless `extend` adds `spec` to the sweep: the results then cover
    the runs of every spec. A folder that holds other things and no sweep.yaml is refused.

    backend: where the runs train, a name in `aelab.sweep.backends.BACKENDS` ("local": in this
        process) or a `Backend`.
    make_callbacks: called once per run trained or resumed, for `aelab.Callback`s of its own
        (each run also gets a doctor); loggers: names in `aelab.LOGGERS` for every run folder
        (besides metrics.jsonl), as `aelab.train`'s. With "tensorboard", every run folder also
        gets the sweep's HParams dashboard (`aelab.callbacks.tensorboard.write_sweep_hparams`), the runs
        finished before included, so `tensorboard --logdir OUT` compares them."""
    from aelab.callbacks import check_loggers
    from aelab.evaluate import evaluate_runs
    from aelab.train.state import resolve_device

    loggers = check_loggers(loggers)
    say = echo or (lambda line: None)
    out = Path(out)
    runner = get_backend(backend)
    spec.points()  # a grid point that is not a valid config is refused before anything is written
    plan = plan_sweep(out, sweep_for(out, spec, extend))
    for device in sorted({point.config.train.device for point in plan.fresh}):
        resolve_device(device)  # train.device cuda on a machine without one fails here, not in the first run
    points = list(plan.points)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(plan.sweep.to_dict(), sort_keys=False))
    counts = f"{len(plan.done)} done before, {len(plan.unfinished)} to resume, {len(plan.fresh)} to train"
    say(f"sweep {out}: {_runs(len(points))} ({counts})")
    close = getattr(runner, "close", None)  # a backend written before backends had close()
    try:
        runner.run(plan, progress=progress, say=say, make_callbacks=make_callbacks, loggers=loggers)
        evaluations = evaluate_runs([out / p.name for p in points])  # while the backend cleans up
    finally:
        if close is not None:
            close()
    rows = []
    for point, evaluation in zip(points, evaluations, strict=True):
        row = {"run": point.name, **point.values, **evaluation.summary()}
        rows.append(row)
        say(evaluation.line())
    write_results(out, rows)
    if "tensorboard" in loggers:  # the HParams dashboard: each run's grid values against its results row
        from aelab.callbacks.tensorboard import write_sweep_hparams

        write_sweep_hparams([out / p.name for p in points], [p.values for p in points], rows)
    names = [[point.name for point in points] for points in (plan.fresh, plan.unfinished, plan.done)]
    return SweepResult(out, points, rows, evaluations, *names)
