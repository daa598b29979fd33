"""Opening someone else's run folder cannot run code, and a folder whose files do not match is
refused with the reason."""

import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import aelab
from aelab import Callback, RunConfig, load_run, resume, train
from aelab.cli import main
from aelab.errors import RunFolderError
from aelab.runs import read_safetensors

from .conftest import MakesMarker

TINY = {
    "data": {"train_limit": 64, "val_limit": 16},
    "model": {"hidden_dims": [6], "latent_dim": 2},
    "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
}


class Stop(Exception):
    pass


class StopAfterEpoch(Callback):
    def on_epoch_end(self, trainer, row, run_dir):
        if trainer.epoch == 2:
            raise Stop  # leaves the checkpoint of epoch 1 and status "running"


@pytest.fixture
def finished_run(tmp_path):
    train(RunConfig.from_dict(TINY), tmp_path / "finished", progress=False)
    return tmp_path / "finished"


@pytest.fixture
def unfinished_run(tmp_path):
    with pytest.raises(Stop):
        train(RunConfig.from_dict(TINY), tmp_path / "unfinished", progress=False, callbacks=[StopAfterEpoch()])
    return tmp_path / "unfinished"


def plant_pickles(run_dir, marker):
    payload = pickle.dumps(MakesMarker(marker))
    for name in ("checkpoint.pt", "model.pkl", "history.pickle", "optimizer.pth", "metrics.pkl"):
        (run_dir / name).write_bytes(payload)
    torch.save({"weights": MakesMarker(marker)}, run_dir / "model.pt")  # the torch.save flavour
    assert not marker.exists()


def rewrite(path, change):
    """Rewrite a safetensors file after `change(tensors, metadata)`."""
    tensors, metadata = read_safetensors(path)
    change(tensors, metadata)
    save_file(tensors, path, metadata)


def test_pickles_in_a_run_folder_are_never_unpickled(tmp_path, finished_run, unfinished_run, capsys):
    marker = tmp_path / "marker"
    plant_pickles(finished_run, marker)
    plant_pickles(unfinished_run, marker)
    assert load_run(finished_run).finished
    assert not load_run(unfinished_run).finished
    assert main(["train", "--resume", str(unfinished_run), "--quiet"]) == 0
    assert main(["train", "--resume", str(finished_run), "--quiet"]) == 0
    assert load_run(unfinished_run).finished
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors"])
def test_a_pickle_under_a_safetensors_name_is_refused_not_run(tmp_path, finished_run, unfinished_run, name):
    marker = tmp_path / "marker"
    run = finished_run if name == "model.safetensors" else unfinished_run
    torch.save({"weights": MakesMarker(marker)}, run / name)
    with pytest.raises(RunFolderError, match=f"{name} is not a valid safetensors file"):
        resume(run, progress=False) if name == "checkpoint.safetensors" else load_run(run)
    assert not marker.exists()


def test_a_config_yaml_with_a_python_tag_is_refused_not_run(tmp_path, unfinished_run):
    marker = tmp_path / "marker"
    (unfinished_run / "config.yaml").write_text(f"train: !!python/object/apply:os.mkdir ['{marker}']\n")
    with pytest.raises(RunFolderError, match=r"config.yaml does not validate \(config file .* is not valid YAML"):
        resume(unfinished_run, progress=False)
    assert not marker.exists()


def test_no_code_path_can_unpickle():
    """No unpickling call anywhere in the package: weights are safetensors, configs safe YAML."""
    unsafe = re.compile(
        r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|yaml\.(unsafe_)?load\(|yaml\.Loader|"
        r"yaml\.UnsafeLoader|weights_only\s*=\s*False|dill|joblib\.load|np\.load\((?![^)]*allow_pickle=False)"
    )
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(Path(aelab.__file__).parent.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if unsafe.search(line)
    ]
    assert found == []


MODEL_CHANGES = {
    "missing-weight": (lambda t, m: t.pop(sorted(t)[-1]), r"weights do not match the config's model \(missing \['"),
    "extra-weight": (
        lambda t, m: t.update(extra=torch.zeros(1)),
        r"weights do not match the config's model \(unexpected \['extra'\]",
    ),
    "wrong-shape": (
        lambda t, m: t.update({sorted(t)[0]: torch.zeros(3, 3)}),
        r"has shape \(3, 3\), the config's model needs \(",
    ),
    "invalid-config": (
        lambda t, m: m.update(config='{"train": {"batch_size": 0}}'),
        r"the config in its metadata does not validate \(train.batch_size must be at least 1, got 0\)",
    ),
    "no-config": (lambda t, m: m.pop("config"), "its metadata lacks a readable config"),
    "other-format": (lambda t, m: m.update(format="something-else"), "was not written by aelab"),
}


@pytest.mark.parametrize("case", list(MODEL_CHANGES))
def test_mismatched_model_files_are_refused_with_the_reason(finished_run, case):
    change, message = MODEL_CHANGES[case]
    rewrite(finished_run / "model.safetensors", change)
    with pytest.raises(RunFolderError, match=message):
        load_run(finished_run)


def test_damaged_safetensors_bytes_are_refused(finished_run):
    data = (finished_run / "model.safetensors").read_bytes()
    (finished_run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFolderError, match=r"model\.safetensors is not a valid safetensors file"):
        load_run(finished_run)


def first_optimizer_key(tensors):
    return next(k for k in sorted(tensors) if k.startswith("optimizer/") and tensors[k].ndim)


CHECKPOINT_CHANGES = {
    "missing-weight": (
        lambda t, m: t.pop(sorted(k for k in t if k.startswith("model/"))[0]),
        r"weights do not match the config's model \(missing",
    ),
    "optimizer-shape": (
        lambda t, m: t.update({first_optimizer_key(t): torch.zeros(2)}),
        r"does not match this run \(optimizer exp_avg\w* of parameter \d+ has shape \(2,\)",
    ),
    "missing-generator": (lambda t, m: t.pop("rng/order"), r"the checkpoint lacks 'rng/order'"),
    "bad-generator": (
        lambda t, m: t.update({"rng/order": torch.zeros(3, dtype=torch.uint8)}),
        "does not match this run",
    ),
    "epoch-vs-history": (lambda t, m: m.update(epoch="7"), r"does not match this run \(epoch 7 but 1 history rows\)"),
    "damaged-metadata": (lambda t, m: m.update(trainer="{not json"), "does not match this run"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CHANGES))
def test_mismatched_checkpoints_are_refused_with_the_reason(unfinished_run, case):
    change, message = CHECKPOINT_CHANGES[case]
    rewrite(unfinished_run / "checkpoint.safetensors", change)
    with pytest.raises(RunFolderError, match=message):
        resume(unfinished_run, progress=False)


def test_a_checkpoint_for_another_config_is_refused(unfinished_run):
    raw = yaml.safe_load((unfinished_run / "config.yaml").read_text())
    raw["train"]["learning_rate"] = 0.5
    (unfinished_run / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RunFolderError, match=r"written for another config than this run's config.yaml \(differs in "
                       r"train.learning_rate\)"):  # fmt: skip
        resume(unfinished_run, progress=False)


def test_a_config_yaml_failing_validation_is_refused(unfinished_run, capsys):
    raw = yaml.safe_load((unfinished_run / "config.yaml").read_text())
    raw["train"]["batch_size"] = 0
    (unfinished_run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "--resume", str(unfinished_run), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "config.yaml does not validate (train.batch_size must be at least 1, got 0)" in error
    assert error.count("\n") == 1
