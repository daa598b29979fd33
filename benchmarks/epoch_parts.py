"""Where a whole `aelab train` epoch goes: the parts of each epoch timed inside real runs.

Wraps the training loop's `train_epoch`, `RunState.record_epoch` (validation), the callbacks'
`epoch_extras` (the doctor) and the synchronous checkpoint and status writes with timers, runs
`aelab.train` on the default config (sigmoid 784-100-50-100-784, BCE, Adam 1e-3, batch 256,
2 threads, 20 epochs) and prints the median of each part per epoch, beside the median interval
between two epochs' files being written.

    python benchmarks/epoch_parts.py            # 3 runs
"""

from __future__ import annotations

import argparse
import collections
import importlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aelab
from aelab.config import RunConfig
from aelab.data import load_dataset

loop = importlib.import_module("aelab.train.loop")  # `aelab.train` is also the function
state_module = importlib.import_module("aelab.train.state")
TIMES: dict[str, list[float]] = collections.defaultdict(list)


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - started)

    return wrapper


class EpochClock(aelab.Logger):
    # The clock reads no file, so it does not wait for the run's background writes (as aelab's
    # own loggers do not): a logger that did would time a flush real runs never make.
    flush_first = False

    def __init__(self) -> None:
        self.times: list[float] = []

    def log_epoch(self, trainer: object, row: object, run_dir: object) -> None:
        self.times.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for name in ("train_epoch", "epoch_extras", "save_checkpoint", "write_status"):
        setattr(loop, name, timed(name, getattr(loop, name)))
    state_module.RunState.record_epoch = timed("record_epoch", state_module.RunState.record_epoch)
    config = RunConfig.from_dict({"train": {"learning_rate": 1e-3, "threads": 2, "batch_size": 256, "epochs": 20}})
    data = load_dataset(config.data)
    for _ in range(args.runs):
        TIMES.clear()
        clock = EpochClock()
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            aelab.train(config, f"{folder}/run", data=data, progress=False, callbacks=[clock])
            seconds = time.perf_counter() - started
        interval = statistics.median(b - a for a, b in itertools.pairwise(clock.times))
        parts = ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms x{len(v)}" for k, v in TIMES.items())
        print(f"run {seconds:.2f} s, {interval * 1e3:.1f} ms between epochs' files; {parts}")


if __name__ == "__main__":
    main()
