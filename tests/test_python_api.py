"""The Python API on data held in memory (issue 10, item 6) and the model's pixels (item 8).

`aelab.train(config, out, data=images)` takes a tensor or array as dataset "array" takes a file,
records in config.yaml what it trained on (dataset "in-memory" and the images' fingerprint),
writes the same files as `aelab train`, and every later command on the folder either works or
says in one line that the images are not in the folder and how to pass them.
"""

import numpy as np
import pytest
import torch
import yaml

import aelab
from aelab import Callback, DataConfig, DataError, ImageData, RunConfig, load_run, resume, train
from aelab.cli import main
from aelab.data import load_dataset
from aelab.doctor import recheck_run
from aelab.evaluate import evaluate_run
from aelab.findings import read_findings
from aelab.losses import cb_mean
from aelab.report import render_report
from aelab.runs import read_metrics, read_status
from aelab.train import RunState

IN_MEMORY = "in-memory"  # the dataset name a run on images passed from Python records

SMALL = {
    "model": {"hidden_dims": [8], "latent_dim": 3},
    "train": {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "threads": 1},
}


def small_config(**sections):
    return RunConfig.from_dict(SMALL).replace(**sections)


def images(count=200, shape=(8, 8), seed=0, kind="uint8"):
    """Smooth random blobs, so that a model has something to learn: (count, *shape)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, *shape, generator=generator)
    if kind == "uint8":
        return (pixels * 255).round().to(torch.uint8)
    return pixels


def config_yaml(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


class Stop(Exception):
    """Stands for the process dying mid-run (not an AelabError: nothing is recorded)."""


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, row, run_dir):
        if trainer.epoch == 2:  # epoch 1's checkpoint is on disk, epoch 2's work is lost
            raise Stop


@pytest.mark.parametrize(
    ("array", "dtype", "image_shape"),
    [
        (images(kind="uint8"), "uint8", (1, 8, 8)),  # (N, H, W) uint8 tensor
        (images(kind="float")[:, None], "float32", (1, 8, 8)),  # (N, C, H, W) float tensor
        (images(shape=(2, 28, 28), kind="uint8").numpy(), "uint8", (2, 28, 28)),  # (N, C, H, W) numpy uint8
        (images(kind="float").reshape(200, 64).double().numpy(), "float32", (1, 8, 8)),  # (N, D) float64
    ],
)
def test_train_on_a_tensor_or_array_records_in_memory_data_not_mnist(tmp_path, array, dtype, image_shape):
    result = train(small_config(), tmp_path / "run", data=array, progress=False, report=False)
    assert len(result.history) == 2 and result.model.image_shape == image_shape
    data = config_yaml(tmp_path / "run")["data"]
    assert data["name"] == IN_MEMORY and "mnist" not in str(data)
    size = "x".join(map(str, image_shape))
    # the last val_fraction (0.2) of the 200 images is validation, as for dataset "array"
    assert data["fingerprint"].startswith(f"{dtype}, 160 train + 40 validation images of {size}, sha256 ")
    run = load_run(tmp_path / "run")
    assert run.config.data.name == IN_MEMORY and run.model.image_shape == image_shape
    assert not (tmp_path / "run" / "report.html").exists()


def test_the_fingerprint_tells_the_same_images_from_others(tmp_path):
    first = images()
    train(small_config(), tmp_path / "a", data=first, progress=False, doctor=False, report=False)
    train(small_config(), tmp_path / "b", data=first.clone(), progress=False, doctor=False, report=False)
    changed = first.clone()
    changed[-1, 0, 0] ^= 1  # one validation pixel
    train(small_config(), tmp_path / "c", data=changed, progress=False, doctor=False, report=False)
    prints = [config_yaml(tmp_path / name)["data"]["fingerprint"] for name in "abc"]
    assert prints[0] == prints[1] != prints[2]
    assert torch.equal(changed[:-1], first[:-1])  # train() left the user's tensor as it was
    assert first.dtype == torch.uint8 and first.shape == (200, 8, 8)


def test_an_image_data_of_other_images_is_recorded_as_in_memory_and_the_configs_own_is_not(tmp_path):
    pixels = images(count=50)[:, None]
    mine = ImageData("mine", pixels[:40], pixels[40:], None, None, 1 / 255, "my images")
    train(small_config(), tmp_path / "mine", data=mine, progress=False, doctor=False, report=False)
    assert config_yaml(tmp_path / "mine")["data"]["name"] == IN_MEMORY
    assert "40 train + 10 validation images of 1x8x8" in config_yaml(tmp_path / "mine")["data"]["fingerprint"]
    config = small_config(data={"train_limit": 64, "val_limit": 32})
    train(config, tmp_path / "own", data=load_dataset(config.data), progress=False, doctor=False, report=False)
    assert config_yaml(tmp_path / "own")["data"] == config.to_dict()["data"]  # mnist-10k, as loaded


@pytest.mark.parametrize(
    "bad",
    [
        np.full((20, 8, 8), -1.0),  # negative pixels
        np.full((20, 8, 8), np.nan),  # NaN
        np.zeros((20, 2, 3, 8, 8)),  # 5-d
        np.zeros((0, 8, 8)),  # empty
        np.zeros((1, 8, 8)),  # one image: nothing left to validate on
        np.full((20, 8, 8), 70000, dtype=np.int64),  # beyond 16 bits
    ],
)
def test_a_bad_array_gets_the_array_datasets_one_line_error_and_no_folder(tmp_path, bad):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError) as from_file:
        load_dataset(DataConfig(name="array", path=str(tmp_path / "bad.npy")))
    with pytest.raises(DataError) as from_memory:
        train(small_config(), tmp_path / "run", data=bad, progress=False)
    assert str(from_memory.value).startswith("data: ")
    assert str(from_memory.value).removeprefix("data: ") == str(from_file.value).removeprefix("bad.npy: ")
    assert "\n" not in str(from_memory.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=r"^data must be an aelab.ImageData, a torch tensor or a numpy array"):
        train(small_config(), tmp_path / "run", data=[[1, 2]], progress=False)


@pytest.fixture
def memory_run(tmp_path):
    """A finished run trained on in-memory images, with the doctor's findings and a report."""
    pixels = images(count=120)
    result = train(small_config(), tmp_path / "run", data=pixels, progress=False)
    return tmp_path / "run", pixels, result


def one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_commands_on_an_in_memory_run_work_or_say_in_one_line_what_to_pass(memory_run, capsys):
    run_dir, pixels, _ = memory_run
    report_before = (run_dir / "report.html").read_bytes()
    findings_before = (run_dir / "findings.json").read_bytes()
    capsys.readouterr()

    assert main(["doctor", str(run_dir)]) == 0  # the findings the doctor saved while training
    printed = capsys.readouterr().out
    assert all(f.id in printed for f in read_findings(run_dir)) and read_findings(run_dir)

    assert main(["doctor", str(run_dir), "--recheck"]) == 2
    line = one_error_line(capsys)
    assert "trained on images passed from Python" in line and "not saved in the folder" in line
    assert f"aelab.doctor.recheck_run({str(run_dir)!r}, data=images)" in line

    assert main(["report", str(run_dir)]) == 2
    assert f"aelab.report.render_report({str(run_dir)!r}, data=images)" in one_error_line(capsys)

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    assert f"aelab.resume({str(run_dir)!r}, data=images)" in one_error_line(capsys)

    # nothing the refused commands touched changed; the same calls from Python with the images work
    assert (run_dir / "report.html").read_bytes() == report_before
    assert (run_dir / "findings.json").read_bytes() == findings_before
    assert render_report(run_dir, data=pixels) == run_dir / "report.html"
    assert "no model to evaluate" not in (run_dir / "report.html").read_text()
    assert {f.id for f in recheck_run(run_dir, data=pixels)} >= {f.id for f in read_findings(run_dir)}
    evaluation = evaluate_run(run_dir, data=pixels)
    assert evaluation.error is None
    assert evaluation.metrics["mse"] == pytest.approx(read_metrics(run_dir)[-1]["val_mse"], rel=1e-5)


def test_other_images_are_refused_in_one_line_by_every_call(memory_run):
    run_dir, pixels, _ = memory_run
    other = images(count=120, seed=1)
    report_before = (run_dir / "report.html").read_bytes()
    for call in (
        lambda: render_report(run_dir, data=other),
        lambda: recheck_run(run_dir, data=other),
        lambda: resume(run_dir, data=other),
        lambda: render_report(run_dir, data=pixels[:100]),  # the same images, fewer: another split
    ):
        with pytest.raises(DataError, match=r"^the images passed are not those .* was trained on: they are") as error:
            call()
        assert "\n" not in str(error.value) and "data.fingerprint records uint8, 96 train + 24 validation" in str(
            error.value
        )
    assert (run_dir / "report.html").read_bytes() == report_before
    assert evaluate_run(run_dir, data=other).error.startswith("the images passed are not those")
    assert "not saved in the folder" in evaluate_run(run_dir).error


def test_resume_of_an_in_memory_run_needs_the_same_images_and_then_ends_as_if_never_stopped(tmp_path, capsys):
    pixels, other = images(count=120), images(count=120, seed=1)
    config = small_config()
    whole = train(config, tmp_path / "whole", data=pixels, progress=False, doctor=False, report=False)
    with pytest.raises(Stop):
        train(config, tmp_path / "run", data=pixels, progress=False, callbacks=[StopAfterFirstEpoch()], report=False)
    run_dir = tmp_path / "run"
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()

    with pytest.raises(DataError, match="not saved in the folder; pass the same images as data="):
        resume(run_dir, progress=False)
    with pytest.raises(DataError, match="the images passed are not those"):
        resume(run_dir, data=other, progress=False)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    one_error_line(capsys)
    assert read_status(run_dir)["state"] == "running"  # refused without touching the folder
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before

    resumed = resume(run_dir, data=pixels, progress=False)
    assert resumed.extras["resumed_from_epoch"] == 1 and read_status(run_dir)["state"] == "finished"
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resume(run_dir, data=pixels).extras["resumed_from_epoch"] == 2  # finished: returned as it is
    with pytest.raises(DataError, match="the images passed are not those"):
        resume(run_dir, data=other)


def test_train_writes_findings_and_report_like_the_command_line_unless_told_not_to(tmp_path):
    config = small_config(data={"train_limit": 64, "val_limit": 32})
    result = train(config, tmp_path / "both", progress=False)
    assert result.extras["report"] == tmp_path / "both" / "report.html"
    assert "aelab report: both" in (tmp_path / "both" / "report.html").read_text()
    saved = read_findings(tmp_path / "both")
    assert saved and [f.id for f in saved] == [f.id for f in result.extras["findings"]]
    assert "doctor_dead_share" in result.history[-1]  # the doctor's monitor numbers, as from the CLI

    train(config, tmp_path / "neither", progress=False, doctor=False, report=False)
    assert not (tmp_path / "neither" / "findings.json").exists()
    assert not (tmp_path / "neither" / "report.html").exists()
    findings_only = train(config, tmp_path / "findings", progress=False, report=False)
    assert (tmp_path / "findings" / "findings.json").exists() and "report" not in findings_only.extras
    assert not (tmp_path / "findings" / "report.html").exists()


def test_the_in_memory_dataset_is_listed_and_cannot_be_loaded_by_name(tmp_path, capsys):
    assert main(["datasets"]) == 0
    assert IN_MEMORY in capsys.readouterr().out
    assert main(["train", "--dataset", IN_MEMORY, "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert "images passed from Python" in line and "data.path" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="pass the images as data="):
        train(RunConfig.from_dict({"data": {"name": IN_MEMORY}}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_cb_runs_model_pixels_are_the_pixels_evaluation_and_the_report_use(tmp_path):
    config = RunConfig.from_dict(
        {
            "data": {"train_limit": 256, "val_limit": 64},
            "model": {"hidden_dims": [16], "latent_dim": 4, "activation": "relu"},
            "train": {"loss": "cb", "epochs": 2, "batch_size": 64, "learning_rate": 0.01, "threads": 1},
        }
    )
    result = train(config, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    targets = RunState(config, load_dataset(config.data)).validation.targets  # (64, 1, 28, 28)
    with torch.no_grad():
        logits = run.model(targets)
        pixels = run.model.pixels(logits)
        fresh = result.model.pixels(result.model(targets))
    output, is_logits = run.model.loss_input(logits)
    shown = aelab.LIKELIHOODS["cb"].mean(output, logits=is_logits)  # what evaluation and the report show
    assert torch.allclose(pixels, cb_mean(logits)) and torch.allclose(pixels, shown)
    assert torch.allclose(fresh, pixels)
    assert not torch.allclose(pixels, torch.sigmoid(logits), atol=1e-3)  # the sigmoid is not the picture
    mse = float(((pixels - targets) ** 2).mean())
    assert mse == pytest.approx(read_metrics(tmp_path / "run")[-1]["val_mse"], rel=1e-5)
    assert mse == pytest.approx(evaluate_run(tmp_path / "run").metrics["mse"], rel=1e-5)


def test_models_built_without_a_loss_keep_showing_their_output_activation():
    from aelab import ModelConfig, build_model

    logits = torch.randn(2, 1, 4, 4)
    plain = build_model(ModelConfig(hidden_dims=(4,), latent_dim=2), (1, 4, 4))
    cb = build_model(ModelConfig(hidden_dims=(4,), latent_dim=2), (1, 4, 4), loss="cb")
    assert torch.equal(plain.pixels(logits), torch.sigmoid(logits)) and plain.loss is None
    assert torch.allclose(cb.pixels(logits), cb_mean(logits))
    with pytest.raises(aelab.ConfigError, match="unknown loss 'nope'"):
        build_model(ModelConfig(), (1, 28, 28), loss="nope")
