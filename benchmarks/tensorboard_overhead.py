"""What the tensorboard logger costs: the same run into a folder with and without
loggers=["tensorboard"], timed side by side in one process (alternating, median and best of N),
printed as ratios of wall time and of this process's CPU time (all its threads, the event
writer's included; steadier than wall time on a shared machine). Doctor and report are off in
both, so the ratio is the logger's alone.

    PYTHONPATH=src python benchmarks/tensorboard_overhead.py [--epochs 20] [--repeats 3] [--threads 1]

The one-time `import torch.utils.tensorboard` (once per process, the first run that logs) is
timed first and printed apart; a warm-up run pays it before the timed runs.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aelab import RunConfig, load_dataset, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    importlib.import_module("torch.utils.tensorboard")

    import_seconds = time.perf_counter() - started
    config = RunConfig.from_dict(
        {
            "model": {"hidden_dims": [100], "latent_dim": 50},
            "train": {"epochs": args.epochs, "learning_rate": 1e-2, "threads": args.threads, "device": "cpu"},
        }
    )
    torch.set_num_threads(args.threads)
    data = load_dataset(config.data)
    times: dict[str, list[float]] = {"plain": [], "tensorboard": []}
    cpu: dict[str, list[float]] = {"plain": [], "tensorboard": []}
    with tempfile.TemporaryDirectory() as folder:
        warm = config.replace(train={"epochs": 1})
        quiet = {"data": data, "progress": False, "doctor": False, "report": False}
        train(warm, Path(folder) / "warm", loggers=["tensorboard"], **quiet)
        for repeat in range(args.repeats):
            for name in times:
                loggers = ["tensorboard"] if name == "tensorboard" else []
                out = Path(folder) / f"{name}-{repeat}"
                started, cpu_started = time.perf_counter(), time.process_time()
                train(config, out, loggers=loggers, **quiet)
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
        event_bytes = sum(path.stat().st_size for path in (Path(folder) / "tensorboard-0" / "tensorboard").iterdir())
    print(
        f"sigmoid 784-100-50-100-784, mnist-10k, {args.epochs} epochs, {args.threads} thread(s), "
        f"{args.repeats} repeats alternating"
    )
    for label, table in (("wall", times), ("cpu", cpu)):
        for name, values in table.items():
            print(f"{label} {name:<12} median {statistics.median(values):.2f} s  best {min(values):.2f} s")
        median = statistics.median(table["tensorboard"]) / statistics.median(table["plain"])
        best = min(table["tensorboard"]) / min(table["plain"])
        print(f"{label} ratio        median {median:.3f}  best {best:.3f}")
    print(f"event files  {event_bytes / 1e6:.2f} MB per run")
    print(f"import torch.utils.tensorboard {import_seconds:.2f} s, once per process")


if __name__ == "__main__":
    main()
