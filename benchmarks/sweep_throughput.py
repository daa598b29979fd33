"""A 16-run grid, one run after another against `train_ensemble`, side by side in one process.

The grid: the 4 losses (bce, mse, mae, cb) x sigmoid and relu hidden layers x 2 seeds, each a
784-100-50-100-784 autoencoder with Adam on the bundled MNIST test images, one epoch. Both
variants go through the public API (`aelab.train` per run, `aelab.ensemble.train_ensemble` for
all), including model set-up and the per-epoch evaluation, at batch 64 and 256. Variants are
interleaved and each figure is the median over repeats; a second check confirms that every
ensemble member's metrics equal its solo run's.

    python benchmarks/sweep_throughput.py           # about 3 minutes on a quiet 2-core machine
    python benchmarks/sweep_throughput.py --quick   # 1,024 images, 1 repeat
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aelab import RunConfig, load_dataset, train
from aelab.ensemble import train_ensemble


def grid(images: int, batch_size: int, threads: int | None) -> list[RunConfig]:
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
                                "epochs": 1,
                                "threads": threads,
                            },
                        }
                    )
                )
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: aelab picks)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="1,024 images and 1 repeat: a smoke check")
    args = parser.parse_args()
    images = 1024 if args.quick else 8000
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch {torch.__version__}, threads {args.threads or 'aelab picks'}, {images} images, 16 runs, 1 epoch each")
    for batch_size in (64, 256):
        configs = grid(images, batch_size, args.threads)
        data = load_dataset(configs[0].data)
        samples = len(configs) * data.train.shape[0]
        seconds: dict[str, list[float]] = {"one after another": [], "ensemble": []}
        solo_rows = ensemble_rows = []
        for _ in range(repeats):
            started = time.perf_counter()
            solo_rows = [train(config, data=data, progress=False).history[-1] for config in configs]
            seconds["one after another"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ensemble_rows = [result.history[-1] for result in train_ensemble(configs, data=data, progress=False)]
            seconds["ensemble"].append(time.perf_counter() - started)
        worst = max(
            abs(a[key] - b[key]) / max(1.0, abs(a[key]))
            for a, b in zip(solo_rows, ensemble_rows, strict=True)
            for key in a
            if key != "seconds"
        )
        sequential = statistics.median(seconds["one after another"])
        print(f"\nbatch {batch_size}: worst relative metric difference, ensemble vs solo: {worst:.1e}")
        print(f"  {'variant':<18} {'seconds':>8} {'samples/s':>10} {'speed-up':>9}")
        for name, values in seconds.items():
            median = statistics.median(values)
            print(f"  {name:<18} {median:>8.2f} {samples / median:>10,.0f} {sequential / median:>8.2f}x")


if __name__ == "__main__":
    main()
