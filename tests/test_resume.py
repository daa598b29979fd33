"""Exact resume from Python: a run stopped after any epoch and resumed ends bit-identical to a
run that was never stopped. The SIGKILL version through the command line is in test_chaos.py."""

import contextlib
import json
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from aelab import Callback, RunConfig, load_run, resume, train
from aelab.cli import main
from aelab.errors import RunFolderError
from aelab.runs import read_status

from .conftest import NO_DOCTOR

BASE = {
    "data": {"train_limit": 96, "val_limit": 32},
    "model": {"hidden_dims": [8], "latent_dim": 3},
    "train": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
}


class Stop(Exception):
    """Not an AelabError: stands for the process dying (nothing is cleaned up or recorded)."""


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_start(self, trainer, run_dir):
        if self.epoch == 0:
            raise Stop

    def on_epoch_end(self, trainer, row, run_dir):
        # on_epoch_end runs before the epoch's checkpoint is written: stopping after epoch k
        # leaves the checkpoint of epoch k - 1 and one epoch of lost work, as a kill would.
        if trainer.epoch == self.epoch + 1:
            raise Stop


# `train` runs the doctor, which adds its monitor numbers to the metrics rows of the epochs it
# watched, and writes a report; a resumed run has neither for the epochs after the resume, so
# the runs compared with resumed ones here are trained without them.


def config_with(**sections):
    return RunConfig.from_dict(BASE).replace(**sections)


def strip_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_tensors(left, right):
    """Every tensor equal bit for bit. (Not the file bytes: safetensors writes its metadata
    entries in a different order each time.)"""
    first, second = load_file(left), load_file(right)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].dtype == second[name].dtype and torch.equal(first[name], second[name]), name
    with safe_open(left, "pt") as one, safe_open(right, "pt") as other:
        assert one.metadata().keys() == other.metadata().keys()


def assert_same_run(left, right):
    """Same final weights, same checkpoint tensors (weights, optimizer, generators), same history."""
    assert_same_tensors(left / "model.safetensors", right / "model.safetensors")
    assert_same_tensors(left / "checkpoint.safetensors", right / "checkpoint.safetensors")
    assert strip_seconds(load_run(left).history) == strip_seconds(load_run(right).history)


@pytest.mark.parametrize(
    ("sections", "stop_after"),
    [
        ({"data": {"binarize": "bernoulli"}}, 2),  # data order and binarisation generators
        ({"train": {"optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.1}}, 1),
        ({"train": {"optimizer": "rmsprop", "momentum": 0.5, "learning_rate": 0.001}}, 3),
        ({"train": {"optimizer": "adadelta", "learning_rate": 1.0}}, 2),
        ({"train": {"optimizer": "adagrad"}}, 2),
        ({"train": {"patience": 1, "epochs": 6, "learning_rate": 0.5}}, 1),  # early-stopping state
        ({"model": {"kind": "conv", "hidden_dims": [2, 4], "latent_dim": 3}, "train": {"loss": "cb"}}, 2),
        ({"model": {"hidden_dims": [8], "tied": True}, "train": {"weight_decay": 0.01}}, 0),
        ({"train": {"loss": "gaussian"}}, 2),  # a learned shared sigma and its Adam moments
        ({"model": {"kind": "conv", "hidden_dims": [2, 4], "latent_dim": 3}, "train": {"loss": "beta"}}, 1),
        # a VAE: its reparameterisation draws come from the run's sample generator (issue 12)
        ({"model": {"variational": True}, "train": {"beta": 0.5, "kl_warmup_epochs": 3, "free_bits": 0.05}}, 2),
        ({"model": {"kind": "conv", "hidden_dims": [2], "variational": True}, "train": {"loss": "mse"}}, 1),
    ],
)
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, sections, stop_after):
    config = config_with(**sections)
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, callbacks=[StopAfter(stop_after)], **NO_DOCTOR)
    assert read_status(tmp_path / "stopped")["state"] == "running"
    result = resume(tmp_path / "stopped", progress=False)
    assert result.extras["resumed_from_epoch"] == stop_after
    assert read_status(tmp_path / "stopped")["state"] == "finished"
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def test_resume_without_any_checkpoint_starts_from_the_saved_config(tmp_path):
    config = config_with(data={"binarize": "bernoulli"})
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, callbacks=[StopAfter(0)], **NO_DOCTOR)
    (tmp_path / "stopped" / "checkpoint.safetensors").unlink()  # killed before even epoch 0 was saved
    assert resume(tmp_path / "stopped", progress=False).extras["resumed_from_epoch"] == 0
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def test_metrics_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    config = config_with()
    with pytest.raises(Stop):
        train(config, tmp_path / "run", progress=False, callbacks=[StopAfter(2)])
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*rows, json.dumps({"epoch": 99})]) + "\n")  # a row the checkpoint lacks
    result = resume(tmp_path / "run", progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_resuming_a_finished_run_returns_it_without_training(tmp_path):
    config = config_with()
    train(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns
    result = resume(tmp_path / "run", progress=False)
    assert result.extras["resumed_from_epoch"] == 4 and len(result.history) == 4
    assert (tmp_path / "run" / "model.safetensors").stat().st_mtime_ns == before


def test_a_folder_without_config_is_refused_with_a_clear_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".aelab.lock").write_bytes(b"")
    with pytest.raises(RunFolderError, match=r"has no config.yaml: it was stopped before training started"):
        resume(tmp_path / "run", progress=False)
    with pytest.raises(RunFolderError, match="is not a run folder"):
        resume(tmp_path / "missing", progress=False)


def test_a_run_still_training_elsewhere_is_not_resumed(tmp_path):
    config = config_with(train={"epochs": 3})
    started, release = threading.Event(), threading.Event()

    class Hold(Callback):
        def on_epoch_end(self, trainer, row, run_dir):
            started.set()
            release.wait(30)
            raise Stop

    def run():
        with contextlib.suppress(Stop):
            train(config, tmp_path / "run", progress=False, callbacks=[Hold()])

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(RunFolderError, match="being trained by another process"):
            resume(tmp_path / "run", progress=False)
    finally:
        release.set()
        thread.join()
    assert resume(tmp_path / "run", progress=False).extras["resumed_from_epoch"] == 0


def test_cli_resume_finishes_the_run_and_refuses_other_options(tmp_path, capsys):
    config = config_with()
    with pytest.raises(Stop):
        train(config, tmp_path / "run", progress=False, callbacks=[StopAfter(1)])
    assert main(["train", "--resume", str(tmp_path / "run"), "--lr", "0.5"]) == 2
    assert "--resume continues a run with the config in its folder; drop --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "finished 4 epochs (3 after resuming)" in printed
    assert load_run(tmp_path / "run").finished
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert "had already finished; nothing to resume" in capsys.readouterr().out
