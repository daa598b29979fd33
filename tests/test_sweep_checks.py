"""A sweep checks every name of every grid point before anything trains, and treats runtime
settings (train.device, threads, engine) as recorded with each run, not as its identity."""

import pytest
import torch

from aelab import RunConfig
from aelab.cli import main
from aelab.errors import ConfigError, DataError
from aelab.sweep import SweepSpec, parse_grid, run_sweep

from .conftest import TINY, TINY_FLAGS

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
