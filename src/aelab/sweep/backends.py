"""Training a sweep's runs: the one place a sweep trains."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aelab.config import RunConfig
from aelab.sweep.grid import GridPoint

log = logging.getLogger(__name__)


def train_runs(configs: Sequence[RunConfig], outs: Sequence[Path], progress: bool = False) -> list[Any]:
    """Train each config into its run folder: the one place a sweep trains. Runs with the same
    layer sizes train stacked (`aelab.ensemble.train_ensemble`), each with its own doctor. A run
    that diverges is marked "diverged" in its folder and the others still train; its result
    carries the message in `extras["diverged"]`."""
    from aelab.doctor import Doctor
    from aelab.ensemble import train_ensemble

    results = train_ensemble(configs, outs, progress=progress, make_callbacks=lambda: [Doctor()])
    for out, result in zip(outs, results, strict=True):
        if "diverged" in result.extras:
            log.warning("%s: %s", out, result.extras["diverged"])
    return results


def _resume_or_restart(point: GridPoint, run_dir: Path, progress: bool) -> None:
    """Finish a run folder left unfinished (killed mid-run) from its last checkpoint. Its doctor
    then checks the finished run from the folder alone."""
    from aelab.doctor import recheck_run
    from aelab.errors import DivergenceError
    from aelab.train import resume

    try:
        resume(run_dir, progress=progress)
    except DivergenceError as error:
        log.warning("%s: %s", run_dir, error)
        return
    recheck_run(run_dir)
