import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aelab import config as config_module
from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aelab.errors import ConfigError
from aelab.sweep import parse_value
from aelab.train import OPTIMIZERS


def test_round_trip_through_dict():
    config = RunConfig(model=ModelConfig(hidden_dims=(128, 64), latent_dim=28), train=TrainConfig(loss="mse"))
    raw = config.to_dict()
    assert raw["model"]["hidden_dims"] == [128, 64]
    assert RunConfig.from_dict(raw) == config


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        RunConfig().train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"lossy": "bce"}}, "unknown key 'lossy' in train; valid keys: loss,"),
        ({"extra": {}}, "unknown key 'extra' in config"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be at least 1, got 0"),
        ({"train": {"learning_rate": -0.1}}, "train.learning_rate must be positive"),
        ({"train": {"batch_size": "big"}}, "train.batch_size must be an integer, got 'big'"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
        ({"model": {"hidden_dims": 100}}, "model.hidden_dims must be a list"),
        ({"model": {"hidden_dims": [0]}}, "model.hidden_dims must be positive"),
        ({"model": {"tied": "yes"}}, "model.tied must be true or false"),
        ({"model": {"kind": "conv", "hidden_dims": []}}, "at least one channel count for conv"),
        ({"data": {"binarize": "maybe"}}, "data.binarize must be one of none, threshold, bernoulli"),
        ({"train": "fast"}, "train must be a mapping"),
    ],
)
def test_from_dict_rejects_bad_input_with_the_key_named(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RunConfig.from_dict(raw)


def test_ints_are_accepted_for_floats_and_replace_validates():
    config = RunConfig.from_dict({"train": {"learning_rate": 1}})
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    changed = config.replace(train={"loss": "mae"}, data={"train_limit": 10})
    assert changed.train.loss == "mae" and changed.data.train_limit == 10 and changed.train.learning_rate == 1.0
    with pytest.raises(ConfigError):
        config.replace(train={"epochs": 0})


def test_empty_hidden_list_allowed_for_dense():
    assert RunConfig.from_dict({"model": {"hidden_dims": []}}).model.hidden_dims == ()
    assert DataConfig().name == "mnist-10k"


# --- issue 10, item 12: one number parser for config files, sweep files, grid values and flags


@pytest.mark.parametrize(
    ("section", "key", "spelling", "value"),
    [
        ("train", "learning_rate", "1e-3", 0.001),  # YAML 1.1 reads this as text
        ("train", "learning_rate", " 1E-3 ", 0.001),
        ("train", "learning_rate", "0.01", 0.01),
        ("train", "weight_decay", "0", 0.0),
        ("data", "threshold", "5e-1", 0.5),
        ("train", "epochs", "1e1", 10),  # a whole number in any spelling fits an integer key
        ("train", "epochs", 10.0, 10),
        ("train", "batch_size", "256", 256),
        ("train", "seed", "12345678901234567890", 12345678901234567890),  # exact, not through a float
        ("train", "patience", "3", 3),
    ],
)
def test_numbers_spelt_as_text_are_read_as_numbers(section, key, spelling, value):
    config = RunConfig.from_dict({section: {key: spelling}})
    parsed = getattr(getattr(config, section), key)
    assert parsed == value and type(parsed) is type(value)
    assert parse_value(key, spelling) == value  # a grid value: the same parser


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "learning_rate", math.inf, "train.learning_rate must be a finite number, got inf"),
        ("train", "learning_rate", "inf", "train.learning_rate must be a finite number, got 'inf'"),
        ("train", "learning_rate", "nan", "train.learning_rate must be a finite number, got 'nan'"),
        ("train", "momentum", math.nan, "train.momentum must be a finite number, got nan"),
        ("train", "weight_decay", "-inf", "train.weight_decay must be a finite number"),
        ("data", "val_fraction", math.nan, "data.val_fraction must be a finite number"),
        ("train", "learning_rate", True, "train.learning_rate must be a number, got True"),
        ("train", "learning_rate", "1e-3x", "train.learning_rate must be a number, got '1e-3x'"),
        ("train", "epochs", "2.5", "train.epochs must be an integer, got '2.5'"),
        ("train", "epochs", "inf", "train.epochs must be an integer, got 'inf'"),
        ("train", "epochs", True, "train.epochs must be an integer, got True"),
        ("train", "batch_size", [64], "train.batch_size must be an integer, got [64]"),
    ],
)
def test_numbers_that_are_not_finite_or_not_whole_are_refused(section, key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_dict({section: {key: value}})


def test_the_grid_refuses_what_config_files_refuse():
    for key, value in (("lr", "inf"), ("lr", "nan"), ("momentum", "-inf"), ("epochs", "1.5"), ("hidden", "[100.5]")):
        with pytest.raises(ConfigError, match=f"grid key {key}: "):
            parse_value(key, value)


def test_configs_built_directly_refuse_values_that_are_not_finite():
    with pytest.raises(ConfigError, match=re.escape("train.learning_rate must be a finite number, got inf")):
        TrainConfig(learning_rate=math.inf)
    with pytest.raises(ConfigError, match=re.escape("data.threshold must be a finite number, got nan")):
        DataConfig(threshold=math.nan, binarize="threshold")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_reads_back_from_its_text(number):
    parse_number = config_module.parse_number
    assert parse_number(repr(number), float) == number
    assert parse_number(number, float) == number


@given(st.integers())
def test_any_integer_reads_back_from_its_text(number):
    parse_number = config_module.parse_number
    assert parse_number(str(number), int) == number
    if abs(number) < 2**53:
        assert parse_number(float(number), int) == number
        assert parse_number(f"{float(number):e}", int) == int(float(f"{float(number):e}"))


# --- issue 10, item 11: values that would be ignored are refused


def test_momentum_is_refused_where_the_optimizer_has_none_and_matches_the_optimizers():
    for name, make in OPTIMIZERS.items():
        train = {"optimizer": name, "momentum": 0.5}
        if name in config_module.MOMENTUM_OPTIMIZERS:
            optimizer = make([torch.nn.Parameter(torch.zeros(1))], RunConfig.from_dict({"train": train}).train)
            assert optimizer.defaults["momentum"] == 0.5
        else:
            with pytest.raises(ConfigError, match=f"train.momentum applies to sgd and rmsprop only; {name} has none"):
                RunConfig.from_dict({"train": train})
            assert "momentum" not in make([torch.nn.Parameter(torch.zeros(1))], TrainConfig(optimizer=name)).defaults


def test_threshold_is_refused_unless_binarize_is_threshold():
    with pytest.raises(ConfigError, match=re.escape("data.threshold applies to data.binarize threshold only")):
        DataConfig(threshold=0.3)
    assert DataConfig(threshold=0.3, binarize="threshold").threshold == 0.3
    assert DataConfig(binarize="bernoulli").threshold == 0.5  # the default stands for "not used"
