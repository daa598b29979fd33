"""The "tensorboard" logger: event files read back with TensorBoard's own reader."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aelab
from aelab.callbacks import Callback
from aelab.cli import main
from aelab.findings import read_findings
from aelab.sweep import SweepSpec, parse_grid, run_sweep

from .conftest import NO_DOCTOR, TINY_FLAGS, tiny

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata

from aelab.callbacks.tensorboard import STEP_TAG, scalar_tag

STEPS = 16  # TINY's 256 training images in batches of 16: steps per epoch


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    )
    events.Reload()
    return events


def all_tag_steps(run_dir: Path) -> list[tuple[str, int]]:
    """Every (tag, step) written, across all event files of the run's tensorboard/."""
    found = []
    for path in sorted((run_dir / "tensorboard").iterdir()):
        for event in EventFileLoader(str(path)).Load():
            found += [(value.tag, int(event.step)) for value in event.summary.value]
    return found


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_event_files_hold_every_metric_images_histograms_and_findings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--batch-size", "16", "--epochs", "2", "--tensorboard", "--out", str(out)]) == 0
    events = read_events(out)
    tags = events.Tags()
    rows = metrics(out)
    for row in rows:  # every number of every metrics.jsonl row, at step = its epoch
        for key, value in row.items():
            points = {event.step: event.value for event in events.Scalars(scalar_tag(key))}
            assert points[row["epoch"]] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert any(key.startswith("doctor_") for key in rows[0])  # the doctor's numbers came through too
    steps = [event.step for event in events.Scalars(STEP_TAG)]
    assert steps == [10, 20, 30]  # every 10 steps over 2 epochs of 16
    assert all(0 < event.value < 1 for event in events.Scalars(STEP_TAG))
    images = events.Images("reconstructions")
    assert [image.step for image in images] == [0, 2]  # before training and at the last epoch
    assert (images[0].height, images[0].width) == (2 * 28, 8 * 28)  # originals above reconstructions
    assert images[0].encoded_image_string != images[1].encoded_image_string  # the model changed
    histograms = set(tags["histograms"])
    assert {
        "weights/encoder.0.weight",
        "weights/decoder.1.bias",
        "activations/encoder.0",
        "activations/code",
    } <= histograms
    assert {"outputs/pixels", "outputs/targets"} <= histograms
    pixels = events.Histograms("outputs/pixels")
    assert [event.step for event in pixels] == [0, 2]
    assert pixels[-1].histogram_value.min >= 0 and pixels[-1].histogram_value.max <= 1
    assert pixels[-1].histogram_value.num == 64 * 784  # the 64 validation images' pixels
    texts = {tag: events.Tensors(tag) for tag in tags["tensors"]}
    findings_text = texts["findings/text_summary"][-1].tensor_proto.string_val[0].decode()
    for finding in read_findings(out):
        assert finding.title in findings_text
    assert "learning_rate: 0.01" in texts["config/text_summary"][0].tensor_proto.string_val[0].decode()


def test_the_findings_text_is_written_after_every_other_callback_has_ended(tmp_path):
    # The doctor checks once more at the end, on the whole probe, and a callback may add its
    # own finding at the end too; the logger's findings text comes after them, although
    # loggers come first in the callbacks.
    from aelab.findings import Finding, save_findings

    class LastWord(Callback):
        def on_train_end(self, trainer, result):
            final = Finding(id="final-only", severity="info", title="seen only at the end")
            save_findings(result.run_dir, [*read_findings(result.run_dir), final])

    out = tmp_path / "run"
    aelab.train(tiny(), out, progress=False, loggers=["tensorboard"], callbacks=[LastWord()], report=False)
    saved = read_findings(out)
    assert "final-only" in {finding.id for finding in saved} and len(saved) > 1  # the doctor's kept too
    events = read_events(out)
    text = events.Tensors("findings/text_summary")[-1].tensor_proto.string_val[0].decode()
    for finding in saved:
        assert finding.title in text


def test_the_logger_leaves_training_exactly_as_it_was(tmp_path):
    config = tiny(train={"epochs": 3, "batch_size": 16})
    plain = aelab.train(config, tmp_path / "plain", progress=False)
    logged = aelab.train(config, tmp_path / "logged", progress=False, loggers=["tensorboard"])
    assert (tmp_path / "logged" / "tensorboard").is_dir() and not (tmp_path / "plain" / "tensorboard").exists()

    def numbers(history):
        return [{key: value for key, value in row.items() if key != "seconds"} for row in history]

    assert numbers(plain.history) == numbers(logged.history)
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("plain", "logged")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


class StopAt(Callback):
    """Raises mid-epoch, as a kill would stop the run: the last checkpoint is kept."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, trainer, step, loss):
        if step == self.step:
            raise KeyboardInterrupt


def test_a_resume_keeps_each_epoch_once_and_drops_what_came_after_the_checkpoint(tmp_path):
    config = tiny(train={"epochs": 4, "batch_size": 16})
    whole = aelab.train(config, tmp_path / "whole", progress=False, loggers=["tensorboard"], **NO_DOCTOR)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        aelab.train(
            config, out, progress=False, loggers=["tensorboard"], callbacks=[StopAt(2 * STEPS + 5)], **NO_DOCTOR
        )
    assert len(metrics(out)) == 2  # killed in epoch 3: epochs 1 and 2 checkpointed
    # What a process killed at a worse moment can leave: a second file with epoch 1 again and
    # events of epoch 3 and its steps, which the checkpoint does not hold.
    from torch.utils.tensorboard import SummaryWriter

    stale = SummaryWriter(str(out / "tensorboard"))
    stale.add_scalar(scalar_tag("val_mse"), 123.0, 1)
    stale.add_scalar(scalar_tag("val_mse"), 456.0, 3)
    stale.add_scalar(STEP_TAG, 789.0, 2 * STEPS + 10)
    stale.close()
    aelab.resume(out, progress=False, loggers=["tensorboard"])

    written = all_tag_steps(out)
    assert len(written) == len(set(written)), "a (tag, step) written twice"
    assert len(list((out / "tensorboard").iterdir())) == 1  # rewritten into one file
    events, reference = read_events(out), read_events(tmp_path / "whole")
    assert sorted(events.Tags()["scalars"]) == sorted(reference.Tags()["scalars"])
    for tag in events.Tags()["scalars"]:
        if tag == scalar_tag("seconds"):
            continue
        resumed = [(event.step, event.value) for event in events.Scalars(tag)]
        assert resumed == [(event.step, event.value) for event in reference.Scalars(tag)], tag
    assert [event.step for event in events.Scalars(STEP_TAG)] == [10, 20, 30, 40, 50, 60]
    assert [image.step for image in events.Images("reconstructions")] == [0, 4]
    assert [row["val_mse"] for row in metrics(out)] == [row["val_mse"] for row in whole.history]


def test_overwrite_clears_the_event_files_and_a_foreign_file_there_is_kept(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY_FLAGS, "--epochs", "1", "--tensorboard", "--no-report", "--out", str(out)]
    assert main(argv) == 0
    first = sorted(path.name for path in (out / "tensorboard").iterdir())
    assert main([*argv, "--overwrite"]) == 0
    second = sorted(path.name for path in (out / "tensorboard").iterdir())
    assert len(second) == 1 and second != first
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--no-report", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "tensorboard").exists()  # a run without the logger leaves no stale events
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2
    assert "tensorboard/" in capsys.readouterr().err
    assert (out / "tensorboard" / "notes.txt").read_text() == "mine"


def test_a_sweep_gets_the_hparams_dashboard(tmp_path):
    spec = SweepSpec(base=tiny(train={"epochs": 1}), grid=parse_grid(["loss=bce,mse", "lr=0.01,0.001"]))
    result = run_sweep(spec, tmp_path / "sweep", loggers=["tensorboard"])
    rows = {row["run"]: row for row in json.loads((tmp_path / "sweep" / "results.json").read_text())}
    assert len(rows) == 4
    for point in result.points:
        run_dir = tmp_path / "sweep" / point.name
        events = read_events(run_dir)
        content = events.PluginTagToContent("hparams")
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        shown = {key: value.string_value or value.number_value for key, value in start.hparams.items()}
        assert shown == {"loss": point.values["loss"], "lr": point.values["lr"]}
        experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        domains = {
            info.name: [v.string_value or v.number_value for v in info.domain_discrete.values]
            for info in experiment.hparam_infos
        }
        assert domains == {"loss": ["bce", "mse"], "lr": [0.001, 0.01]}
        metric_tags = {info.name.tag for info in experiment.metric_infos}
        assert {"final/mse", "final/ssim", "final/blob_score", "final/train_loss"} <= metric_tags
        for tag in metric_tags:  # each run's final metrics are its results row
            value = events.Scalars(tag)[-1].value
            assert value == pytest.approx(rows[point.name][tag.removeprefix("final/")], rel=1e-6, abs=1e-7), tag
        assert events.Scalars(scalar_tag("val_mse"))  # its own per-epoch events sit beside them
    # A rerun (nothing to train) rewrites the hparams file instead of adding one.
    run_sweep(spec, tmp_path / "sweep", loggers=["tensorboard"])
    files = sorted(path.name for path in (tmp_path / "sweep" / result.points[0].name / "tensorboard").iterdir())
    assert sorted(name.rsplit(".", 1)[1] for name in files) == ["aelab", "hparams"]  # the run's own, and one hparams


def test_without_the_package_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err == "aelab: error: the tensorboard logger needs the tensorboard package: pip install 'aelab[tensorboard]'\n"
    )
    assert not out.exists()  # refused before anything was written


def test_importing_aelab_does_not_import_tensorboard():
    code = (
        "import sys, aelab, aelab.cli, aelab.callbacks.tensorboard; "
        "print(sorted(m for m in sys.modules if 'tensorboard' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['aelab.callbacks.tensorboard']"


def test_scalar_tags_group_the_row():
    assert scalar_tag("val_mse") == "val/mse" and scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("doctor_dead_share") == "doctor/dead_share" and scalar_tag("seconds") == "run/seconds"
