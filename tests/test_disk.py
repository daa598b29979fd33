"""Disk full and unwritable output folders: a clear line before training where it can be known,
no partial file and an intact previous file otherwise."""

import errno
import os
import re
from collections import namedtuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import aelab.runs.files
import aelab.runs.folder
from aelab import RunConfig, resume, train
from aelab.cli import main
from aelab.data import load_dataset
from aelab.errors import RunFolderError
from aelab.runs import atomic_write_text, read_status
from aelab.train import RunState
from aelab.train.run import REPORT_BYTES

FLAGS = ["--train-limit", "64", "--val-limit", "16", "--hidden", "6", "--latent", "2", "--batch-size", "32",
         "--threads", "1", "--epochs", "3", "--quiet"]  # fmt: skip
DiskUsage = namedtuple("DiskUsage", "total used free")


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")
    if where == "write":  # the disk fills up half way through the data
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, file):
                self.file = file

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, data):
                self.file.write(data[: len(data) // 2])
                self.file.flush()
                disk_full()

            def __getattr__(self, name):
                return getattr(self.file, name)

        monkeypatch.setattr(aelab.runs.files.os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(aelab.runs.files.os, where, disk_full)
    with pytest.raises(RunFolderError, match=r"cannot write .*metrics.jsonl \(No space left on device\); the previous "
                       r"version of the file is kept, free some space and try again"):  # fmt: skip
        atomic_write_text(target, "new and longer\n" * 1000)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_disk_full_during_training_exits_2_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(["train", *FLAGS, "--out", str(reference)]) == 0
    real_replace = os.replace
    checkpoints = []

    def replace(source, target):
        if str(target).endswith("checkpoint.safetensors"):
            checkpoints.append(target)
            if len(checkpoints) == 3:  # epoch 2's checkpoint (epoch 0's is the first)
                disk_full()
        return real_replace(source, target)

    monkeypatch.setattr(aelab.runs.files.os, "replace", replace)
    assert main(["train", *FLAGS, "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: cannot write ") and "No space left on device" in error
    assert error.count("\n") == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    with safe_open(run / "checkpoint.safetensors", "pt") as file:
        assert file.metadata()["epoch"] == "1"
    assert read_status(run)["state"] == "running"

    monkeypatch.setattr(aelab.runs.files.os, "replace", real_replace)  # space was freed
    assert resume(run, progress=False).extras["resumed_from_epoch"] == 1
    first, second = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(aelab.runs.folder.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 20_000, 20_000))
    assert main(["train", *FLAGS, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert re.search(
        # about 0.4 MB of weights and checkpoints, and 1 MiB for the report and findings
        r"only 0\.0 MB free on the disk holding .*run, and this run writes about 1\.\d MB; free some",
        error,
    )
    assert error.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written, not even the folder aelab made for it
    monkeypatch.undo()
    assert main(["train", *FLAGS, "--out", str(tmp_path / "run")]) == 0  # the same --out, once space is there


@pytest.mark.parametrize("sections", [{}, {"train": {"patience": 50, "optimizer": "rmsprop", "momentum": 0.5}}])
def test_the_space_estimate_covers_what_a_run_writes(tmp_path, sections):
    config = RunConfig.from_dict(
        {"data": {"train_limit": 64, "val_limit": 16}, "train": {"epochs": 3, "batch_size": 32, "threads": 1}}
    ).replace(**sections)
    estimate = RunState(config, load_dataset(config.data)).estimate_run_bytes(REPORT_BYTES)
    train(config, tmp_path / "run", progress=False)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "run").iterdir()}
    peak = sum(sizes.values()) + sizes["checkpoint.safetensors"]  # old and new checkpoint side by side
    assert peak <= estimate < 3 * peak


def test_an_out_folder_that_cannot_be_created_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    assert main(["train", *FLAGS, "--out", str(tmp_path / "file.txt" / "run")]) == 2
    assert "cannot write to run folder" in capsys.readouterr().err
    assert main(["train", *FLAGS, "--out", str(tmp_path / "file.txt")]) == 2
    assert "exists and is not a folder; choose another --out" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_folder_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o500)
    assert main(["train", *FLAGS, "--out", str(tmp_path / "locked" / "run")]) == 2
    assert "cannot write to run folder" in capsys.readouterr().err
