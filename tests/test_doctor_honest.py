"""The doctor says what is so (issue 10, items 9, 10 and 13).

- 9: `--strict` (and `Doctor(strict=True)`) stops before the first training step when the
  set-up checks find an error, and the folder says it stopped.
- 10: `aelab doctor --recheck` says what changed against the saved findings.json and keeps
  the epoch a problem was first seen at.
- 13: advice that fits the case: the division the data calls for, flags only for runs
  started from the command line, no "scale the inputs" for inputs already in [0, 1], and a
  sweep folder or an empty folder named as such.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab import RunConfig, SetupFindingsError, build_model, load_dataset, load_run, train
from aelab.cli import EXIT_FINDINGS, main
from aelab.doctor import Doctor, check, check_setup, diagnose_run
from aelab.doctor.check import probe_targets
from aelab.doctor.monitor import baseline, measure, run_context, state_findings
from aelab.doctor.probe import Subject, trace_layers, weight_norms
from aelab.errors import RunFolderError
from aelab.findings import Finding, compare_findings, read_findings, save_findings
from aelab.runs import read_status

from .conftest import TINY, TINY_FLAGS, by_id
from .conftest import tiny as config

# --- item 9: --strict stops before the first step


def test_strict_train_stops_before_the_first_step_on_setup_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--raw-pixels", "--strict", "--out", str(out)]) == EXIT_FINDINGS
    captured = capsys.readouterr()
    first, *listed = captured.err.splitlines()
    assert (
        first.startswith("aelab: stopped before the first training step: --strict") and "nothing was trained" in first
    )
    assert any(line.strip().startswith("ERROR   input-range:") for line in listed)
    assert any(line.strip().startswith("ERROR   bce-target-range:") for line in listed)
    assert "finished" not in captured.out and "epoch 1/" not in captured.out + captured.err
    # nothing trained, and the folder says so: not finished, no metrics, no final weights
    assert not (out / "model.safetensors").exists()
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""
    status = read_status(out)
    assert status["state"] == "stopped" and status["epochs_done"] == 0 and "strict" in status["message"]
    assert not load_run(out).finished and load_run(out).history == []
    assert {"input-range", "bce-target-range"} <= {f.id for f in read_findings(out)}  # kept for `aelab doctor`
    assert main(["doctor", str(out)]) == 0
    assert "not a finished run (status: stopped" in capsys.readouterr().out


def test_strict_without_setup_errors_trains_every_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY_FLAGS, "--strict", "--no-report", "--out", str(out)])
    assert read_status(out)["state"] == "finished" and len(load_run(out).history) == 2
    errors = [f for f in read_findings(out) if f.severity == "error"]
    assert all(f.epoch is not None for f in errors)  # only state findings can be errors here
    assert code == (EXIT_FINDINGS if errors else 0)


def test_doctor_strict_in_python_raises_before_the_first_step(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SetupFindingsError, match="before the first training step") as raised:
        train(config(data={"scale": "none"}), out, progress=False, callbacks=[Doctor(strict=True)])
    assert {f.id for f in raised.value.findings} == {"input-range", "bce-target-range"}
    assert all(f.severity == "error" for f in raised.value.findings)
    assert read_status(out)["state"] == "stopped" and not (out / "model.safetensors").exists()
    # without strict the same set-up trains, as before
    result = train(config(data={"scale": "none"}), tmp_path / "lenient", progress=False, callbacks=[Doctor()])
    assert len(result.history) == 2


# --- item 10: --recheck says what changed and keeps the first epoch


def blob_run(tmp_path):
    """A sigmoid run with a learning rate far too low: a blob from epoch 1 to the end."""
    out = tmp_path / "blob"
    flags = [*TINY_FLAGS, "--epochs", "3", "--lr", "1e-5", "--activation", "sigmoid", "--no-report"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    return out


def test_recheck_keeps_the_epoch_a_problem_was_first_seen(tmp_path, capsys):
    out = blob_run(tmp_path)
    assert by_id(read_findings(out))["blob"].epoch == 1
    capsys.readouterr()
    assert main(["doctor", str(out), "--recheck"]) == 0
    printed = capsys.readouterr().out
    assert by_id(read_findings(out))["blob"].epoch == 1
    assert "(since epoch 1)" in printed and "since epoch 3" not in printed
    assert "the same problems as before" in printed
    assert by_id(diagnose_run(out))["blob"].epoch == 3  # the folder alone sees it at the last epoch


def test_recheck_says_what_was_added_removed_and_changed(tmp_path, capsys):
    out = blob_run(tmp_path)
    saved = read_findings(out)
    edited = [
        Finding(**{**f.to_dict(), "severity": "warning"}) if f.id == "blob" else f for f in saved if f.id != "bce-floor"
    ]
    edited.append(Finding("dead-units", "warning", "3 of 16 relu units in encoder.9 are dead", {"layer": "encoder.9"}))
    save_findings(out, edited)
    capsys.readouterr()
    assert main(["doctor", str(out), "--recheck"]) == 0
    printed = capsys.readouterr().out
    assert "findings.json updated: 1 added, 1 removed, 1 changed severity" in printed
    assert "  added   INFO bce-floor: " in printed
    assert "  removed WARNING dead-units (encoder.9): " in printed
    assert "  changed blob: warning -> error" in printed
    changes = compare_findings(edited, read_findings(out))
    assert [f.id for f in changes.added] == ["bce-floor"] and [f.id for f in changes.removed] == ["dead-units"]


# --- item 13: advice that fits


def float_data(tmp_path, high: float):
    """A .npy of float images in [0, high]: aelab feeds float pixels as they are."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"float-{high:g}.npy"
    images = (rng.random((80, 6, 6)) * high).astype(np.float32)
    images[-1, 0, 0] = high  # in the validation split, which the doctor probes
    np.save(path, images)
    return path


def test_float_data_up_to_3_is_told_to_divide_by_3_not_255(tmp_path, capsys):
    path = float_data(tmp_path, 3.0)
    cfg = RunConfig.from_dict({**TINY, "data": {"name": "array", "path": str(path)}})
    for finding in [f for f in check_setup(cfg, load_dataset(cfg.data)) if f.id in ("input-range", "bce-target-range")]:
        assert "divide them by 3, their largest value" in finding.fix, finding.fix
        assert "255" not in finding.fix and "--" not in finding.fix and "data.scale" not in finding.fix
    out = tmp_path / "run"
    flags = ["--data-path", str(path), "--hidden", "8", "--latent", "2", "--epochs", "1", "--threads", "1"]
    assert main(["train", *flags, "--quiet", "--no-report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ERROR   input-range" in printed and "divide them by 3" in printed
    assert "--raw-pixels" not in printed and "255" not in printed


def test_raw_pixels_advice_names_the_flag_only_when_the_flag_was_given(tmp_path, capsys):
    raw = config(data={"scale": "none"})
    python = by_id(check_setup(raw, load_dataset(raw.data)))
    assert "(data.scale: auto)" in python["input-range"].fix and "--" not in python["input-range"].fix
    out = tmp_path / "flag"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--raw-pixels", "--no-report", "--out", str(out)]) == 0
    assert "(drop --raw-pixels)" in by_id(read_findings(out))["input-range"].fix
    config_file = tmp_path / "raw.yaml"
    config_file.write_text("data:\n  scale: none\n")
    out = tmp_path / "file"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--config", str(config_file), "--out", str(out)]) == 0
    fix = by_id(read_findings(out))["input-range"].fix
    assert f"data.scale: auto in {config_file}" in fix and "--raw-pixels" not in fix
    capsys.readouterr()


def test_a_users_own_model_gets_no_aelab_setting_in_its_advice():
    data = load_dataset(config(data={"scale": "none"}).data)
    model = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 784))
    model.append(torch.nn.Softmax(dim=1))
    found = by_id(check(model, data, "bce"))
    for name in ("input-range", "bce-target-range", "softmax-output"):
        assert "--" not in found[name].fix and "aelab" not in found[name].fix and "data.scale" not in found[name].fix
    assert "divide them by 255" in found["input-range"].fix and "x = x / 255" in found["input-range"].fix


def test_setting_advice_names_flags_for_a_cli_run_and_config_keys_in_python(tmp_path, capsys):
    flags = ["--output-activation", "softmax", "--loss", "mse", "--epochs", "1", "--no-report"]
    out = tmp_path / "cli"
    assert main(["train", *TINY_FLAGS, *flags, "--out", str(out)]) == 0
    assert "--output-activation sigmoid" in by_id(read_findings(out))["softmax-output"].fix
    assert "--output-activation sigmoid" in capsys.readouterr().out
    cfg = config(model={"output_activation": "softmax"}, train={"loss": "mse", "epochs": 1})
    doctor = Doctor()
    train(cfg, tmp_path / "python", progress=False, callbacks=[doctor])
    fix = by_id(doctor.findings)["softmax-output"].fix
    assert "model.output_activation: sigmoid" in fix and "--" not in fix


def test_dead_units_on_inputs_in_0_1_are_not_told_to_scale_the_inputs():
    cfg = config(model={"activation": "relu", "hidden_dims": [16], "latent_dim": 8}, train={"loss": "mse"})
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.image_shape)
    with torch.no_grad():
        model.encoder[0].bias[:12] = -1e4
    dead = by_id(check(model, data, "mse"))["dead-units"]
    assert "scale the inputs" not in dead.fix and "lower the learning rate" in dead.fix
    # for an aelab run the same finding names its config keys, and only what is not already so
    targets = probe_targets(data, cfg)
    subject = Subject(model, "mse")
    state = measure(subject, baseline(targets, "mse"), trace_layers(subject, targets), weight_norms(model), "initial")
    fix = by_id(state_findings(state, run_context(cfg)))["dead-units"].fix
    assert "model.init: he_uniform" in fix and "model.activation: leaky_relu" in fix and "scale" not in fix
    he = config(model={"activation": "relu", "init": "he_uniform"})
    assert "model.init" not in by_id(state_findings(state, run_context(he)))["dead-units"].fix


def test_doctor_on_a_sweep_folder_names_its_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    grid = ["--grid", "loss=bce,mse", "activation=relu"]
    assert main(["compare", *TINY_FLAGS, "--epochs", "1", *grid, "--no-report", "--out", str(sweep)]) == 0
    capsys.readouterr()
    assert main(["doctor", str(sweep)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"aelab: error: {sweep} is a sweep folder")
    assert "run `aelab doctor` on one of its runs" in error
    runs = sorted(child.name for child in sweep.iterdir() if (child / "config.yaml").exists())
    assert len(runs) == 2 and all(str(sweep / name) in error for name in runs)
    assert "model.safetensors" not in error
    with pytest.raises(RunFolderError, match="is a sweep folder"):
        diagnose_run(sweep)
    assert main(["doctor", str(sweep / runs[0])]) == 0  # a run inside it is diagnosed as usual


def test_doctor_on_an_empty_folder_says_it_is_not_a_run_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["doctor", str(empty)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"aelab: error: {empty} is not a run folder")
    assert "model.safetensors" not in error and "did not get that far" not in error
    assert list(empty.iterdir()) == []  # nothing written into a folder aelab did not make
