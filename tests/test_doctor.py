"""The doctor on tiny data: each pathology made on purpose and found with its numbers."""

import json
import math

import pytest
import torch
from torch import nn

from aelab import DivergenceError, build_model, load_dataset, train
from aelab.cli import EXIT_FINDINGS, main
from aelab.doctor import Doctor, check, check_setup, diagnose_run
from aelab.doctor.check import probe_targets
from aelab.findings import Finding, read_findings, save_findings
from aelab.losses import bce_floor

from .conftest import TINY_FLAGS, by_id
from .conftest import tiny as config


def test_raw_pixels_with_bce_and_sigmoid_are_errors_with_their_range():
    cfg = config(data={"scale": "none"})
    found = by_id(check_setup(cfg, load_dataset(cfg.data)))
    assert found["input-range"].severity == found["bce-target-range"].severity == "error"
    evidence = found["input-range"].evidence
    assert evidence["input_max"] == 255 and evidence["input_min"] == 0 and evidence["output_high"] == 1
    assert 0 < evidence["share_unreachable"] < 1
    assert f"{evidence['share_unreachable']:.1%}" in found["input-range"].explanation
    assert "divide the pixels by 255" in found["input-range"].fix
    assert "bce-floor" not in found  # no finite floor to report on 0..255 targets


def test_scaled_pixels_raise_no_range_finding_and_bce_floor_is_measured():
    cfg = config()
    data = load_dataset(cfg.data)
    found = by_id(check_setup(cfg, data))
    assert set(found) == {"bce-floor"} and found["bce-floor"].severity == "info"
    floor = float(bce_floor(probe_targets(data, cfg)).mean())
    assert found["bce-floor"].evidence["bce_floor"] == pytest.approx(floor)
    assert f"{floor:.4f}" in found["bce-floor"].explanation
    binary = config(data={"binarize": "threshold"})
    assert check_setup(binary, load_dataset(binary.data)) == []  # binary targets: floor 0, nothing to say


def test_softmax_output_is_found_with_the_sum_of_its_pixels():
    cfg = config(model={"output_activation": "softmax"}, train={"loss": "mse"})
    found = by_id(check_setup(cfg, load_dataset(cfg.data)))
    evidence = found["softmax-output"].evidence
    assert evidence["output_sum_mean"] == pytest.approx(1.0, abs=1e-4)
    assert evidence["pixels_per_image"] == 784 and evidence["target_sum_mean"] > 50
    assert f"{evidence['target_sum_mean']:.4g}" in found["softmax-output"].explanation


@pytest.mark.parametrize(
    ("activation", "loss", "severity"),
    [("relu", "bce", "error"), ("linear", "bce", "error"), ("tanh", "mse", "warning")],
)
def test_output_activation_that_cannot_fit_the_data_or_loss(activation, loss, severity):
    cfg = config(model={"output_activation": activation}, train={"loss": loss})
    found = by_id(check_setup(cfg, load_dataset(cfg.data)))
    assert found["output-range"].severity == severity
    assert found["output-range"].evidence["output_activation"] == activation
    json.dumps([f.to_dict() for f in found.values()], allow_nan=False)  # infinite bounds stay valid JSON


def test_relu_output_with_mse_is_fine():
    cfg = config(model={"output_activation": "relu"}, train={"loss": "mse"})
    assert check_setup(cfg, load_dataset(cfg.data)) == []


def test_code_as_wide_as_the_input_can_learn_the_identity():
    cfg = config(model={"hidden_dims": [], "latent_dim": 784}, train={"loss": "mse"})
    found = by_id(check_setup(cfg, load_dataset(cfg.data)))
    assert found["code-too-wide"].evidence == {"code_width": 784, "input_width": 784, "code": "latent_dim"}


def test_dead_relu_units_are_counted_per_layer():
    cfg = config(model={"activation": "relu", "hidden_dims": [16], "latent_dim": 8}, train={"loss": "mse"})
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.image_shape)
    with torch.no_grad():
        model.encoder[0].bias[:12] = -1e4  # 12 of 16 units can never fire
    found = by_id(check(model, data, "mse"))
    dead = found["dead-units"]
    assert dead.severity == "warning" and dead.evidence["layer"] == "encoder.0"
    assert dead.evidence["dead_units"] == 12 and dead.evidence["units"] == 16
    assert "12 of the 16" in dead.explanation
    with torch.no_grad():
        model.encoder[0].bias[:] = -1e4
    assert by_id(check(model, data, "mse"))["dead-units"].severity == "error"  # nothing passes


def test_raw_pixels_saturate_sigmoid_units():
    cfg = config(data={"scale": "none"}, model={"output_activation": "linear"}, train={"loss": "mse"})
    data = load_dataset(cfg.data)
    found = by_id(check(build_model(cfg.model, data.image_shape), data, "mse"))
    saturation = found["saturation"]
    assert saturation.evidence["layer"] == "encoder.0" and saturation.evidence["saturated_share"] > 0.9
    assert f"{saturation.evidence['saturated_share']:.1%}" in saturation.explanation


def test_weight_decay_collapses_the_weights_and_the_output_becomes_a_blob():
    cfg = config(
        model={"hidden_dims": [16], "latent_dim": 8},
        train={"optimizer": "sgd", "learning_rate": 0.5, "weight_decay": 0.5, "epochs": 4, "loss": "mse"},
    )
    doctor = Doctor()
    result = train(cfg, progress=False, callbacks=[doctor])
    found = by_id(doctor.findings)
    collapse = [f for f in doctor.findings if f.id == "weight-collapse"]
    assert collapse, [f.line() for f in doctor.findings]
    initial = build_model(cfg.model, (1, 28, 28), seed=cfg.train.seed)
    for finding in collapse:
        name = finding.evidence["layer"]
        now = float(dict(result.model.named_parameters())[name].detach().norm())
        before = float(dict(initial.named_parameters())[name].detach().norm())
        assert finding.evidence["ratio"] == pytest.approx(now / before, rel=1e-4) and now / before < 0.1
        assert "reduce the weight decay (now 0.5)" in finding.fix
    assert found["blob"].evidence["variation_ratio"] < 0.2
    assert result.history[-1]["doctor_min_weight_ratio"] < 0.1


def test_healthy_small_run_keeps_its_weights_and_is_not_called_collapsed():
    doctor = Doctor()
    train(config(train={"epochs": 1}), progress=False, callbacks=[doctor])
    assert "weight-collapse" not in by_id(doctor.findings)


def test_deep_sigmoid_stack_has_vanishing_gradients():
    cfg = config(model={"hidden_dims": [32] * 6, "latent_dim": 16})
    data = load_dataset(cfg.data)
    found = by_id(check(build_model(cfg.model, data.image_shape), data, "bce"))
    vanishing = found["vanishing-gradients"].evidence
    assert vanishing["first_layer"] == "encoder.0.weight" and vanishing["last_layer"] == "decoder.6.weight"
    assert vanishing["spread"] < 1e-3
    ratio = vanishing["first_relative_gradient"] / vanishing["last_relative_gradient"]
    assert vanishing["spread"] == pytest.approx(ratio)


def test_raw_pixels_with_mse_give_exploding_gradients():
    cfg = config(data={"scale": "none"}, model={"activation": "relu", "output_activation": "linear"})
    data = load_dataset(cfg.data)
    found = by_id(check(build_model(cfg.model, data.image_shape), data, "mse"))
    exploding = found["exploding-gradients"]
    assert exploding.evidence["relative_gradient"] > 10
    assert f"{exploding.evidence['relative_gradient']:.3g}" in exploding.explanation


def test_nan_weights_are_an_error_and_nothing_else_is_claimed():
    cfg = config()
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.image_shape)
    with torch.no_grad():
        model.encoder[0].weight[0, 0] = math.nan
    state_ids = [f.id for f in check(model, data, "bce") if f.epoch is None and f.id != "bce-floor"]
    assert state_ids == ["non-finite"]


def test_sgd_blowing_up_stops_with_divergence_and_keeps_the_doctors_findings(tmp_path):
    cfg = config(
        data={"scale": "none"},
        # a code wider than the input: a set-up warning the doctor records before training
        model={"output_activation": "linear", "activation": "relu", "latent_dim": 800},
        train={"optimizer": "sgd", "learning_rate": 10.0, "loss": "mse", "epochs": 2},
    )
    doctor = Doctor()
    with pytest.raises(DivergenceError, match="learning rate"):
        train(cfg, tmp_path / "run", progress=False, callbacks=[doctor])
    found = by_id(read_findings(tmp_path / "run"))
    assert found["divergence"].severity == "error" and found["divergence"].epoch == 1
    # the doctor's pre-training findings were saved before the run diverged, and survive it
    assert doctor.setup and {f.id for f in doctor.setup} <= set(found)


class UserAutoencoder(nn.Module):
    """A user's own model: flattened input, nn.Sequential, its own output sigmoid."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(hidden, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x.view(x.shape[0], -1)))


def test_check_traces_a_user_model_and_finds_its_code_and_output():
    data = load_dataset(config().data)
    assert {f.id for f in check(UserAutoencoder(), data, "bce") if f.severity != "info"} <= {"blob"}
    wide = by_id(check(UserAutoencoder(hidden=1000), data, "mse"))
    assert wide["code-too-wide"].evidence["code_width"] == 1000
    assert "encoder.0" in wide["code-too-wide"].evidence["code"]


def test_train_keeps_findings_json_current_and_adds_monitor_numbers(tmp_path):
    run_dir = tmp_path / "run"
    doctor = Doctor()
    result = train(config(data={"scale": "none"}), run_dir, progress=False, callbacks=[doctor])
    saved = read_findings(run_dir)
    assert {"input-range", "bce-target-range"} <= {f.id for f in saved}
    assert saved == doctor.findings
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("doctor_variation_ratio" in row and "doctor_gap_closed" in row for row in rows)
    assert [row["doctor_gap_closed"] for row in rows] == [row["doctor_gap_closed"] for row in result.history]
    assert rows[-1]["val_loss"] < 0  # what bce-target-range warns about: bce on 0..255 goes negative


def test_findings_written_by_others_are_kept(tmp_path):
    from aelab.doctor.monitor import merge_and_save

    save_findings(tmp_path, [Finding("divergence", "error", "NaN at epoch 3", epoch=3)])
    merge_and_save(tmp_path, [Finding("blob", "error", "a blob")])
    assert [f.id for f in read_findings(tmp_path)] == ["divergence", "blob"]


def test_train_strict_exits_3_on_errors_and_doctor_lists_them(tmp_path, capsys):
    stopped = tmp_path / "stopped"
    assert main(["train", *TINY_FLAGS, "--raw-pixels", "--strict", "--out", str(stopped)]) == EXIT_FINDINGS
    printed = capsys.readouterr().err  # --strict stops before the first step and says why on stderr
    assert f"aelab doctor {stopped}" in printed and "ERROR   input-range" in printed
    out = tmp_path / "run"  # trained without --strict: the doctor's listing and a recheck agree
    assert main(["train", *TINY_FLAGS, "--raw-pixels", "--no-report", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["doctor", str(out)]) == 0
    listed = capsys.readouterr().out
    assert "ERROR input-range (before training)" in listed and "why: " in listed and "fix: " in listed
    assert "evidence: input_min=0" in listed and "input_max=255" in listed
    assert main(["doctor", str(out), "--strict"]) == EXIT_FINDINGS
    before = {f.id for f in read_findings(out)}
    assert main(["doctor", str(out), "--recheck"]) == 0
    assert "checked again" in capsys.readouterr().out
    assert {f.id for f in read_findings(out)} == before == {f.id for f in diagnose_run(out)}


def test_strict_exit_code_follows_the_error_findings(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY_FLAGS, "--epochs", "1", "--strict", "--out", str(out)])
    errors = [f for f in read_findings(out) if f.severity == "error"]
    assert code == (EXIT_FINDINGS if errors else 0)
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "lenient")]) == 0


def test_doctor_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("aelab: error: ") and error.count("\n") == 1


def test_a_resumed_run_is_checked_again_from_its_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--no-report", "--out", str(out)]) == 0
    save_findings(out, [Finding("divergence", "error", "kept from before", epoch=1)])
    assert main(["train", "--resume", str(out), "--quiet", "--no-report"]) == 0
    found = {f.id for f in read_findings(out)}
    assert "divergence" in found  # others' findings stay
    assert "bce-floor" in found  # the doctor's, measured again from the folder
    assert "details: aelab doctor" in capsys.readouterr().out
