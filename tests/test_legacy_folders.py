"""Folders written by an earlier aelab still work: before issue 10 every config recorded
data.val_fraction 0.2, also on datasets with their own split, where it is None now."""

from __future__ import annotations

import yaml

from aelab.cli import main
from aelab.runs import load_config, upgrade_config_dict

from .conftest import TINY_FLAGS

LR = TINY_FLAGS.index("--lr")
FLAGS = [*TINY_FLAGS[:LR], *TINY_FLAGS[LR + 2 :], "--epochs", "1", "--no-report"]


def record_old_val_fraction(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["data"]["val_fraction"] is None
    raw["data"]["val_fraction"] = 0.2
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_sweep_that_recorded_the_old_val_fraction_is_skipped_not_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    command = ["compare", *FLAGS, "--grid", "loss=bce,mse", "--out", str(out)]
    assert main(command) == 0
    for path in (out / "sweep.yaml", out / "loss-bce" / "config.yaml", out / "loss-mse" / "config.yaml"):
        record_old_val_fraction(path)
    before = {path: path.read_bytes() for path in out.rglob("*.safetensors")}
    for again in (command, ["compare", "--out", str(out), "--quiet", "--no-report"]):
        capsys.readouterr()
        assert main(again) == 0
        assert "2 runs (2 done before, 0 to resume, 0 to train)" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in out.rglob("*.safetensors")} == before
    assert load_config(out / "loss-bce").data.val_fraction is None


def test_the_upgrade_leaves_user_data_and_other_values_alone():
    for raw in (
        {"data": {"name": "array", "path": "x.npy", "val_fraction": 0.2}},
        {"data": {"name": "mnist-10k", "val_fraction": 0.3}},
        {"data": {"name": "no-such-dataset", "val_fraction": 0.2}},
        {"train": {"epochs": 1}},
    ):
        assert upgrade_config_dict(raw) == raw
    old = {"data": {"val_fraction": 0.2}, "train": {"epochs": 1}}
    assert upgrade_config_dict(old) == {"data": {"val_fraction": None}, "train": {"epochs": 1}}
    assert old["data"]["val_fraction"] == 0.2  # the caller's dict is left as it was
