import os
import time

import pytest
import torch

from aelab.config import RunConfig

TINY = {
    "data": {"train_limit": 256, "val_limit": 64},
    "model": {"hidden_dims": [16], "latent_dim": 4},
    "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01, "threads": 1},
}

# For runs whose history is compared with a resumed run's: aelab.resume runs neither the doctor
# (whose doctor_* numbers join the metrics rows) nor the report.
NO_DOCTOR = {"doctor": False, "report": False}

TINY_FLAGS = [
    "--train-limit", "256", "--val-limit", "64", "--hidden", "16", "--latent", "4",
    "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.fixture
def one_thread():
    """torch on one thread for the test, then as it was (for tests that build trainers directly,
    which do not apply train.threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> RunConfig:
    return RunConfig.from_dict(TINY)


def tiny(**sections: dict) -> RunConfig:
    """TINY with each section's keys updated from `sections`: tiny(train={"loss": "mse"})."""
    raw = {key: dict(value) for key, value in TINY.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return RunConfig.from_dict(raw)


def by_id(findings: list) -> dict:
    return {finding.id: finding for finding in findings}


def wait_for(condition, timeout: float = 120.0, poll: float = 0.005) -> None:
    """Wait until `condition()` is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(poll)


class MakesMarker:
    """Unpickling this creates the folder `path`: proof that something unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))
