"""Library calls leave the process as they found it: no umask toggling, no reseeded GPU
generators, no logging handlers, warning filters, default dtype, environment or signal
handlers changed (issue 11, point 6)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
import warnings

import pytest
import torch

from aelab.config import ModelConfig
from aelab.nn.models import build_model
from aelab.runs import atomic_write_bytes, atomic_write_text
from aelab.train import train

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes and umask")

MASK = 0o027  # a umask other than the usual 0o022, so a mode computed from a guessed mask shows


@pytest.fixture
def fixed_umask(monkeypatch):
    """The process umask set to MASK, and os.umask made to fail: any library code that sets or
    reads the umask through it (the only way to read it outside /proc) fails the test."""
    real_umask = os.umask
    before = real_umask(MASK)

    def umask_called(mask):
        raise AssertionError(f"os.umask({mask:#o}) called: it changes the umask of every thread")

    monkeypatch.setattr(os, "umask", umask_called)
    yield
    monkeypatch.undo()
    real_umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_give_the_mode_open_gives_and_never_touch_the_umask(tmp_path, fixed_umask):
    reference = tmp_path / "plain.txt"
    with open(reference, "w") as file:  # what any program writing a file would get here
        file.write("x")
    assert _mode(reference) == 0o666 & ~MASK == 0o640
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "first\n")
    assert _mode(target) == _mode(reference)
    target.chmod(0o600)  # a file the user narrowed: a rewrite gives the mode a new file gets, as before
    atomic_write_bytes(target, b"second\n")
    assert target.read_bytes() == b"second\n" and _mode(target) == _mode(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "plain.txt"]  # no temporaries left


def test_a_failed_atomic_write_removes_its_temporary_and_keeps_the_old_file(tmp_path, fixed_umask, monkeypatch):
    from aelab.errors import RunFolderError

    target = tmp_path / "status.json"
    atomic_write_text(target, "old")

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunFolderError, match=r"No space left on device\); the previous version of the file is kept"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_whole_run_writes_every_file_with_the_mode_open_gives(tmp_path, tiny_config, fixed_umask):
    run = tmp_path / "run"
    train(tiny_config, run, progress=False)
    modes = {p.name: _mode(p) for p in run.iterdir()}
    assert {"config.yaml", "model.safetensors", "checkpoint.safetensors", "report.html"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~MASK}


def test_building_a_model_reseeds_no_generator_it_does_not_restore(monkeypatch):
    cpu_state = torch.get_rng_state()

    def reseeded(*args):
        raise AssertionError("a GPU generator was reseeded; fork_rng(devices=[]) does not restore it")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeded)
    config = ModelConfig(hidden_dims=(8,), latent_dim=2)
    first = build_model(config, (1, 4, 4), seed=3)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    # The seed alone still decides the weights.
    again = build_model(config, (1, 4, 4), seed=3)
    other = build_model(config, (1, 4, 4), seed=4)
    weights = first.state_dict()
    assert all(torch.equal(tensor, again.state_dict()[name]) for name, tensor in weights.items())
    assert not all(torch.equal(tensor, other.state_dict()[name]) for name, tensor in weights.items())


def _process_state() -> dict[str, object]:
    root = logging.getLogger()
    return {
        "root handlers": list(root.handlers),
        "root level": root.level,
        "aelab handlers": {
            name: list(logger.handlers)
            for name, logger in logging.root.manager.loggerDict.items()
            if name.startswith("aelab") and isinstance(logger, logging.Logger)
        },
        "warning filters": list(warnings.filters),
        "dtype": torch.get_default_dtype(),
        "environment": dict(os.environ),
        "sys.path": list(sys.path),
        "signals": {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)},
        "threads": torch.get_num_threads(),
        "cwd": os.getcwd(),
    }


def test_a_run_leaves_logging_warnings_dtype_environment_and_signals_as_they_were(tmp_path, tiny_config):
    # A first run imports what training needs; some of those libraries change the process as
    # they are imported (scikit-learn sets KMP_* variables, torch's optimizer imports dynamo,
    # which sets TORCHINDUCTOR_CACHE_DIR; scipy adds warning filters). That is theirs, once;
    # what is measured is what aelab's own code does on every run.
    train(tiny_config, tmp_path / "warm-up", progress=False)
    before, rng_before = _process_state(), torch.get_rng_state()
    train(tiny_config, tmp_path / "run", progress=False)
    assert _process_state() == before
    assert torch.equal(torch.get_rng_state(), rng_before)
