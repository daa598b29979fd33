"""Training throughput of one dense autoencoder, side by side in one process.

The sigmoid 784-100-50-100-784 autoencoder with BCE and Adam on the bundled MNIST test images
(8,000 training images), at batch 64 and 256:

    tutorial    DataLoader(TensorDataset) of float images, nn.BCELoss on sigmoid outputs
    in-memory   the float images in one tensor, randperm + slicing, BCE with logits
    aelab-autograd  aelab's training epoch (`aelab.train.loop.train_epoch`) with train.engine=autograd
    aelab       aelab's training epoch as it runs by default (the fast dense step)

plus two compute limits measured in the same run: the 1.0 MFLOP a sample costs at the rate of
a 2048x2048 GEMM, and the step's own GEMM shapes timed alone. Variants are interleaved and
each figure is the median over repeats of one epoch's samples per second, so a busy machine
slows every variant alike.

    python benchmarks/train_throughput.py            # about 2 minutes
    python benchmarks/train_throughput.py --quick    # a few seconds, a smoke check
    python benchmarks/train_throughput.py --threads-sweep   # aelab at 1 vs 2 threads by batch size
    python benchmarks/train_throughput.py --whole-run       # whole `aelab train` runs, per epoch

The whole-run measure is what a user waits for: `aelab.train(config, out)` exactly as `aelab train`
runs it (doctor, checkpoints, metrics.jsonl, status, report), on all 8,000 training and 2,000
validation images at batch 256, against the tutorial loop that also computes its validation loss
every epoch (as Keras `fit(validation_data=...)` does). A run's per-epoch cost is the median time
between two epochs' files being written (training, evaluation, doctor, checkpoint, metrics.jsonl
and status all fall in between); the one-off start (data, model, set-up checks) and finish
(model file, report) are printed apart.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import aelab
from aelab import ImageData, RunConfig, load_dataset
from aelab.train import RunState
from aelab.train.loop import Member, train_epoch
from aelab.train.steps import make_step

DIMS = (784, 100, 50, 100, 784)


def classic_model() -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(DIMS):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    return nn.Sequential(*layers)


def flops_per_sample() -> int:
    """Forward 2 flops per multiply-add; backward twice the forward."""
    return 6 * sum(a * b for a, b in itertools.pairwise(DIMS))


def tutorial_epoch(images: torch.Tensor, batch_size: int, val: torch.Tensor | None = None) -> Callable[[], float]:
    """The Keras-style tutorial epoch; with `val`, then its validation loss over a DataLoader of
    the validation images, as `fit(validation_data=...)` computes it every epoch."""
    model = classic_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCELoss()
    loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(val), batch_size=batch_size) if val is not None else None

    def run() -> float:
        started = time.perf_counter()
        for (batch,) in loader:
            loss = criterion(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if val_loader is not None:
            with torch.no_grad():
                total = sum(float(criterion(model(batch), batch)) * batch.shape[0] for (batch,) in val_loader)
            assert total >= 0
        return time.perf_counter() - started

    return run


def in_memory_epoch(images: torch.Tensor, batch_size: int) -> Callable[[], float]:
    model = classic_model()[:-1]  # logits out
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run() -> float:
        started = time.perf_counter()
        order = torch.randperm(images.shape[0])
        for start in range(0, images.shape[0], batch_size):
            batch = images[order[start : start + batch_size]]
            loss = F.binary_cross_entropy_with_logits(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    return run


class EpochClock(aelab.Logger):
    """Records when each epoch's files are written: the time between two is everything a run
    spends per epoch (training, evaluation, doctor, checkpoint, metrics, status)."""

    # The clock reads no file, so it does not wait for the run's background writes (as aelab's
    # own loggers do not): a logger that did would time a flush real runs never make.
    flush_first = False

    def __init__(self) -> None:
        self.times: list[float] = []

    def log_epoch(self, trainer: object, row: object, run_dir: object) -> None:
        self.times.append(time.perf_counter())


def aelab_run(config: RunConfig, data: ImageData, epochs: int) -> Callable[[], tuple[float, float]]:
    """One whole `aelab.train` run of `epochs` epochs into a fresh folder: (its seconds, the
    median seconds between two epochs' ends)."""

    def run() -> tuple[float, float]:
        clock = EpochClock()
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            config_epochs = config.replace(train={"epochs": epochs})
            aelab.train(config_epochs, f"{folder}/run", data=data, progress=False, callbacks=[clock])
            seconds = time.perf_counter() - started
        intervals = [b - a for a, b in itertools.pairwise(clock.times)]
        return seconds, statistics.median(intervals)

    return run


def whole_run(args: argparse.Namespace) -> None:
    """Whole `aelab train` runs against the tutorial loop with a per-epoch validation loss."""
    torch.set_num_threads(args.threads)
    config = RunConfig.from_dict({"train": {"learning_rate": 1e-3, "threads": args.threads, "batch_size": 256}})
    data = load_dataset(config.data)
    floats = data.train.float().mul(data.scale).flatten(1)
    val = data.val.float().mul(data.scale).flatten(1)
    count = floats.shape[0]
    epochs = 6 if args.quick else 20
    tutorial = tutorial_epoch(floats, 256, val)
    run = aelab_run(config, data, epochs)
    tutorial()
    run()  # warm-up
    repeats = max(3, args.repeats // 3)
    tutorial_seconds: list[float] = []
    epoch_seconds: list[float] = []
    run_seconds: list[float] = []
    for _ in range(repeats):  # interleaved: load changes hit every variant
        tutorial_seconds.append(statistics.median(tutorial() for _ in range(5)))
        seconds, per_epoch = run()
        run_seconds.append(seconds)
        epoch_seconds.append(per_epoch)
    per_epoch = statistics.median(epoch_seconds)
    fixed = statistics.median(total - epochs * each for total, each in zip(run_seconds, epoch_seconds, strict=True))
    print(f"torch {torch.__version__}, {args.threads} threads, {count} training and {val.shape[0]} validation images")
    print(f"whole runs of {epochs} epochs at batch 256, {repeats} repeats, interleaved with 5 tutorial epochs each")
    print(f"  {'variant':<40} {'samples/s':>10} {'x tutorial':>11}")
    tutorial_speed = count / statistics.median(tutorial_seconds)
    print(f"  {'tutorial + validation loss, per epoch':<40} {tutorial_speed:>10,.0f} {1.0:>10.2f}x")
    ratio = paired_ratio(epoch_seconds, tutorial_seconds)
    print(f"  {'aelab train (whole run), per epoch':<40} {count / per_epoch:>10,.0f} {ratio:>10.2f}x")
    print(
        f"  a whole {epochs}-epoch run: {statistics.median(run_seconds):.2f} s, of which {fixed:.2f} s start and finish"
    )
    print("  (data, set-up checks, model file, report)")


def aelab_epoch(config: RunConfig, data: ImageData, engine: str) -> Callable[[], float]:
    state = RunState(config.replace(train={"engine": engine}), data)
    step = make_step([state])

    def run() -> float:
        started = time.perf_counter()
        train_epoch([Member(state, None, [])], step, False, False)
        return time.perf_counter() - started

    return run


def time_call(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square float32 matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    seconds = time_call(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * size**3 / seconds


def step_gemm_epoch(count: int, batch_size: int) -> Callable[[], float]:
    """An epoch of the GEMMs of the training step alone (forward, weight gradients, and the
    input gradients of every layer but the first) for `count` images: the tighter limit, timed
    in the same interleaved loop as the variants so the machine's speed changes hit it alike."""
    shapes = list(itertools.pairwise(DIMS))
    weights = [torch.randn(b, a) for a, b in shapes]
    activations = [torch.randn(batch_size, d) for d in DIMS]
    grads = [torch.randn(batch_size, b) for _, b in shapes]
    forward_out = [torch.empty(batch_size, b) for _, b in shapes]
    weight_out = [torch.empty(b, a) for a, b in shapes]
    input_out = [torch.empty(batch_size, a) for a, _ in shapes]
    steps = -(-count // batch_size)

    def run() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            for i in range(len(shapes)):
                torch.mm(activations[i], weights[i].t(), out=forward_out[i])
                torch.mm(grads[i].t(), activations[i], out=weight_out[i])
                if i > 0:
                    torch.mm(grads[i], weights[i], out=input_out[i])
        return time.perf_counter() - started

    return run


TIGHT = "limit: step GEMMs alone"


def paired_ratio(seconds: list[float], base: list[float]) -> float:
    """How many times faster than `base`: the median over repeats of base / seconds, each pair
    timed back to back, so a change in the machine's speed between repeats cancels out."""
    return statistics.median(b / a for a, b in zip(seconds, base, strict=True))


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    config = RunConfig.from_dict(
        {
            "data": {"train_limit": args.images, "val_limit": 64},
            "model": {"hidden_dims": [100], "latent_dim": 50, "activation": "sigmoid"},
            "train": {"loss": "bce", "optimizer": "adam", "learning_rate": 1e-3, "threads": args.threads},
        }
    )
    data = load_dataset(config.data)
    floats = data.train.float().mul(data.scale).flatten(1)  # (N, 784) for the float loops
    count = floats.shape[0]
    rate = gemm_rate()
    print(f"torch {torch.__version__}, {args.threads} threads, {count} MNIST images, {args.repeats} repeats")
    print(f"2048x2048 GEMM: {rate / 1e9:.0f} GFLOP/s; one sample costs {flops_per_sample() / 1e6:.2f} MFLOP")
    print("samples/s: medians; ratios: medians of the ratios within each repeat")
    for batch_size in args.batch_sizes:
        batch_config = config.replace(train={"batch_size": batch_size})
        variants = {
            "tutorial": tutorial_epoch(floats, batch_size),
            "in-memory": in_memory_epoch(floats, batch_size),
            "aelab-autograd": aelab_epoch(batch_config, data, "autograd"),
            "aelab": aelab_epoch(batch_config, data, "auto"),
            TIGHT: step_gemm_epoch(count, batch_size),
        }
        for run in variants.values():
            run()  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, run in variants.items():  # interleaved: load changes hit every variant
                seconds[name].append(run())
        print(f"\nbatch {batch_size}")
        print(f"  {'variant':<24} {'samples/s':>10} {'x tutorial':>11} {'of tight limit':>15}")
        for name, values in seconds.items():
            speed = count / statistics.median(values)
            tutorial, share = paired_ratio(values, seconds["tutorial"]), paired_ratio(values, seconds[TIGHT])
            print(f"  {name:<24} {speed:>10,.0f} {tutorial:>10.2f}x {share:>14.0%}")
        loose = rate / flops_per_sample()
        print(f"  {'limit: 2048 GEMM rate':<24} {loose:>10,.0f}")


def threads_sweep(args: argparse.Namespace) -> None:
    """aelab's step at 1 and 2 threads for several batch sizes (interleaved medians)."""
    config = RunConfig.from_dict(
        {"data": {"train_limit": args.images, "val_limit": 64}, "model": {"hidden_dims": [100], "latent_dim": 50}}
    )
    data = load_dataset(config.data)
    count = data.train.shape[0]
    print(f"aelab step, 784-100-50-100-784 sigmoid BCE Adam, {count} images, samples/s (median of {args.repeats})")
    print(f"  {'batch':>6} {'1 thread':>10} {'2 threads':>10} {'2/1':>6}")
    for batch_size in (8, 16, 32, 64, 128, 256, 512):
        run = aelab_epoch(config.replace(train={"batch_size": batch_size}), data, "auto")
        results: dict[int, list[float]] = {1: [], 2: []}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            run()
        for _ in range(args.repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results[threads].append(count / run())
        one, two = statistics.median(results[1]), statistics.median(results[2])
        print(f"  {batch_size:>6} {one:>10,.0f} {two:>10,.0f} {two / one:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs timed per variant (default 9, quick 3)")
    parser.add_argument("--quick", action="store_true", help="2,048 images and 3 repeats: a smoke check")
    parser.add_argument("--threads-sweep", action="store_true", help="aelab at 1 vs 2 threads by batch size")
    parser.add_argument("--whole-run", action="store_true", help="whole aelab train runs against the tutorial")
    args = parser.parse_args()
    args.images = 2048 if args.quick else 8000
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.batch_sizes = (64, 256)
    if args.threads_sweep:
        threads_sweep(args)
    elif args.whole_run:
        whole_run(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
