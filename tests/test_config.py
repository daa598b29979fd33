import pytest

from aelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aelab.errors import ConfigError


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
