import os

import pytest

from aelab.config import RunConfig

TINY = {
    "data": {"train_limit": 256, "val_limit": 64},
    "model": {"hidden_dims": [16], "latent_dim": 4},
    "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "threads": 1},
}

TINY_FLAGS = [
    "--train-limit", "256", "--val-limit", "64", "--hidden", "16", "--latent", "4",
    "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.fixture
def tiny_config() -> RunConfig:
    return RunConfig.from_dict(TINY)


class MakesMarker:
    """Unpickling this creates the folder `path`: proof that something unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))
