"""The divergence guard: NaN, Inf or an exploding loss stops the run with one line, keeps the
last good checkpoint, marks the folder diverged and records a finding."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from aelab import DivergenceError, RunConfig, load_run, resume, train
from aelab.cli import main
from aelab.data import load_dataset
from aelab.findings import read_findings
from aelab.runs import read_status
from aelab.train import RunState
from aelab.train.steps import AutogradStep, FastStep

FLAGS = ["--train-limit", "256", "--val-limit", "64", "--hidden", "16", "--latent", "4", "--batch-size", "32",
         "--threads", "1", "--quiet"]  # fmt: skip
TINY = {
    "data": {"train_limit": 128, "val_limit": 32},
    "model": {"hidden_dims": [8], "latent_dim": 3},
    "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
}
STEPS_PER_EPOCH = 4  # 128 images in batches of 32


def test_learning_rate_1e4_stops_in_its_first_epoch_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--lr", "1e4", "--epochs", "3", "--out", str(run)]) == 4
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("aelab: diverged: training diverged at step 2 (epoch 1): the training loss exploded")
    assert "lower the learning rate (now 10000, try 1000) or try another loss or activation" in error
    assert f"the last good checkpoint (epoch 0) is kept in {run}" in error

    status = read_status(run)
    assert status["state"] == "diverged" and status["epochs_done"] == 0 and status["step"] == 2
    [finding] = [f for f in read_findings(run) if f.id == "divergence"]
    assert finding.id == "divergence" and finding.severity == "error" and finding.epoch == 1
    evidence = finding.evidence
    assert evidence["step"] == 2 and evidence["epoch"] == 1 and evidence["learning_rate"] == 1e4
    assert evidence["step"] <= evidence["steps_per_epoch"] == 8
    assert evidence["loss"] > evidence["limit"] == 1000.0
    assert evidence["last_finite_loss"] == pytest.approx(math.log(2), abs=0.05)  # the untrained model's BCE

    with safe_open(run / "checkpoint.safetensors", "pt") as file:
        assert file.metadata()["epoch"] == "0"
    last_good = load_run(run)  # loads the epoch-0 weights: finite, and not a finished run
    assert not last_good.finished
    assert all(torch.isfinite(value).all() for value in last_good.model.state_dict().values())
    assert not (run / "model.safetensors").exists()

    with pytest.raises(DivergenceError, match="diverged before and would again"):
        resume(run, progress=False)  # at once, without training again
    assert main(["train", "--resume", str(run), "--quiet"]) == 4


def poison(monkeypatch, at_step, what):
    """Make the training step (either engine) go wrong at global step `at_step` (1-based)."""
    calls = []

    def poisoned(real_step):
        def train_step(self, images):
            calls.append(1)
            loss = real_step(self, images)
            if len(calls) == at_step:
                if what == "loss":
                    return torch.full_like(loss, math.nan)
                with torch.no_grad():
                    next(self.states[0].model.parameters())[0] = math.inf
            return loss

        return train_step

    for step_class in (AutogradStep, FastStep):
        monkeypatch.setattr(step_class, "__call__", poisoned(step_class.__call__))


@pytest.mark.parametrize(
    ("what", "message"),
    [("loss", "the training loss became nan"), ("weights", "the weights became NaN or Inf")],
)
def test_nan_in_a_later_epoch_keeps_the_previous_checkpoint(tmp_path, monkeypatch, what, message):
    config = RunConfig.from_dict(TINY)
    # the last step of epoch 2: a NaN weight there leaves every loss of the epoch finite
    poison(monkeypatch, STEPS_PER_EPOCH * 2, what)
    with pytest.raises(DivergenceError, match=f"at step 8 \\(epoch 2\\): {message}.*epoch 1\\) is kept"):
        train(config, tmp_path / "run", progress=False)
    with safe_open(tmp_path / "run" / "checkpoint.safetensors", "pt") as file:
        assert file.metadata()["epoch"] == "1"
    tensors = load_file(tmp_path / "run" / "checkpoint.safetensors")
    assert all(torch.isfinite(value).all() for key, value in tensors.items() if key.startswith("model/"))
    assert [row["epoch"] for row in load_run(tmp_path / "run").history] == [1]
    assert [f.evidence["step"] for f in read_findings(tmp_path / "run") if f.id == "divergence"] == [8]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]


def test_divergence_without_a_run_folder_raises_the_same_error(monkeypatch):
    poison(monkeypatch, 3, "loss")
    with pytest.raises(
        DivergenceError, match=r"^training diverged at step 3 \(epoch 1\): the training loss became nan"
    ):
        train(RunConfig.from_dict(TINY), progress=False)


@pytest.mark.parametrize("loss", ["bce", "mse", "cb"])
def test_raw_pixel_runs_are_not_mistaken_for_divergence(loss):
    # 0..255 targets: BCE falls without bound (negative), MSE starts in the thousands. Both are the
    # mistakes aelab exists to show, so they must run to the end.
    config = RunConfig.from_dict(TINY).replace(data={"scale": "none"}, train={"loss": loss, "learning_rate": 0.05})
    history = train(config, progress=False).history
    assert len(history) == 3


def test_losses_read_back_in_windows_name_the_exact_step():
    config = RunConfig.from_dict(TINY)
    guard = RunState(config, load_dataset(config.data)).guard
    guard.check_losses([0.7, 0.6], 2, 0)  # epoch 3, steps 9 and 10; the first loss seen becomes the yardstick
    assert guard.reference_loss == 0.7
    with pytest.raises(DivergenceError, match=r"at step 12 \(epoch 3\): the training loss exploded to 2000"):
        guard.check_losses([0.5, 2000.0, math.nan], 2, 2)
    assert guard.last_finite_loss == 0.5
