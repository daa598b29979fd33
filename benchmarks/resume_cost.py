"""What crash safety and resume cost, measured side by side in one run.

The default model (sigmoid 784-100-50-100-784, adam, batch 256) on the bundled mnist-10k:
- one epoch of training and evaluation;
- writing one checkpoint (serialise + temporary file + fsync + rename), as every epoch does;
- resuming in-process (read the data, rebuild the trainer, load the checkpoint);
- resuming from the command line (`aelab train --resume`, a new Python process);
- the divergence guard's per-step loss check on CPU, per epoch.

    PYTHONPATH=src python benchmarks/resume_cost.py [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aelab import RunConfig, resume, train
from aelab.data import load_dataset
from aelab.train import RunState
from aelab.train.checkpoint import checkpoint_bytes, save_checkpoint
from aelab.train.loop import run_epoch


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = RunConfig().replace(train={"epochs": 1, "threads": args.threads, "device": "cpu"})
    torch.set_num_threads(args.threads)
    data = load_dataset(config.data)

    trainer = RunState(config, data)
    epoch = best_of(args.repeats, lambda: run_epoch(trainer))  # adam state now exists
    checkpoint_size = len(checkpoint_bytes(trainer))
    with tempfile.TemporaryDirectory() as folder:
        write = best_of(args.repeats, lambda: save_checkpoint(trainer, Path(folder)))

    # The guard's cost per step on CPU: read one step's loss back and check it. Timed on its own,
    # because the difference it makes to an epoch is far below the noise of timing epochs.
    losses = torch.rand(trainer.steps_per_epoch)
    calls = 20_000

    def guard_calls() -> None:
        for index in range(calls):
            step = index % trainer.steps_per_epoch
            trainer.guard.check_losses(losses[step : step + 1].tolist(), 0, step)

    guard_per_epoch = best_of(args.repeats, guard_calls) / calls * trainer.steps_per_epoch

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        train(config, run, data=data, progress=False)
        status = run / "status.json"

        def killed_then(work):
            def again():
                status.write_text('{"state": "running"}')  # as if killed after the last checkpoint
                started = time.perf_counter()
                work()
                return time.perf_counter() - started

            return min(again() for _ in range(args.repeats))

        in_process = killed_then(lambda: resume(run, data=data, progress=False))
        in_process_with_data = killed_then(lambda: resume(run, progress=False))
        # --no-report: rendering the report is not part of resuming (the doctor's recheck still runs)
        command = [sys.executable, "-m", "aelab", "train", "--resume", str(run), "--quiet", "--no-report"]
        command_line = killed_then(lambda: subprocess.run(command, check=True, capture_output=True))
        startup = killed_then(lambda: subprocess.run([sys.executable, "-c", "import aelab"], check=True))

    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")
    print(f"one epoch (train + evaluate)           {epoch * 1000:8.1f} ms")
    print(
        f"checkpoint write ({checkpoint_size / 1e6:.2f} MB, fsync'd)    {write * 1000:8.1f} ms"
        f"   = {write / epoch:.3f} of an epoch"
    )
    print(f"resume in-process, data given          {in_process * 1000:8.1f} ms   = {in_process / epoch:.2f} epochs")
    print(
        f"resume in-process, reading the data    {in_process_with_data * 1000:8.1f} ms"
        f"   = {in_process_with_data / epoch:.2f} epochs"
    )
    print(f"aelab train --resume (new process)     {command_line * 1000:8.1f} ms   = {command_line / epoch:.2f} epochs")
    print(f"  of which python -c 'import aelab'    {startup * 1000:8.1f} ms")
    print(
        f"divergence check, {trainer.steps_per_epoch} steps          {guard_per_epoch * 1000:8.3f} ms"
        f"   = {guard_per_epoch / epoch:.5f} of an epoch"
    )


if __name__ == "__main__":
    main()
