import json

import pytest

from aelab.cli import main

from .conftest import TINY_FLAGS


def test_train_command_writes_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--loss", "mse", "--activation", "relu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed
    assert "val mse" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    config = (out / "config.yaml").read_text()
    assert "loss: mse" in config and "activation: relu" in config


def test_config_file_and_flags_merge(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  loss: mae\n  epochs: 5\nmodel:\n  latent_dim: 3\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), *TINY_FLAGS, "--out", str(out)]) == 0
    text = (out / "config.yaml").read_text()
    assert "loss: mae" in text  # from the file
    assert "epochs: 2" in text  # the flag wins over the file
    assert "latent_dim: 4" in text


def test_datasets_command_lists_names_and_shapes(capsys):
    assert main(["datasets"]) == 0
    printed = capsys.readouterr().out
    for name in ("mnist-10k", "digits", "mnist", "fashion-mnist", "kmnist", "array", "folder"):
        assert name in printed
    assert "1x28x28" in printed and "1x8x8" in printed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss", "hinge"], "unknown loss 'hinge'; valid: bce, mse, mae, cb"),
        (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
        (["--activation", "swish"], "unknown hidden activation 'swish'"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--batch-size", "0"], "train.batch_size must be at least 1, got 0"),
        (["--lr", "-1"], "train.learning_rate must be positive"),
        (["--hidden", "100,x"], "--hidden takes comma-separated integers"),
        (["--data-path", "/nonexistent/images.npy"], "/nonexistent/images.npy"),
        (["--config", "/nonexistent/run.yaml"], "cannot read config file /nonexistent/run.yaml"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, flags, message):
    assert main(["train", *TINY_FLAGS, *flags, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: ") and message in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bad_config_file_keys_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  learning_rat: 0.1\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'learning_rat' in train" in capsys.readouterr().err


def test_existing_folder_exits_2_and_keeps_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_help_everywhere(capsys):
    for argv in (["--help"], ["train", "--help"], ["datasets", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "--loss" in capsys.readouterr().out
