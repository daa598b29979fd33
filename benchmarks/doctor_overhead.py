"""What the doctor's monitors cost: the same training run with and without the Doctor callback,
timed side by side in one process (alternating, best of N), printed as a ratio.

    PYTHONPATH=src python benchmarks/doctor_overhead.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from aelab import RunConfig, load_dataset, train
from aelab.doctor import Doctor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = RunConfig.from_dict(
        {
            "model": {"hidden_dims": [100], "latent_dim": 50},
            "train": {"epochs": args.epochs, "learning_rate": 1e-2, "threads": 1, "device": "cpu"},
        }
    )
    torch.set_num_threads(1)
    data = load_dataset(config.data)
    times: dict[str, list[float]] = {"plain": [], "doctor": []}
    for _ in range(args.repeats):
        for name in times:
            callbacks = [Doctor()] if name == "doctor" else []
            started = time.perf_counter()
            train(config, data=data, progress=False, callbacks=callbacks)
            times[name].append(time.perf_counter() - started)
    plain, doctor = min(times["plain"]), min(times["doctor"])
    print(f"sigmoid 784-100-50-100-784, mnist-10k, {args.epochs} epochs, 1 thread, best of {args.repeats}")
    print(f"plain  {plain:.2f} s\ndoctor {doctor:.2f} s\nratio  {doctor / plain:.3f}")


if __name__ == "__main__":
    main()
