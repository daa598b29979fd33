"""Backends: where a sweep's runs train. A backend carries out a `SweepPlan`: it resumes the
plan's unfinished runs and trains its fresh ones (`plan.groups`: the stacked groups and the
runs that train alone), each into its run folder; evaluating the runs and writing the
results is `run_sweep`'s. Backends are chosen by name from `BACKENDS`; "local" trains in
this process, as every sweep did before there were backends, and "ray" on a Ray cluster
(`aelab.sweep.ray_backend`, with the optional extra aelab[ray])."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from aelab.config import RunConfig
from aelab.errors import ConfigError
from aelab.sweep.grid import GridPoint
from aelab.sweep.plan import SweepPlan

log = logging.getLogger(__name__)

MakeCallbacks = Callable[[], Iterable[Any]]  # one run's own aelab.Callbacks, made afresh per run


class Backend(Protocol):
    """What runs a sweep's plan."""

    def run(
        self,
        plan: SweepPlan,
        *,
        progress: bool,
        say: Callable[[str], None],
        make_callbacks: MakeCallbacks | None = None,
        loggers: Iterable[str] = (),
    ) -> None:
        """Finish `plan.unfinished` and train `plan.fresh` into their folders (`plan.run_dir`),
        telling `say` one line as each step starts. A run that diverges is marked so in its
        folder and the others go on. Each run gets `make_callbacks()` (its own callbacks) and
        a doctor, and the loggers named (besides metrics.jsonl). It may leave clean-up going
        (stopping a cluster it started) for `close` to wait for."""
        ...

    def close(self) -> None:
        """Wait for what `run` left going; `run_sweep` calls it once it has evaluated the runs."""
        ...


class LocalBackend:
    """Trains in this process: the unfinished runs one by one from their checkpoints, then
    every fresh run at once through `aelab.train.stacking.train_ensemble`, which stacks each of
    the plan's groups."""

    def run(
        self,
        plan: SweepPlan,
        *,
        progress: bool,
        say: Callable[[str], None],
        make_callbacks: MakeCallbacks | None = None,
        loggers: Iterable[str] = (),
    ) -> None:
        for point in plan.unfinished:
            say(f"resuming {point.name}")
            _resume_or_restart(point, plan.run_dir(point), progress, make_callbacks, loggers)
        if plan.fresh:
            started = time.perf_counter()
            say(f"training {_runs(len(plan.fresh))}: {', '.join(p.name for p in plan.fresh)}")
            configs, outs = [p.config for p in plan.fresh], [plan.run_dir(p) for p in plan.fresh]
            train_runs(configs, outs, progress, make_callbacks, loggers)
            say(f"trained {_runs(len(plan.fresh))} in {time.perf_counter() - started:.1f} s")

    def close(self) -> None:
        """Nothing is left going after `run`."""


def ray_backend(**options: Any) -> Backend:
    """The "ray" backend (`aelab.sweep.ray_backend.RayBackend`), its options passed on. Ray is
    imported only when a sweep runs on it; without Ray installed this raises ConfigError
    saying how to install it."""
    from aelab.sweep.ray_backend import RayBackend

    return RayBackend(**options)


# The backends by name, each built with its options (keyword arguments; "local" has none).
BACKENDS: dict[str, Callable[..., Backend]] = {"local": LocalBackend, "ray": ray_backend}


def get_backend(backend: str | Backend, **options: Any) -> Backend:
    """The backend called `backend` in BACKENDS built with `options` (a Backend passes
    through). Raises ConfigError naming the valid names."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKENDS:
        raise ConfigError(f"unknown sweep backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[backend](**options)


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def train_runs(
    configs: Sequence[RunConfig],
    outs: Sequence[Path],
    progress: bool = False,
    make_callbacks: MakeCallbacks | None = None,
    loggers: Iterable[str] = (),
) -> list[Any]:
    """Train each config into its run folder: the one place a sweep trains. Runs with the same
    layer sizes train stacked (`aelab.train.stacking.train_ensemble`), each with its own doctor and
    `make_callbacks()`. A run that diverges is marked "diverged" in its folder and the others
    still train; its result carries the message in `extras["diverged"]`."""
    from aelab.doctor import Doctor
    from aelab.train.stacking import train_ensemble

    def callbacks() -> list[Any]:
        return [*(make_callbacks() if make_callbacks is not None else ()), Doctor()]

    results = train_ensemble(configs, outs, progress=progress, make_callbacks=callbacks, loggers=loggers)
    for out, result in zip(outs, results, strict=True):
        if "diverged" in result.extras:
            log.warning("%s: %s", out, result.extras["diverged"])
    return results


def _resume_or_restart(
    point: GridPoint,
    run_dir: Path,
    progress: bool,
    make_callbacks: MakeCallbacks | None = None,
    loggers: Iterable[str] = (),
) -> None:
    """Finish a run folder left unfinished (killed mid-run) from its last checkpoint. Its doctor
    then checks the finished run from the folder alone."""
    from aelab.doctor import recheck_run
    from aelab.errors import DivergenceError
    from aelab.train import resume

    try:
        resume(run_dir, progress=progress, callbacks=make_callbacks() if make_callbacks else (), loggers=loggers)
    except DivergenceError as error:
        log.warning("%s: %s", run_dir, error)
        return
    recheck_run(run_dir)
