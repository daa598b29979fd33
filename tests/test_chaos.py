"""Chaos: `aelab train` killed with SIGKILL at random moments and resumed each time, every other
time beside processes that keep every core busy, ends with the weights of a run that was never
interrupted (nor loaded), bit for bit; a kill in the middle of a checkpoint write leaves a
folder that still loads and resumes."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from aelab import load_run, resume
from aelab.cli import main
from aelab.runs import read_status, read_threads
from aelab.train.threads import ONE_THREAD_BELOW, usable_cores

from .conftest import wait_for
from .cpu_load import cpu_burners

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

EPOCHS = 60
# The default thread count (auto): batch 32 of 784 pixels is not below ONE_THREAD_BELOW, so the
# run takes every usable core, which a load-based choice would cut under load.
FLAGS = [
    "--train-limit", "256", "--val-limit", "64", "--hidden", "16", "--latent", "4", "--batch-size", "32",
    "--lr", "0.01", "--binarize", "bernoulli", "--seed", "7", "--quiet",
]  # fmt: skip
assert ONE_THREAD_BELOW <= 32 * 784
MIN_KILLS = 10
NOT_STARTED = ("has no config.yaml", "is not a run folder")


def launch(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "aelab", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def epochs_done(run_dir):
    return int(read_status(run_dir).get("epochs_done", 0) or 0)


def assert_same_tensors(left, right):
    first, second = load_file(left), load_file(right)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].dtype == second[name].dtype and torch.equal(first[name], second[name]), name


@pytest.fixture
def load():
    """Context managers for CPU load (`cpu_burners`), all ended when the test ends."""
    with contextlib.ExitStack() as stack:
        yield stack


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, load):
    reference = tmp_path / "reference"
    assert main(["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(reference)]) == 0

    run = tmp_path / "run"
    start = ["train", *FLAGS, "--epochs", str(EPOCHS), "--out", str(run)]
    rng = random.Random(20240607)
    process = launch(*start)
    killed_at = []  # epochs the folder had finished when each kill landed
    loaded_resumes = 0
    while True:
        before = epochs_done(run)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 1.0))  # anywhere: start-up, data loading, the first epochs
        else:  # after 1-2 more epochs, then at a random point of the next one (training, evaluation, writes)
            target = before + rng.randint(1, 2)
            wait_for(lambda target=target, process=process: process.poll() is not None or epochs_done(run) >= target)
            time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is None and len(killed_at) < MIN_KILLS:
            process.send_signal(signal.SIGKILL)
            process.wait()
            process.stderr.close()
            killed_at.append(epochs_done(run))
            load.close()  # the previous resume's burners, if any
            if len(killed_at) % 2:  # every other resume beside CPU burners
                load.enter_context(cpu_burners())
                loaded_resumes += 1
            process = launch("train", "--resume", str(run), "--quiet")
            continue
        code = process.wait(timeout=300)
        error = process.stderr.read()
        process.stderr.close()
        if code == 2 and any(text in error for text in NOT_STARTED):  # killed before it wrote config.yaml
            process = launch(*start, "--overwrite")
            continue
        assert code == 0, error
        break

    assert len(killed_at) >= MIN_KILLS and loaded_resumes >= MIN_KILLS // 2
    assert len(set(killed_at)) >= 5, killed_at  # the kills landed at many different points of the run
    assert max(killed_at) < EPOCHS
    assert load_run(run).finished
    assert read_threads(run) == read_threads(reference) == usable_cores()  # the count never changed
    assert_same_tensors(reference / "model.safetensors", run / "model.safetensors")
    assert_same_tensors(reference / "checkpoint.safetensors", run / "checkpoint.safetensors")
    # the numbers training itself records (callbacks such as the doctor may add their own)
    core = lambda rows: [(r["epoch"], r["train_loss"], r["val_loss"], r["val_mse"]) for r in rows]  # noqa: E731
    assert core(load_run(run).history) == core(load_run(reference).history)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# Runs `aelab train` with os.replace patched: at the third checkpoint write (epoch 2; the first
# is epoch 0's) it signals and hangs, before the rename, with the temporary file complete
# ("before-rename") or cut to half its length, as a kill in the middle of the write leaves it ("torn").
HANG_AT_WRITE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    mode, signal_file, *argv = sys.argv[1:]
    real_replace = os.replace
    writes = []

    def replace(source, target, *args, **kwargs):
        if str(target).endswith("checkpoint.safetensors"):
            writes.append(target)
            if len(writes) == 3:
                if mode == "torn":
                    os.truncate(source, os.path.getsize(source) // 2)
                Path(signal_file).write_text("writing")
                time.sleep(120)
        return real_replace(source, target, *args, **kwargs)

    os.replace = replace
    from aelab.cli import main
    sys.exit(main(argv))
    """
)


@pytest.mark.parametrize("mode", ["torn", "before-rename"])
def test_kill_during_a_checkpoint_write_leaves_a_folder_that_loads_and_resumes(tmp_path, mode):
    flags = [*FLAGS, "--epochs", "4"]
    reference = tmp_path / "reference"
    assert main(["train", *flags, "--out", str(reference)]) == 0

    run, signal_file = tmp_path / "run", tmp_path / "signal"
    process = subprocess.Popen(
        [sys.executable, "-c", HANG_AT_WRITE, mode, str(signal_file), "train", *flags, "--out", str(run)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: signal_file.exists() or process.poll() is not None, timeout=120)
        assert process.poll() is None, process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()

    leftovers = [p for p in run.iterdir() if p.name.startswith(".checkpoint.safetensors.")]
    assert len(leftovers) == 1  # the interrupted write's temporary file...
    with safe_open(run / "checkpoint.safetensors", "pt") as file:
        assert file.metadata()["epoch"] == "1"  # ...while the checkpoint is epoch 1's, whole
    assert read_status(run)["state"] == "running"
    looked_at = load_run(run)  # an unfinished run loads from its checkpoint
    assert not looked_at.finished and len(looked_at.history) == 1
    assert json.loads((run / "status.json").read_text())["epochs_done"] == 1

    result = resume(run, progress=False)
    assert result.extras["resumed_from_epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert_same_tensors(reference / "model.safetensors", run / "model.safetensors")
    assert_same_tensors(reference / "checkpoint.safetensors", run / "checkpoint.safetensors")
    assert os.stat(run / "model.safetensors").st_size > 0
