"""A 16-run grid, one run after another against `train_ensemble`, side by side in one process.

The grid: the 4 losses (bce, mse, mae, cb) x sigmoid and relu hidden layers x 2 seeds, each a
784-100-50-100-784 autoencoder with Adam on the bundled MNIST test images (8,000 training,
500 validation images), at batch 64 and 256. Two measures, each variant pair timed back to
back in every repeat (the ratios are medians of those paired ratios, so the machine's speed
changes between repeats cancel out):

    whole runs      `aelab.train` per run against `aelab.train.stacking.train_ensemble` for all, for
                    --epochs epochs: model set-up, training, and the per-epoch evaluation
    training steps  the training epochs alone: 16 solo `aelab.train.loop.train_epoch` calls against one
                    epoch of the stacked step (the measure of the issue's "16 models stacked
                    in one batched matmul, total over the 16")

A last check confirms that every ensemble member's metrics equal its solo run's.

    python benchmarks/sweep_throughput.py           # about 4 minutes on a quiet 2-core machine
    python benchmarks/sweep_throughput.py --quick   # 1,024 images, 1 epoch, 1 repeat
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from aelab import RunConfig, load_dataset, train
from aelab.train import RunState, train_ensemble
from aelab.train.loop import Member, train_epoch
from aelab.train.steps import StackedStep, make_step, stack_order
from aelab.train.threads import thread_count


def grid(images: int, batch_size: int, threads: int | None, epochs: int = 1) -> list[RunConfig]:
    configs = []
    for loss in ("bce", "mse", "mae", "cb"):
        for activation in ("sigmoid", "relu"):
            for seed in (0, 1):
                configs.append(
                    RunConfig.from_dict(
                        {
                            "data": {"train_limit": images, "val_limit": 500},
                            "model": {"hidden_dims": [100], "latent_dim": 50, "activation": activation},
                            "train": {
                                "loss": loss,
                                "seed": seed,
                                "batch_size": batch_size,
                                "epochs": epochs,
                                "threads": threads,
                            },
                        }
                    )
                )
    return configs


def difference(a: float, b: float) -> float:
    """Relative difference of two metric values; NaN in both counts as equal, in one as inf."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b) / max(1.0, abs(a))


def paired_ratio(seconds: list[float], base: list[float]) -> float:
    """How many times faster than `base`: the median over repeats of base / seconds."""
    return statistics.median(b / a for a, b in zip(seconds, base, strict=True))


def report(title: str, samples: int, seconds: dict[str, list[float]]) -> None:
    print(f"  {title}")
    print(f"    {'variant':<18} {'seconds':>8} {'samples/s':>10} {'speed-up':>9}")
    base = seconds["one after another"]
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"    {name:<18} {median:>8.2f} {samples / median:>10,.0f} {paired_ratio(values, base):>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: aelab picks)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3, quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the whole runs (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="1,024 images, 1 epoch and 1 repeat: a smoke check")
    args = parser.parse_args()
    images = 1024 if args.quick else 8000
    repeats = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 3)
    print(f"torch {torch.__version__}, threads {args.threads or 'aelab picks'}, {images} images, 16 runs")
    for batch_size in (64, 256):
        configs = grid(images, batch_size, args.threads, epochs)
        data = load_dataset(configs[0].data)
        count = data.train.shape[0]
        whole: dict[str, list[float]] = {"one after another": [], "ensemble": []}
        steps: dict[str, list[float]] = {"one after another": [], "ensemble": []}
        solo_rows = ensemble_rows = []
        train(configs[0].replace(train={"epochs": 1}), data=data, progress=False)  # warm-up
        train_ensemble([c.replace(train={"epochs": 1}) for c in configs[:2]], data=data, progress=False)
        for _ in range(repeats):
            started = time.perf_counter()
            solo_rows = [train(config, data=data, progress=False).history[-1] for config in configs]
            whole["one after another"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ensemble_rows = [result.history[-1] for result in train_ensemble(configs, data=data, progress=False)]
            whole["ensemble"].append(time.perf_counter() - started)

            torch.set_num_threads(thread_count(configs[0], data))  # what `train` picks for one run
            solo = [RunState(config, data) for config in configs]
            solo_steps = [make_step([state]) for state in solo]
            started = time.perf_counter()
            for state, step in zip(solo, solo_steps, strict=True):
                train_epoch([Member(state, None, [])], step, False, False)
            steps["one after another"].append(time.perf_counter() - started)
            torch.set_num_threads(thread_count(configs[0], data, members=len(configs)))  # what `train_ensemble` picks
            states = [RunState(config, data) for config in configs]
            states = [states[m] for m in stack_order(states)]
            stacked = StackedStep(states)
            started = time.perf_counter()
            train_epoch([Member(state, None, []) for state in states], stacked, False, False)
            steps["ensemble"].append(time.perf_counter() - started)
        worst, where = max(
            (difference(a[key], b[key]), f"{c.train.loss}/{c.model.activation}/seed {c.train.seed} {key}")
            for c, a, b in zip(configs, solo_rows, ensemble_rows, strict=True)
            for key in a
            if key != "seconds"
        )
        print(f"\nbatch {batch_size}: worst relative metric difference, ensemble vs solo: {worst:.1e} ({where})")
        report(f"whole runs ({epochs} epochs, set-up and evaluation included)", len(configs) * count * epochs, whole)
        report("training steps (one epoch)", len(configs) * count, steps)


if __name__ == "__main__":
    main()
