"""Issue 10, items 11, 12 and 15: nothing accepted or ignored without a word, numbers parsed
one way everywhere, and a command line that says what it does.

Each bad value is refused with one line (`aelab: error: ...`, exit 2, nothing written) or
accepted with one warning line that says what will happen; config.yaml records only what was
used."""

import json
import logging
import re

import numpy as np
import pytest
import yaml

import aelab
from aelab import cli
from aelab.cli import build_parser, main, run_config_from_args
from aelab.config import RunConfig
from aelab.errors import ConfigError
from aelab.evaluate import evaluate_run
from aelab.sweep import DEFAULT_BASE, SweepSpec, load_sweep_file, parse_grid

from .conftest import TINY_FLAGS

ONE_EPOCH = [*TINY_FLAGS, "--epochs", "1", "--no-report"]
TINY_DATA = ["--train-limit", "256", "--val-limit", "64", "--hidden", "16", "--latent", "4"]
TINY_DATA += ["--threads", "1", "--quiet"]


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: ") and error.count("\n") == 1 and "Traceback" not in error
    return error


def refused(capsys, argv: list[str]) -> str:
    """Run `aelab argv`, which must exit 2 with one line on stderr; that line."""
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    return one_line_error(capsys)


# --- item 11: silently accepted or ignored values


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "-NaN"])
def test_a_learning_rate_that_is_not_finite_is_refused(tmp_path, capsys, value):
    for argv in (["--lr", value], [f"--lr={value}"]):
        error = refused(capsys, ["train", *ONE_EPOCH, *argv, "--out", str(tmp_path / "run")])
        assert f"--lr must be a finite number, got {value!r}" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["-1e-3", "-0.5", "-.5", "-1"])
def test_a_negative_number_is_a_value_for_the_config_to_judge(tmp_path, capsys, value):
    error = refused(capsys, ["train", *ONE_EPOCH, "--lr", value, "--out", str(tmp_path / "run")])
    assert f"train.learning_rate must be positive, got {float(value)}" in error


def test_val_fraction_is_refused_on_a_dataset_with_its_own_split_and_not_recorded(tmp_path, capsys):
    error = refused(capsys, ["train", *ONE_EPOCH, "--val-fraction", "0.5", "--out", str(tmp_path / "refused")])
    assert "data.val_fraction" in error and "mnist-10k comes with its own" in error
    assert not (tmp_path / "refused").exists()
    # Without the flag nothing claims a fraction that was not used ...
    assert main(["train", *ONE_EPOCH, "--out", str(tmp_path / "fixed")]) == 0
    assert yaml.safe_load((tmp_path / "fixed" / "config.yaml").read_text())["data"]["val_fraction"] is None
    # ... and on user data the fraction given is the one used and recorded.
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    flags = ["--data-path", str(tmp_path / "images.npy"), "--val-fraction", "0.5", "--hidden", "8", "--latent", "2"]
    assert main(["train", *ONE_EPOCH, *flags, "--out", str(tmp_path / "mine")]) == 0
    assert yaml.safe_load((tmp_path / "mine" / "config.yaml").read_text())["data"]["val_fraction"] == 0.5
    assert aelab.load_dataset(aelab.load_run(tmp_path / "mine").config.data).val.shape[0] == 20


def test_a_folder_that_recorded_an_ignored_val_fraction_still_evaluates_and_resumes(tmp_path, capsys):
    """Folders written before the check hold `val_fraction: 0.2` for mnist-10k; they still load."""
    out = tmp_path / "run"
    assert main(["train", *ONE_EPOCH, "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["data"]["val_fraction"] = 0.2
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    evaluation = evaluate_run(out)
    assert evaluation.error is None and evaluation.metrics["mse"] == pytest.approx(evaluation.history[-1]["val_mse"])
    # Killed before its first checkpoint: resume starts it from config.yaml alone.
    (out / "status.json").write_text(json.dumps({"state": "running", "epochs_done": 0}))
    (out / "checkpoint.safetensors").unlink()
    assert aelab.resume(out, progress=False).history[-1]["epoch"] == 1


@pytest.mark.parametrize("optimizer", ["adam", "adadelta", "adagrad"])
def test_momentum_is_refused_for_an_optimizer_without_momentum(tmp_path, capsys, optimizer):
    argv = ["train", *ONE_EPOCH, "--optimizer", optimizer, "--momentum", "0.9", "--out", str(tmp_path / "run")]
    error = refused(capsys, argv)
    assert f"train.momentum applies to sgd and rmsprop only; {optimizer} has none" in error
    assert not (tmp_path / "run").exists()
    assert RunConfig.from_dict({"train": {"optimizer": "sgd", "momentum": 0.9}}).train.momentum == 0.9


def test_a_fixed_value_that_a_grid_axis_would_replace_is_refused(tmp_path, capsys):
    error = refused(capsys, ["compare", *ONE_EPOCH, "--loss", "mae", "--grid", "loss=bce,mse", "--out", str(tmp_path)])
    assert "--loss mae is replaced by the grid axis loss" in error
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("train: {loss: mae}\ngrid: {loss: [bce, mse]}\n")
    error = refused(capsys, ["compare", *ONE_EPOCH, "--config", str(sweep), "--out", str(tmp_path / "out")])
    assert "sets train.loss: 'mae' and has a grid axis loss" in error
    with pytest.raises(ConfigError, match=re.escape("sets train.loss: 'mae' and has a grid axis loss")):
        load_sweep_file(sweep)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]


def test_a_command_line_axis_over_the_files_says_what_it_replaces(tmp_path, caplog):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("train: {learning_rate: 0.001}\ngrid: {loss: [bce, mae], seed: [0, 1]}\n")
    args = build_parser().parse_args(["compare", "--config", str(sweep), "--grid", "train.loss=mse", "lr=1e-2,1e-1"])
    with caplog.at_level(logging.WARNING, logger="aelab.cli"):
        grid = cli.sweep_grid(args)
    assert grid == {"seed": [0, 1], "train.loss": ("mse",), "lr": ("1e-2", "1e-1")}
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "replaces the axis loss of" in lines[0] and "replaces train.learning_rate: 0.001 of" in lines[1]


def test_a_repeated_grid_key_is_refused_on_the_command_line_and_in_a_sweep_file(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"the grid names loss twice .*give one axis: loss=bce,mse"):
        parse_grid(["loss=bce", "loss=mse"])  # the library names no flag; the command line does
    error = refused(capsys, ["compare", *ONE_EPOCH, "--grid", "seed=0", "seed=1", "--out", str(tmp_path / "a")])
    assert "--grid names seed twice (seed=0 and seed=1); give one axis: seed=0,1" in error
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("grid:\n  loss: [bce]\n  seed: [0]\n  loss: [mse]\n")
    error = refused(capsys, ["compare", *ONE_EPOCH, "--config", str(sweep), "--out", str(tmp_path / "b")])
    assert "key 'loss' appears twice" in error and "line 4" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("grid", ["grid: {}", "grid:"])
def test_an_empty_grid_in_a_sweep_file_is_refused(tmp_path, capsys, grid):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"train: {{epochs: 1}}\n{grid}\n")
    error = refused(capsys, ["compare", *ONE_EPOCH, "--config", str(sweep), "--out", str(tmp_path / "out")])
    assert "grid is empty" in error and "leave grid out for the default grid" in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="grid is empty"):  # the Python API reads the file the same way
        load_sweep_file(sweep)


def test_a_batch_larger_than_the_training_set_trains_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["train", *ONE_EPOCH, "--batch-size", "100000", "--out", str(tmp_path / "run")]) == 0
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (
        "train.batch_size 100000 is more than the 256 training images: each epoch is one step on all 256"
    )
    assert main(["train", *ONE_EPOCH, "--batch-size", "256", "--out", str(tmp_path / "exact")]) == 0
    assert len([record for record in caplog.records if record.levelno >= logging.WARNING]) == 1
    # A sweep of stacked runs says it once, and evaluating the runs does not say it again.
    caplog.clear()
    argv = ["compare", *ONE_EPOCH, "--batch-size", "1e5", "--grid", "seed=0,1", "--out", str(tmp_path / "sweep")]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == [
        warnings[0].getMessage()
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "digits", "--data-path", "images.npy"], "data.path is read by the datasets array, folder only"),
        (["--data-dir", "."], "data.data_dir is read by the downloadable datasets mnist, fashion-mnist, kmnist only"),
        (["--threshold", "0.3"], "data.threshold applies to data.binarize threshold only"),
    ],
)
def test_data_keys_that_the_dataset_would_ignore_are_refused(tmp_path, capsys, flags, message):
    assert message in refused(capsys, ["train", *ONE_EPOCH, *flags, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


# --- item 12: numbers parsed one way everywhere


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "0.001", "1.0e-3"])
def test_a_number_means_the_same_in_a_flag_a_config_file_and_a_grid(tmp_path, spelling):
    from_flag = run_config_from_args(build_parser().parse_args(["train", "--lr", spelling]))
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"train:\n  learning_rate: {spelling}\n  epochs: 1e1\n")
    from_file = run_config_from_args(build_parser().parse_args(["train", "--config", str(config_file)]))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(f"grid:\n  lr: [{spelling}]\n")
    args = build_parser().parse_args(["compare", "--config", str(sweep_file)])
    (from_file_grid,) = SweepSpec.from_dict({"grid": cli.sweep_grid(args)}).points()
    (from_flag_grid,) = SweepSpec(DEFAULT_BASE, parse_grid([f"lr={spelling}"])).points()
    rates = {from_flag.train.learning_rate, from_file.train.learning_rate}
    rates |= {from_file_grid.config.train.learning_rate, from_flag_grid.config.train.learning_rate}
    assert rates == {0.001}
    assert from_file.train.epochs == 10 and isinstance(from_file.train.epochs, int)


def test_a_yaml_config_file_with_1e_3_trains_and_records_the_number(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train:\n  learning_rate: 1e-3\n  batch_size: 1e2\n  epochs: 1e0\n")
    argv = ["train", "--config", str(config_file), *TINY_DATA, "--no-report", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert (recorded["learning_rate"], recorded["batch_size"], recorded["epochs"]) == (0.001, 100, 1)
    assert [type(recorded[key]) for key in ("learning_rate", "batch_size", "epochs")] == [float, int, int]
    assert len(aelab.load_run(tmp_path / "run").history) == 1


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("flag", "--epochs must be an integer, got '2.5'"),
        ("file", "train.epochs must be an integer, got 2.5"),
        ("grid", "grid key epochs: '2.5' is not an integer"),
    ],
)
def test_a_number_that_is_not_whole_is_refused_for_an_integer_key_everywhere(tmp_path, capsys, where, message):
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text("train:\n  epochs: 2.5\ngrid: {seed: [0]}\n")
    argv = {"flag": ["--epochs", "2.5"], "file": ["--config", str(config_file)], "grid": ["--grid", "epochs=2.5"]}
    assert message in refused(capsys, ["compare", *TINY_DATA, *argv[where], "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# --- item 15: the command line


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"aelab {aelab.__version__}\n" == "aelab 0.1.0\n"


def test_bare_aelab_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("usage: aelab") and printed.err == ""
    for command in ("train", "compare", "doctor", "report", "loss", "datasets"):
        assert f"    {command} " in printed.out


def test_help_shows_readable_values_and_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "OPT_" not in text
    defaults = RunConfig()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  --")}
    assert lines["--lr"].startswith("  --lr RATE ") and lines["--lr"].endswith(
        f"(default: {defaults.train.learning_rate:g})"
    )
    assert lines["--epochs"].endswith(f"(default: {defaults.train.epochs})")
    assert lines["--dataset"].startswith("  --dataset NAME ") and lines["--dataset"].endswith("(default: mnist-10k)")
    assert lines["--hidden"].endswith("(default: 100)") and lines["--init"].endswith("(default: glorot_uniform)")


def test_options_are_never_abbreviated_and_the_error_names_the_options(tmp_path, capsys):
    error = refused(capsys, ["train", *ONE_EPOCH, "--data", "x", "--out", str(tmp_path / "run")])
    assert "aelab train has no option --data; did you mean --dataset, --data-path or --data-dir?" in error
    # A unique prefix is not silently taken for the option either.
    error = refused(capsys, ["train", *ONE_EPOCH, "--epoch", "1", "--out", str(tmp_path / "run")])
    assert "has no option --epoch; did you mean --epochs?" in error
    assert not (tmp_path / "run").exists()


def test_train_with_no_flags_is_the_recipe_compare_uses_and_the_blob_is_one_flag_away():
    no_flags = run_config_from_args(build_parser().parse_args(["train"]))
    assert no_flags == RunConfig() == DEFAULT_BASE  # adam at 1e-2: leaves the plateau (test_reproductions)
    readme_blob = ["train", "--loss", "bce", "--activation", "sigmoid", "--hidden", "100", "--latent", "50"]
    blob = run_config_from_args(build_parser().parse_args([*readme_blob, "--lr", "1e-3", "--epochs", "20"]))
    assert blob == no_flags.replace(train={"learning_rate": 1e-3})


@pytest.mark.slow
def test_train_with_no_flags_leaves_the_blob_plateau(tmp_path, capsys):
    assert main(["train", "--quiet", "--no-report", "--out", str(tmp_path / "run")]) == 0
    assert "blob" not in capsys.readouterr().out
    run = aelab.load_run(tmp_path / "run")
    assert run.history[-1]["val_mse"] < 0.035 and run.history[-1]["val_blob_score"] > 0.5


@pytest.mark.parametrize("loss", ["bce", "mse", "cb"])
def test_the_final_line_names_each_number_once_and_counts_in_words(tmp_path, capsys, loss):
    assert main(["train", *ONE_EPOCH, "--loss", loss, "--out", str(tmp_path / "run")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("finished")]
    assert line.startswith(f"finished 1 epoch: val {loss} ")
    for name in ("bce", "mse"):
        assert line.count(f"val {name} ") == 1, line
    row = aelab.load_run(tmp_path / "run").history[-1]
    excess = row["val_loss_excess"] if loss == "bce" else row["val_bce_excess"]  # bce: the loss's own excess
    assert f"val {loss} {row['val_loss']:.4f}" in line and f"excess {excess:.4f}" in line


def test_compare_counts_one_run_as_one_run(tmp_path, capsys):
    assert main(["compare", *ONE_EPOCH, "--grid", "seed=0", "--out", str(tmp_path / "sweep")]) == 0
    printed = capsys.readouterr().out
    assert "1 runs" not in printed
    assert f"sweep {tmp_path / 'sweep'}: 1 run (0 done before, 0 to resume, 1 to train)" in printed
    assert "training 1 run: seed-0" in printed and "trained 1 run in " in printed


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_writes_the_format_its_suffix_names(tmp_path, capsys, suffix, magic):
    path = tmp_path / f"curves{suffix}"
    assert main(["loss", "--target", "0.5,0.9", "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["curves.txt", "curves"])
def test_plot_refuses_a_name_it_cannot_write_before_printing_anything(tmp_path, capsys, name):
    error = refused(capsys, ["loss", "--target", "0.5", "--pred", "0.4", "--plot", str(tmp_path / name)])
    assert "must end in .png, .svg, .pdf" in error
    assert not (tmp_path / name).exists()
