"""The likelihoods with more than one parameter per pixel, through every path that reads a
decoder's output: models, training (autograd; the fast step refuses them), the run folder and
its weights, evaluation, the doctor, the report, `aelab loss` and `aelab compare`."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import aelab
from aelab import RunConfig, build_model, load_run, train
from aelab.cli import main
from aelab.doctor import check
from aelab.errors import ConfigError
from aelab.evaluate import evaluate_run
from aelab.likelihoods import LIKELIHOODS
from aelab.losses import bounded_log_scale
from aelab.nn.models import ModelConfig
from aelab.train import RunState
from aelab.train.steps import choose_engine, config_step_problem

from .conftest import TINY, TINY_FLAGS, tiny

NEW = ["gaussian", "gaussian-pixel", "laplace", "laplace-pixel", "beta"]
SHAPE = (1, 8, 8)


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("name", NEW)
def test_models_output_the_likelihoods_parameters_and_show_the_mean(kind, name):
    record = LIKELIHOODS[name]
    config = ModelConfig(kind=kind, hidden_dims=(4,), latent_dim=3)
    model = build_model(config, SHAPE, seed=1, loss=name)
    images = torch.rand(5, *SHAPE)
    logits = model(images)
    assert logits.shape == (5, record.decoded_parameters, 8, 8)
    output, from_logits = model.loss_input(logits)
    assert from_logits and output.shape == (5, 2, 8, 8)
    assert torch.equal(output[:, :1], logits[:, :1])
    assert torch.equal(model.pixels(logits), torch.sigmoid(logits[:, :1]))  # the shown pixels: the mean
    shared = dict(model.named_parameters()).get("likelihood_parameters")
    if record.shared_parameters:
        assert shared is not None and shared.shape == (1,) and float(shared.detach()[0]) == 0.0
        assert (output[:, 1:] == 0).all()  # the shared raw scale, in every pixel
    else:
        assert shared is None and torch.equal(output[:, 1:], logits[:, 1:])


def test_other_output_activations_apply_to_the_location_only():
    model = build_model(ModelConfig(hidden_dims=(4,), latent_dim=3, output_activation="tanh"), SHAPE, loss="beta")
    logits = model(torch.rand(2, *SHAPE))
    output, from_logits = model.loss_input(logits)
    assert not from_logits
    assert torch.equal(output[:, :1], torch.tanh(logits[:, :1])) and torch.equal(output[:, 1:], logits[:, 1:])


def test_a_tied_model_cannot_decode_a_second_parameter_but_shares_a_scale():
    tied = ModelConfig(hidden_dims=(4,), latent_dim=3, tied=True)
    with pytest.raises(ConfigError, match=r"model\.tied .* cannot decode 2 values per pixel"):
        build_model(tied, SHAPE, loss="gaussian-pixel")
    assert build_model(tied, SHAPE, loss="gaussian")(torch.rand(2, *SHAPE)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("name", NEW)
def test_the_fast_step_refuses_them_by_name_and_they_train_through_autograd(name):
    config = tiny(train={"loss": name})
    assert f"no head for train.loss {name}" in config_step_problem(config)
    data = aelab.load_dataset(config.data)
    state = RunState(config, data)
    assert state.engine == "autograd"
    with pytest.raises(ConfigError, match=f"engine fast cannot train this model: it has no head for train.loss {name}"):
        choose_engine(config.replace(train={"engine": "fast"}), state.model)
    assert config_step_problem(tiny(train={"loss": "cb"})) is None  # the one-parameter ones keep theirs


@pytest.mark.parametrize("name", NEW)
def test_train_evaluate_report_and_doctor_on_each(name, tmp_path):
    out = tmp_path / "run"
    result = train(tiny(train={"loss": name, "epochs": 3, "learning_rate": 0.02}), out, progress=False)
    history = json.loads("[" + ",".join((out / "metrics.jsonl").read_text().splitlines()) + "]")
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]  # it learned
    assert all(math.isfinite(row["val_loss"]) and math.isfinite(row["val_mse"]) for row in history)
    # The run's val_loss is its own NLL of the validation targets, recomputed from the folder.
    run = load_run(out)
    record = LIKELIHOODS[name]
    targets = RunState(run.config, aelab.load_dataset(run.config.data)).validation.targets
    with torch.no_grad():
        output, from_logits = run.model.loss_input(run.model(targets))
        nll = float(record.nll(output, targets, logits=from_logits).mean())
        pixels = run.model.pixels(run.model(targets))
    assert history[-1]["val_loss"] == pytest.approx(nll, rel=1e-5)
    # val_mse is the MSE of the likelihood's mean, the pixels shown
    assert history[-1]["val_mse"] == pytest.approx(float((pixels - targets).square().mean()), rel=1e-5)
    floor = float(record.lowest(targets[:1])[0])
    expected_excess = history[-1]["val_loss"] - floor if math.isfinite(floor) else math.nan
    assert history[-1]["val_loss_excess"] == pytest.approx(expected_excess, nan_ok=True)
    evaluation = evaluate_run(out)
    assert evaluation.error is None and evaluation.metrics["val_loss"] == pytest.approx(nll, rel=1e-5)
    # the weights, a learned shared scale among them, are the folder's
    weights = load_file(out / "model.safetensors")
    assert ("likelihood_parameters" in weights) == bool(record.shared_parameters)
    if record.shared_parameters:
        learned = weights["likelihood_parameters"]
        assert float(learned[0]) != 0.0 and torch.equal(learned, result.model.likelihood_parameters.detach())
        assert torch.equal(run.model.likelihood_parameters.detach(), learned)
    report = (out / "report.html").read_text()
    assert name in report and "<img" in report
    findings = json.loads((out / "findings.json").read_text())
    assert isinstance(findings, (list, dict))
    # the doctor on the rebuilt model, from Python
    assert isinstance(check(run.model, targets[:16], loss=name), list)


def test_a_learned_shared_sigma_moves_towards_the_closed_form():
    # Rybkin et al.'s optimal shared sigma is the root mean squared error; gradient descent on
    # the learned one heads there from its start at 1.
    result = train(tiny(train={"loss": "gaussian", "epochs": 4, "learning_rate": 0.05}), progress=False, doctor=False)
    sigma = float(bounded_log_scale(result.model.likelihood_parameters.detach()).exp()[0])
    root_mse = math.sqrt(result.history[-1]["val_mse"])
    assert abs(math.log(sigma / root_mse)) < abs(math.log(1.0 / root_mse)) / 2


def test_the_doctor_refuses_a_users_module_for_a_multi_parameter_loss():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.Unflatten(1, SHAPE))
    with pytest.raises(ConfigError, match="loss gaussian-pixel reads 2 parameters per pixel"):
        check(module, torch.rand(8, *SHAPE), loss="gaussian-pixel")


def test_the_loss_command_prints_each_with_its_floor_and_words(capsys):
    assert main(["loss", "--target", "0.5,0.3", "--pred", "0.1,0.3"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in LIKELIHOODS}
    assert set(lines) == set(LIKELIHOODS)
    for name in NEW:
        words = lines[name].split()
        value = float(words[1])
        prediction, target = torch.tensor([[0.1], [0.3]], dtype=torch.float64), torch.tensor([[0.5], [0.3]])
        expected = float(LIKELIHOODS[name].prediction_nll(prediction, target.double()).mean())
        assert value == pytest.approx(expected, abs=6e-5)
        assert "goes below zero" in lines[name]
    assert float(lines["gaussian"].split()[2]) == pytest.approx(-6 + 0.5 * math.log(2 * math.pi), abs=6e-5)
    assert lines["beta"].split()[2] == "none"  # its floor is not computed


def test_compare_grids_over_the_new_losses(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    grid = ["--grid", "loss=mse,gaussian,gaussian-pixel,laplace,beta", "--epochs", "1"]
    assert main(["compare", *TINY_FLAGS, *grid, "--out", str(sweep)]) == 0
    rows = json.loads((sweep / "results.json").read_text())
    assert sorted(row["loss"] for row in rows) == sorted(["mse", "gaussian", "gaussian-pixel", "laplace", "beta"])
    for row in rows:
        assert row["state"] == "finished" and math.isfinite(row["val_loss"]) and math.isfinite(row["mse"]), row
        assert row["run"] == f"loss-{row['loss']}"
    assert all(name in (sweep / "report.html").read_text() for name in NEW if name != "laplace-pixel")


def test_defaults_leave_one_parameter_models_as_they_were():
    # The config and weights of a bce model do not change: no extra channels, no extra parameter.
    model = build_model(RunConfig.from_dict(TINY).model, SHAPE, seed=0, loss="bce")
    assert "likelihood_parameters" not in dict(model.named_parameters()) and model.output_values == 1
    assert model(torch.rand(2, *SHAPE)).shape == (2, *SHAPE)
