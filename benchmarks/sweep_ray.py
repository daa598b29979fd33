"""The ray sweep backend against the local one on this machine, side by side in one process.

Two grids, each trained into a fresh sweep folder by both backends in turn. The time is the
whole `run_sweep`, what `aelab compare` waits for before it draws the report: the training, then
the evaluation of every run and the results files. The ray backend's Ray stops while the
runs are evaluated, so its stop counts only where it takes longer than that evaluation:

    default grid     `aelab compare`'s 8 runs (4 losses x 2 activations, 784-100-50-100-784 on
                     mnist-10k, 20 epochs) on 1 thread. They stack, so Ray trains them as one
                     task on 1 CPU doing what the local backend does: the difference is Ray's
                     overhead (start-up, task dispatch, file return, shutdown).
    separate runs    the same 8 runs with train.engine autograd, which do not stack: the local
                     backend trains them one after another on 1 thread, Ray 2 at a time, one
                     per CPU of a local Ray with 2 CPUs.

The local Ray is started and stopped by each Ray sweep, as `aelab compare --backend ray` does,
so its start-up is part of the time. Afterwards every Ray run's metrics are checked against the
local run's, epoch by epoch.

The separate runs are also trained by a third backend written here, `PoolBackend`: two spawned
Python processes of the standard library's `ProcessPoolExecutor`, each training one run at a
time, with no cluster to start. It is what any backend using both CPUs could do on this
machine, cluster start-up aside: its ratio to the local backend is the ceiling that two
single-thread runs sharing these two cores (their caches and memory) allow, and Ray's ratio
to it is Ray's own cost.

    python benchmarks/sweep_ray.py            # about 8 minutes on a quiet 2-core machine
    python benchmarks/sweep_ray.py --quick    # 2 epochs on 2,000 images: a smoke check
    python benchmarks/sweep_ray.py --seeds 2  # the separate runs with 2 seeds each: 16 runs
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from aelab.config import RunConfig
from aelab.runs import read_metrics
from aelab.sweep import DEFAULT_BASE, DEFAULT_GRID, LocalBackend, SweepSpec, run_sweep
from aelab.sweep.backends import train_runs
from aelab.sweep.plan import SweepPlan
from aelab.sweep.ray_backend import RayBackend


def _train_group(configs: list[dict[str, Any]], outs: list[str]) -> None:
    train_runs([RunConfig.from_dict(c) for c in configs], [Path(o) for o in outs])


class PoolBackend:
    """Each of the plan's fresh groups trained by `train_runs` in one of `processes` spawned
    processes (fresh folders only: no resume, no callbacks, no loggers)."""

    def __init__(self, processes: int = 2) -> None:
        self.processes = processes

    def run(
        self,
        plan: SweepPlan,
        *,
        progress: bool,
        say: Callable[[str], None],
        make_callbacks: Any = None,
        loggers: Iterable[str] = (),
    ) -> None:
        assert not plan.unfinished, "PoolBackend trains fresh sweeps only"
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a Ray worker is
        with ProcessPoolExecutor(self.processes, mp_context=context) as pool:
            jobs = [
                pool.submit(_train_group, [p.config.to_dict() for p in group], [str(plan.run_dir(p)) for p in group])
                for group in plan.groups
            ]
            for job in jobs:
                job.result()

    def close(self) -> None:
        pass


def spec(epochs: int, images: int | None, engine: str, seeds: int = 1) -> SweepSpec:
    base = DEFAULT_BASE.replace(data={"train_limit": images}, train={"epochs": epochs, "threads": 1, "engine": engine})
    grid = dict(DEFAULT_GRID)
    if seeds > 1:
        grid["seed"] = tuple(range(seeds))
    return SweepSpec(base, grid)


def sweep_seconds(grid: SweepSpec, out: Path, backend) -> float:
    """Seconds of `run_sweep(grid, out, backend=backend)` into a fresh folder."""
    started = time.perf_counter()
    run_sweep(grid, out, backend=backend)
    return time.perf_counter() - started


def largest_difference(ray_out: Path, local_out: Path) -> float:
    """The largest relative difference of any run's per-epoch validation loss between the two folders."""
    worst = 0.0
    for local_run in sorted(path for path in local_out.iterdir() if path.is_dir()):
        ours, theirs = read_metrics(ray_out / local_run.name), read_metrics(local_run)
        assert len(ours) == len(theirs), local_run.name
        for mine, local in zip(ours, theirs, strict=True):
            worst = max(worst, abs(mine["val_loss"] - local["val_loss"]) / max(1.0, abs(local["val_loss"])))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of sweeps per grid, order alternating")
    parser.add_argument("--quick", action="store_true", help="2 epochs on 2,000 training images")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per point of the separate-runs grid (2: 16 runs)")
    args = parser.parse_args()
    epochs, images = (2, 2000) if args.quick else (args.epochs, None)
    root = Path(tempfile.mkdtemp(prefix="aelab-bench-ray-"))
    print(f"{epochs} epochs, {'2,000' if images else 'all 8,000'} training images, folders under {root}")

    for title, engine in (("default grid (stacked)", "auto"), ("separate runs", "autograd")):
        grid = spec(epochs, images, engine, args.seeds if engine == "autograd" else 1)
        runs = len(grid.points())
        names = ("local", "ray", "pool") if engine == "autograd" else ("local", "ray")
        timings: dict[str, list[float]] = {name: [] for name in names}
        backends = []
        for repeat in range(args.repeats):
            backend = RayBackend(num_cpus=2)
            runners = {"local": LocalBackend(), "ray": backend, "pool": PoolBackend(2)}
            for name in names if repeat % 2 == 0 else names[::-1]:
                timings[name].append(sweep_seconds(grid, root / f"{engine}-{name}-{repeat}", runners[name]))
            backends.append(backend)
        local_seconds, ray_seconds = timings["local"], timings["ray"]
        local, on_ray = statistics.median(local_seconds), statistics.median(ray_seconds)
        ratio = statistics.median(a / b for a, b in zip(local_seconds, ray_seconds, strict=True))
        records = [record for backend in backends for record in backend.records.values()]
        tasks = list({record.scratch: record for record in records}.values())  # one record per task
        waited = statistics.mean(record.started - record.submitted for record in tasks)
        received = sum(record.bytes_received for record in records) / 1e6 / args.repeats
        written = sum(record.write_seconds for record in records) / args.repeats
        start = statistics.median(backend.startup_seconds for backend in backends)
        stop = statistics.median(backend.shutdown_seconds for backend in backends)
        print(
            f"\n{title}: {runs} runs, {len(tasks) // args.repeats} Ray tasks, local Ray with 2 CPUs, 1 thread per run"
        )
        print(f"  local backend {local:7.1f} s   ray backend {on_ray:7.1f} s   local / ray {ratio:.2f}x")
        print(
            f"  ray: start {start:.1f} s, stop {stop:.1f} s (during the evaluation), "
            f"submit to task start {waited:.1f} s (mean over tasks; "
            f"with more tasks than CPUs it includes the wait for one), {received:.1f} MB of files returned, "
            f"{written:.2f} s writing them"
        )
        if engine == "auto":
            overhead = on_ray - local
            print(
                f"  overhead: {overhead:.1f} s for the sweep, {overhead / runs:.2f} s per run: "
                f"{overhead / local:.1%} of the local time ({local / runs:.1f} s per {epochs}-epoch run, stacked)"
            )
        else:
            print(f"  one run alone takes {local / runs:.1f} s locally")
            pool_seconds = timings["pool"]
            pool = statistics.median(pool_seconds)
            ceiling = statistics.median(a / b for a, b in zip(local_seconds, pool_seconds, strict=True))
            ray_cost = statistics.median(r / p for r, p in zip(ray_seconds, pool_seconds, strict=True))
            print(
                f"  2 spawned local processes (no cluster) {pool:7.1f} s   local / processes {ceiling:.2f}x "
                f"(what 2 processes give on these 2 cores)   ray / processes {ray_cost:.2f}x"
            )
        for other in names[1:]:  # the same work, run for run
            worst = max(
                largest_difference(root / f"{engine}-{other}-{r}", root / f"{engine}-local-{r}")
                for r in range(args.repeats)
            )
            print(f"  largest relative difference of a per-epoch validation loss, {other} against local: {worst:.1e}")


if __name__ == "__main__":
    main()
