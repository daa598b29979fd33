"""Callbacks are the output channel: a logger registered here alone gets every epoch's full row
through train, resume and a stacked sweep; callbacks return what they add instead of changing
the shared row (the doctor included), so their order does not matter; `on_step` sees every step."""

import csv
import json
import math
import shutil

import pytest
import torch

import aelab
from aelab import LOGGERS, Callback, Logger, RunConfig, resume, train, train_ensemble
from aelab.doctor import Doctor
from aelab.errors import ConfigError
from aelab.evaluate import CHEAP_METRICS
from aelab.runs import METRICS_FILE, read_metrics
from aelab.sweep import SweepSpec, parse_grid, run_sweep

BASE = {
    "data": {"train_limit": 96, "val_limit": 32},
    "model": {"hidden_dims": [8], "latent_dim": 3},
    "train": {"epochs": 3, "batch_size": 40, "learning_rate": 0.01, "threads": 1},
}
STEPS_PER_EPOCH = 3  # 96 images in batches of 40: 40, 40, 16
CSV_FILE = "metrics.csv"


def config(**sections):
    return RunConfig.from_dict(BASE).replace(**sections)


class CsvLogger(Logger):
    """A logger the library does not know: every row in metrics.csv, its columns the keys in
    the order they first appeared. Records what it was given, to check against."""

    made: list["CsvLogger"] = []  # noqa: RUF012 - every instance built, per test (reset by the fixture)

    def __init__(self) -> None:
        self.started_with: list[dict] | None = None
        self.logged: list[dict] = []
        self.rows: list[dict] = []
        CsvLogger.made.append(self)

    def on_train_start(self, trainer, run_dir):
        self.started_with = [dict(row) for row in trainer.history]
        self.rows = [dict(row) for row in trainer.history]
        self._write(run_dir)

    def log_epoch(self, trainer, row, run_dir):
        self.logged.append(dict(row))
        self.rows.append(dict(row))
        self._write(run_dir)

    def _write(self, run_dir):
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(run_dir / CSV_FILE, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)


@pytest.fixture
def csv_logger(monkeypatch):
    monkeypatch.setitem(LOGGERS, "csv", CsvLogger)
    monkeypatch.setattr(CsvLogger, "made", [])
    return CsvLogger


def read_csv(run_dir):
    with open(run_dir / CSV_FILE, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def assert_csv_holds(run_dir, rows):
    """metrics.csv holds exactly these rows: the same keys, the same numbers."""
    found = read_csv(run_dir)
    assert len(found) == len(rows)
    for cells, row in zip(found, rows, strict=True):
        assert {key for key, cell in cells.items() if cell != ""} == set(row)
        for key, value in row.items():
            assert float(cells[key]) == pytest.approx(value, nan_ok=True, rel=0, abs=0), key


class Stop(Exception):
    """Stands for the process dying (not an AelabError: nothing is recorded)."""


class StopAt(Callback):
    """Stops the run at the end of epoch `epoch`, before its checkpoint: as a kill would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, row, run_dir):
        if trainer.epoch == self.epoch:
            raise Stop


class Steps(Callback):
    """Records every on_step call as (step, loss)."""

    def __init__(self):
        self.steps: list[tuple[int, float]] = []
        self.rows: list[dict] = []

    def on_step(self, trainer, step, loss):
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
        self.steps.append((step, float(loss)))

    def on_epoch_end(self, trainer, row, run_dir):
        self.rows.append(dict(row))


class Spy(Callback):
    """Records the rows it is shown and tries to change them."""

    def __init__(self):
        self.seen: list[dict] = []
        self.refused = 0

    def on_epoch_end(self, trainer, row, run_dir):
        self.seen.append(dict(row))
        for change in (lambda: row.__setitem__("val_loss", -1.0), lambda: row.pop("val_loss")):
            try:
                change()
            except (TypeError, AttributeError):
                self.refused += 1


def doctor_keys(row):
    return [key for key in row if key.startswith("doctor_")]


def assert_steps_cover(steps, history, steps_per_epoch=STEPS_PER_EPOCH):
    """Every step of every epoch, in order, and each epoch's step losses average to its
    train_loss (batch-size weighted)."""
    assert [step for step, _ in steps] == list(range(1, len(history) * steps_per_epoch + 1))
    sizes = [40, 40, 16]
    for epoch, row in enumerate(history):
        losses = [loss for _, loss in steps[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]]
        mean = sum(loss * size for loss, size in zip(losses, sizes, strict=True)) / sum(sizes)
        assert mean == pytest.approx(row["train_loss"], rel=1e-5)


def test_callback_and_loggers_are_public():
    for name in ("Callback", "Logger", "LOGGERS"):
        assert name in aelab.__all__
    assert aelab.train.__module__ == "aelab.train.run"
    assert set(LOGGERS) >= {"jsonl"}


def test_a_logger_registered_here_gets_every_full_row_through_train(tmp_path, csv_logger):
    result = train(config(), tmp_path / "run", progress=False, loggers=["csv"], report=False)
    history = read_metrics(tmp_path / "run")
    assert history == result.history and len(history) == 3
    assert all(doctor_keys(row) for row in history)  # the doctor's numbers are in the row the logger sees
    (logger,) = csv_logger.made
    assert logger.started_with == []
    assert logger.logged == history
    assert_csv_holds(tmp_path / "run", history)


def test_a_logger_writes_after_the_checkpoint(tmp_path, monkeypatch):
    """What a logger writes never runs ahead of the checkpoint: when it logs epoch k, the
    checkpoint on disk is epoch k's."""
    from safetensors import safe_open

    epochs_seen = []

    class CheckpointWatcher(Logger):
        def log_epoch(self, trainer, row, run_dir):
            with safe_open(str(run_dir / "checkpoint.safetensors"), "pt") as file:
                epochs_seen.append((row["epoch"], int(file.metadata()["epoch"])))

    monkeypatch.setitem(LOGGERS, "watch", CheckpointWatcher)
    train(config(), tmp_path / "run", progress=False, loggers=["watch"], doctor=False, report=False)
    assert epochs_seen == [(1, 1), (2, 2), (3, 3)]


def test_a_logger_gets_every_full_row_through_resume(tmp_path, csv_logger):
    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        train(config(), run_dir, progress=False, callbacks=[StopAt(2)], loggers=["csv"], report=False)
    before = read_metrics(run_dir)
    assert len(before) == 1 and doctor_keys(before[0])  # epoch 2 was lost with its checkpoint
    csv_logger.made.clear()
    result = resume(run_dir, progress=False, loggers=["csv"], callbacks=[Doctor()])
    history = read_metrics(run_dir)
    assert history == result.history and len(history) == 3
    assert history[0] == before[0]
    assert all(doctor_keys(row) for row in history)
    (logger,) = csv_logger.made
    assert logger.started_with == before  # the epochs done before the resume
    assert logger.logged == history[1:]  # then every epoch trained after it
    assert_csv_holds(run_dir, history)


def test_a_logger_and_callbacks_get_every_row_and_step_through_a_stacked_sweep(tmp_path, csv_logger):
    spec = SweepSpec(config(), parse_grid(["activation=relu,sigmoid", "loss=bce,mse"]))
    made: list[Steps] = []

    def make_callbacks():
        made.append(Steps())
        return [made[-1]]

    result = run_sweep(spec, tmp_path / "sweep", loggers=["csv"], make_callbacks=make_callbacks)
    assert len(result.trained) == 4
    assert len(csv_logger.made) == 4 and len(made) == 4
    histories = []
    for point in result.points:
        run_dir = tmp_path / "sweep" / point.name
        history = read_metrics(run_dir)
        assert len(history) == 3 and all(doctor_keys(row) for row in history)
        assert_csv_holds(run_dir, history)
        histories.append(history)
    # each run's callbacks saw its own rows (without the doctor's numbers) and every one of its steps
    for steps in made:
        history = next(h for h in histories if [r["train_loss"] for r in h] == [r["train_loss"] for r in steps.rows])
        assert [{k: v for k, v in row.items() if not k.startswith("doctor_")} for row in history] == steps.rows
        assert_steps_cover(steps.steps, history)


def test_a_sweep_resumes_a_killed_run_with_its_callbacks_and_loggers(tmp_path, csv_logger):
    spec = SweepSpec(config(), parse_grid(["loss=bce"]))
    (point,) = spec.points()
    run_sweep(spec, tmp_path / "sweep")
    shutil.rmtree(tmp_path / "sweep" / point.name)  # as if killed at epoch 2, with epoch 1's checkpoint
    with pytest.raises(Stop):
        train(point.config, tmp_path / "sweep" / point.name, progress=False, callbacks=[StopAt(2)], report=False)
    steps = Steps()
    result = run_sweep(spec, tmp_path / "sweep", loggers=["csv"], make_callbacks=lambda: [steps])
    assert result.resumed == [point.name]
    history = read_metrics(tmp_path / "sweep" / point.name)
    assert_csv_holds(tmp_path / "sweep" / point.name, history)
    assert [step for step, _ in steps.steps] == list(range(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH + 1))


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_on_step_gets_every_step_of_every_epoch(engine):
    steps = Steps()
    result = train(config(train={"engine": engine}), progress=False, callbacks=[steps])
    assert_steps_cover(steps.steps, result.history)


def test_on_step_gets_every_step_of_every_stacked_member(tmp_path):
    configs = [
        config(model={"activation": a}, train={"loss": loss}) for a in ("relu", "tanh") for loss in ("bce", "mse")
    ]
    made: list[Steps] = []

    def make_callbacks():
        made.append(Steps())
        return [made[-1]]

    results = train_ensemble(configs, progress=False, make_callbacks=make_callbacks)
    assert len(made) == 4
    for steps, result in zip(made, results, strict=True):
        assert steps.rows == result.history  # each member's callbacks got that member's rows
        assert_steps_cover(steps.steps, result.history)
    # and the stacked steps are the solo run's steps
    solo = Steps()
    alone = train(configs[2], progress=False, callbacks=[solo])
    assert [s for s, _ in solo.steps] == [s for s, _ in made[2].steps]
    assert [loss for _, loss in solo.steps] == pytest.approx([loss for _, loss in made[2].steps], rel=1e-5)
    assert alone.history[-1]["val_loss"] == pytest.approx(results[2].history[-1]["val_loss"], rel=1e-5)


@pytest.mark.parametrize("doctor_first", [False, True])
def test_the_doctor_does_not_change_the_row_other_callbacks_see(tmp_path, doctor_first):
    spy = Spy()
    callbacks = [Doctor(), spy] if doctor_first else [spy, Doctor()]
    result = train(config(), tmp_path / "run", progress=False, callbacks=callbacks, report=False)
    assert len(spy.seen) == 3
    assert not any(doctor_keys(row) for row in spy.seen)  # wherever it stands, it sees the trainer's row
    assert spy.refused == 6  # the row it is shown is read-only: it cannot break the doctor's or the log's
    history = read_metrics(tmp_path / "run")
    assert history == result.history
    for seen, row in zip(spy.seen, history, strict=True):
        assert {k: v for k, v in row.items() if k in seen} == seen
        assert row["val_loss"] >= 0 and set(row) - set(seen) == set(doctor_keys(row)) != set()


def test_callback_order_does_not_change_the_history(tmp_path):
    class Extra(Callback):
        def __init__(self, name):
            self.name = name

        def on_epoch_end(self, trainer, row, run_dir):
            assert f"{self.name}_val" not in row
            return {f"{self.name}_val": row["val_loss"] * 2}

    histories = []
    for order in ([Extra("a"), Doctor(), Extra("b")], [Extra("b"), Extra("a"), Doctor()]):
        run_dir = tmp_path / str(len(histories))
        train(config(), run_dir, progress=False, callbacks=order, report=False)
        histories.append(read_metrics(run_dir))
    for first, second in zip(*histories, strict=True):
        assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}
        assert first["a_val"] == first["b_val"] == 2 * first["val_loss"]
    assert list(histories[0][0])[-1] != list(histories[1][0])[-1]  # merged in the callbacks' order


def test_a_callback_cannot_overwrite_a_measured_number(tmp_path):
    class Overwrite(Callback):
        def on_epoch_end(self, trainer, row, run_dir):
            return {"val_loss": 0.0}

    with pytest.raises(ValueError, match="'val_loss', which the metrics row already has"):
        train(config(), progress=False, callbacks=[Overwrite()])

    class Twice(Callback):
        def on_epoch_end(self, trainer, row, run_dir):
            return {"mine": 1.0}

    with pytest.raises(ValueError, match="'mine'"):
        train(config(), progress=False, callbacks=[Twice(), Twice()])

    class NotADict(Callback):
        def on_epoch_end(self, trainer, row, run_dir):
            return 1.0

    with pytest.raises(TypeError, match=r"NotADict\.on_epoch_end returned float"):
        train(config(), progress=False, callbacks=[NotADict()])


def test_an_old_style_callback_that_returns_none_still_works(tmp_path):
    class Old(Callback):
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, trainer, row, run_dir):
            self.epochs.append(row["epoch"])  # returns None: adds nothing

    old = Old()
    result = train(config(), tmp_path / "run", progress=False, callbacks=[old], doctor=False, report=False)
    assert old.epochs == [1, 2, 3]
    assert read_metrics(tmp_path / "run") == result.history


def test_unknown_or_folderless_loggers_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown logger 'tensorboardx'; valid: jsonl"):
        train(config(), tmp_path / "run", progress=False, loggers=["tensorboardx"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="write into a run folder"):
        train(config(), progress=False, loggers=["jsonl"])
    with pytest.raises(ConfigError, match="unknown logger"):
        resume(tmp_path / "run", loggers=["nope"])
    with pytest.raises(ConfigError, match="unknown logger"):
        run_sweep(SweepSpec(config(), parse_grid(["loss=bce"])), tmp_path / "sweep", loggers=["nope"])
    assert not (tmp_path / "sweep").exists()


# The keys of metrics.jsonl, in order, as aelab wrote them before callbacks returned their
# numbers (checked against a run of the code before this change): the trainer's, then the doctor's.
METRICS_KEYS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_loss_excess",
    "val_mse",
    "val_mae",
    "val_bce",
    "val_bce_excess",
    "val_cb_nll",
    "val_psnr",
    "val_ssim",
    "val_intensity_bias",
    "val_blob_score",
    "val_sharpness",
    "seconds",
    "doctor_variation_ratio",
    "doctor_gap_closed",
    "doctor_dead_share",
    "doctor_saturated_share",
    "doctor_min_weight_ratio",
    "doctor_gradient_spread",
]


def test_metrics_jsonl_keeps_its_keys_and_their_order(tmp_path):
    train(config(), tmp_path / "run", progress=False, report=False)
    lines = (tmp_path / "run" / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    cheap = [key for key in METRICS_KEYS if not key.startswith("val_") or key in CHEAP_METRICS]
    for number, line in enumerate(lines, start=1):
        row = json.loads(line)
        # every epoch the cheap numbers; the last epoch every metric (RunState.record_epoch)
        assert list(row) == (METRICS_KEYS if number == len(lines) else cheap)
        assert row["epoch"] == number and all(
            (isinstance(value, int | float) and math.isfinite(value)) or value is None for value in row.values()
        )


CLI_FLAGS = ["--train-limit", "96", "--val-limit", "32", "--hidden", "8", "--latent", "3", "--batch-size", "40"]
CLI_FLAGS += ["--threads", "1", "--quiet", "--no-report"]


def test_the_command_line_passes_loggers_to_train_resume_and_compare(tmp_path, csv_logger, capsys):
    from aelab.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", *CLI_FLAGS, "--epochs", "2", "--out", str(run_dir), "--logger", "csv"]) == 0
    history = read_metrics(run_dir)
    assert len(history) == 2 and all(doctor_keys(row) for row in history)  # the doctor the CLI built
    assert_csv_holds(run_dir, history)
    # a resume takes --logger too (it is not part of the run's config); a finished run is left as it is
    assert main(["train", "--resume", str(run_dir), "--quiet", "--no-report", "--logger", "csv"]) == 0
    assert_csv_holds(run_dir, history)
    sweep = tmp_path / "sweep"
    grid = ["--grid", "activation=relu,sigmoid", "--epochs", "1"]
    assert main(["compare", *CLI_FLAGS, *grid, "--out", str(sweep), "--logger", "csv"]) == 0
    for name in ("activation-relu", "activation-sigmoid"):
        assert_csv_holds(sweep / name, read_metrics(sweep / name))
    capsys.readouterr()
    assert main(["train", *CLI_FLAGS, "--out", str(tmp_path / "other"), "--logger", "tb"]) == 2
    assert capsys.readouterr().err.strip() == "aelab: error: unknown logger 'tb'; valid: jsonl, tensorboard, csv"
    assert not (tmp_path / "other").exists()
