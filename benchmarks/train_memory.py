"""Peak memory of training on a 60,000 x 784 uint8 dataset, against the torch baseline.

A synthetic MNIST-sized dataset (60,000 training and 10,000 validation images, 1x28x28
uint8, 47 MB + 7.8 MB) trains the 784-100-50-100-784 autoencoder for one epoch through
`aelab.train`. The baseline is this process's resident memory after importing torch and
aelab and running one tiny training (so libraries and kernels are loaded); the peak is
Linux's VmHWM, reset just before the dataset is made. The goal: peak below baseline plus
twice the training images' size.

    python benchmarks/train_memory.py            # about 30 seconds
    python benchmarks/train_memory.py --quick    # 20,000 training images
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from aelab import ImageData, RunConfig, train

MB = 1e6


def memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")  # pragma: no cover


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def synthetic(train_count: int, val_count: int) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    # Blobs of ink on black, uint8 like MNIST; the values do not matter for memory.
    train_images = torch.randint(0, 256, (train_count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    val_images = torch.randint(0, 256, (val_count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return ImageData("synthetic", train_images, val_images, None, None, 1 / 255, "synthetic uint8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 training images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--val", type=int, default=10_000, help="validation images (default 10,000)")
    args = parser.parse_args()
    count = 20_000 if args.quick else 60_000
    config = RunConfig.from_dict(
        {
            "model": {"hidden_dims": [100], "latent_dim": 50},
            "train": {"epochs": 1, "batch_size": args.batch_size, "threads": 1},
        }
    )
    train(config, data=synthetic(512, 64), progress=False)  # load libraries and kernels
    gc.collect()
    baseline = memory_kb("VmRSS") * 1e3
    reset_peak()
    data = synthetic(count, args.val)
    dataset = data.train.numel() * data.train.element_size()
    after_data = memory_kb("VmRSS") * 1e3
    train(config, data=data, progress=False)
    peak = memory_kb("VmHWM") * 1e3
    print(f"torch {torch.__version__}; {count} x 784 uint8 training images = {dataset / MB:.1f} MB")
    print(f"validation images: {args.val} ({data.val.numel() / MB:.1f} MB uint8)")
    print(f"baseline RSS (torch + aelab loaded, after a tiny run): {baseline / MB:.1f} MB")
    print(f"after making the dataset: +{(after_data - baseline) / MB:.1f} MB")
    print(f"peak during one epoch of training and evaluation: +{(peak - baseline) / MB:.1f} MB over baseline")
    verdict = "below" if peak - baseline < 2 * dataset else "ABOVE"
    print(f"goal: below baseline + 2 x dataset = +{2 * dataset / MB:.1f} MB -> {verdict}")


if __name__ == "__main__":
    main()
