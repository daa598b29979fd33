"""A sweep checks every name of every grid point before anything trains, and treats runtime
settings (train.device, threads, engine) as recorded with each run, not as its identity."""

import pytest
import torch
import yaml

from aelab import RunConfig, train
from aelab.cli import main
from aelab.config import RUNTIME_KEYS, run_identity, same_run
from aelab.errors import ConfigError, DataError, RunFolderError
from aelab.runs import SWEEP_FILE, load_config, read_metrics, read_status
from aelab.sweep import SweepSpec, parse_grid, run_sweep

from .conftest import TINY, TINY_FLAGS
from .test_resume import Stop, StopAfter

TINY_BASE = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 1}})


@pytest.mark.parametrize(
    ("axis", "message"),
    [
        ("activation=sigmoid,relu,foo", "(activation=foo): unknown hidden activation 'foo'; valid: sigmoid, relu"),
        ("code_activation=relu,tanh,foo", "(code_activation=foo): unknown hidden activation 'foo'; valid: sigmoid"),
        ("output_activation=sigmoid,linear,foo", "(output_activation=foo): unknown output activation 'foo'"),
        ("init=he_normal,glorot_normal,zeros", "(init=zeros): unknown init 'zeros'; valid: glorot_uniform"),
        ("model=dense,conv,rnn", "(kind=rnn): unknown model 'rnn'; valid: dense, conv"),
        ("optimizer=adam,sgd,lbfgs", "(optimizer=lbfgs): unknown optimizer 'lbfgs'; valid: adam"),
        ("loss=bce,mse,hinge", "(loss=hinge): unknown loss 'hinge'; valid: bce, mse, mae, cb"),
        ("dataset=digits,mnist-10k,cifar", "(name=cifar): unknown dataset 'cifar'; valid names: "),
    ],
)
def test_an_unknown_name_in_the_third_grid_point_fails_before_any_run_folder(tmp_path, axis, message):
    spec = SweepSpec(TINY_BASE, parse_grid([axis]))
    error = DataError if axis.startswith("dataset") else ConfigError
    with pytest.raises(error, match=r"^grid point 3 of 3 \(") as info:
        run_sweep(spec, tmp_path / "sweep")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "sweep").exists()


def test_an_engine_that_cannot_train_a_grid_point_fails_before_any_run_folder(tmp_path):
    spec = SweepSpec(TINY_BASE.replace(train={"engine": "fast"}), parse_grid(["latent=4,8", "model=dense,conv"]))
    with pytest.raises(ConfigError, match=r"grid point 2 of 4 \(latent=4 kind=conv\): train.engine fast cannot train"):
        run_sweep(spec, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_the_command_line_names_the_bad_grid_point_in_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["compare", "--out", str(out), "--grid", "activation=sigmoid,relu,foo", "--epochs", "1", *TINY_FLAGS])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("aelab: error: grid point 3 of 3 (activation=foo): unknown hidden activation 'foo'; valid: ")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_device_the_machine_lacks_fails_before_the_sweep_folder_is_made(tmp_path):
    spec = SweepSpec(TINY_BASE.replace(train={"device": "cuda"}), parse_grid(["loss=bce,mse"]))
    with pytest.raises(ConfigError, match=r"train\.device is cuda but no GPU is visible"):
        run_sweep(spec, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_runtime_settings_are_not_part_of_a_runs_identity():
    base = TINY_BASE
    for key, value in (("device", "cpu"), ("threads", 2), ("engine", "autograd")):
        assert same_run(base, base.replace(train={key: value}))
        assert key not in run_identity(base)["train"]
    assert not same_run(base, base.replace(train={"seed": 1}))
    assert {f"train.{key}" for key in ("device", "threads", "engine")} == set(RUNTIME_KEYS)


@pytest.mark.parametrize("flags", [["--threads", "2"], ["--engine", "autograd"], ["--device", "cpu"]])
def test_a_finished_sweep_rerun_with_other_runtime_settings_skips_every_run(tmp_path, capsys, flags):
    out = tmp_path / "sweep"
    command = ["compare", "--out", str(out), "--grid", "loss=bce,mse", "--epochs", "1", "--no-report", *TINY_FLAGS]
    assert main(command) == 0
    weights = {name: (out / name / "model.safetensors").read_bytes() for name in ("loss-bce", "loss-mse")}
    capsys.readouterr()
    assert main([*command, *flags]) == 0
    printed = capsys.readouterr().out
    assert f"sweep {out}: 2 runs (2 done before, 0 to resume, 0 to train)" in printed
    assert "training" not in printed
    assert {name: (out / name / "model.safetensors").read_bytes() for name in weights} == weights
    for name in weights:  # each run keeps what it recorded
        assert load_config(out / name).train.threads == 1


def test_a_new_run_of_a_sweep_trains_as_asked_now_and_a_killed_one_resumes_as_recorded(tmp_path):
    spec = SweepSpec(TINY_BASE.replace(train={"epochs": 3}), parse_grid(["seed=0,1"]))
    out = tmp_path / "sweep"
    first, second = spec.points()
    with pytest.raises(Stop):  # a run killed after its first epoch, trained on one thread
        train(first.config, out / first.name, progress=False, callbacks=[StopAfter(2)], doctor=False, report=False)
    assert read_status(out / first.name)["threads"] == 1
    out.mkdir(exist_ok=True)
    (out / SWEEP_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    result = run_sweep(SweepSpec(spec.base.replace(train={"threads": 2}), spec.grid), out)
    assert result.resumed == [first.name] and result.trained == [second.name]
    assert read_status(out / first.name)["threads"] == 1 and load_config(out / first.name).train.threads == 1
    assert read_status(out / second.name)["threads"] == 2 and load_config(out / second.name).train.threads == 2
    alone = train(first.config, tmp_path / "alone", progress=False, doctor=False, report=False)
    assert alone.history[-1]["val_loss"] == read_metrics(out / first.name)[-1]["val_loss"]


def test_a_run_folder_with_another_config_is_still_refused(tmp_path):
    spec = SweepSpec(TINY_BASE, parse_grid(["loss=bce"]))
    out = tmp_path / "sweep"
    run_sweep(spec, out)
    with pytest.raises(RunFolderError, match=r"another base config \(train\.seed is 0 there, 1 here\)"):
        run_sweep(SweepSpec(TINY_BASE.replace(train={"seed": 1, "threads": 2}), spec.grid), out)


def test_a_sweep_on_the_in_memory_dataset_is_refused_before_the_sweep_folder_is_made(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["compare", "--dataset", "in-memory", "--out", str(out), "--quiet", "--no-report"]) == 2
    assert "images passed from Python" in capsys.readouterr().err
    assert not out.exists()
