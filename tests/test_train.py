import json

import pytest
import torch
import yaml
from safetensors import safe_open

from aelab import RunConfig, load_run, train
from aelab.data import load_dataset, prepare_batch
from aelab.errors import RunFolderError
from aelab.evaluate import CHEAP_METRICS
from aelab.train import OPTIMIZERS, RunState
from aelab.train.loop import run_epoch

from .conftest import TINY

METRIC_KEYS = {
    "epoch",
    "seconds",
    "train_loss",
    "val_loss",
    "val_mse",
    "val_mae",
    "val_bce",
    "val_bce_excess",
    "val_psnr",
}


def test_run_folder_holds_every_file_and_reloads_to_the_same_outputs(tmp_path, tiny_config):
    result = train(tiny_config, tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors", "status.json"
    }  # fmt: skip
    assert RunConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())) == tiny_config
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    # every epoch records the cheap numbers; the last one every metric (RunState.record_epoch)
    assert all(set(row) >= set(CHEAP_METRICS) for row in rows) and set(rows[-1]) >= METRIC_KEYS
    assert rows == result.history
    with safe_open(run_dir / "model.safetensors", "pt") as file:
        metadata = file.metadata()
    assert RunConfig.from_dict(json.loads(metadata["config"])) == tiny_config
    assert json.loads(metadata["image_shape"]) == [1, 28, 28]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"

    run = load_run(run_dir)
    assert run.finished and run.config == tiny_config and run.history == rows
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(run.model(images), result.model(images))


def test_metrics_are_computed_on_the_validation_split(tiny_config):
    result = train(tiny_config, progress=False)
    data = load_dataset(tiny_config.data)
    targets = prepare_batch(data.val, data.scale)
    with torch.no_grad():
        pixels = torch.sigmoid(result.model(targets))
    expected_mse = float((pixels - targets).square().mean())
    assert result.history[-1]["val_mse"] == pytest.approx(expected_mse, rel=1e-5)
    # BCE excess is BCE minus the targets' entropy floor, so it is smaller than BCE but positive
    last = result.history[-1]
    assert 0 < last["val_bce_excess"] < last["val_bce"]


def test_same_seed_same_numbers_and_another_seed_differs(tiny_config):
    first = train(tiny_config, progress=False).history
    second = train(tiny_config, progress=False).history
    other = train(tiny_config.replace(train={"seed": 1}), progress=False).history
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(first) == strip(second)
    assert strip(first) != strip(other)


def test_existing_run_folder_is_never_overwritten_silently(tmp_path, tiny_config):
    train(tiny_config, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already exists"):
        train(tiny_config.replace(train={"seed": 3}), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_early_stopping_keeps_the_best_epoch(tiny_config):
    # SGD with a vanishing learning rate: nothing improves after the first epoch.
    config = tiny_config.replace(train={"optimizer": "sgd", "learning_rate": 1e-30, "epochs": 10, "patience": 2})
    result = train(config, progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(optimizer, tiny_config):
    learning_rate = {"adadelta": 1.0, "sgd": 0.5}.get(optimizer, 0.01)
    config = tiny_config.replace(
        train={"optimizer": optimizer, "learning_rate": learning_rate, "momentum": 0.0, "epochs": 3}
    )
    history = train(config, progress=False).history
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_bernoulli_binarize_gives_binary_targets_drawn_afresh(tiny_config):
    config = tiny_config.replace(data={"binarize": "bernoulli"})
    trainer = RunState(config, load_dataset(config.data))
    assert set(trainer.validation.targets.unique().tolist()) <= {0.0, 1.0}
    indices = torch.arange(32)
    first, second = trainer.batch(indices), trainer.batch(indices)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)
    history = train(config, progress=False).history
    assert history[-1]["val_bce_excess"] == pytest.approx(history[-1]["val_bce"], rel=1e-6)  # binary: floor 0


def test_raw_pixels_train_on_0_to_255_values(tiny_config):
    config = tiny_config.replace(data={"scale": "none"})
    trainer = RunState(config, load_dataset(config.data))
    assert trainer.validation.targets.max().item() == 255.0
    assert trainer.batch(torch.arange(8)).max().item() > 1.0


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "conv", "hidden_dims": [4, 8], "latent_dim": 4},
        {"hidden_dims": [8], "latent_dim": 4, "tied": True},
        {"hidden_dims": [], "latent_dim": 8, "activation": "relu", "output_activation": "softmax"},
    ],
)
@pytest.mark.parametrize("loss", ["bce", "mse", "mae", "cb"])
def test_models_and_losses_train_to_finite_metrics(model, loss):
    config = RunConfig.from_dict({**TINY, "model": model, "train": {**TINY["train"], "loss": loss, "epochs": 1}})
    row = train(config, progress=False).history[-1]
    assert all(torch.isfinite(torch.tensor(value)) for key, value in row.items() if key != "val_loss_excess")
    assert 0 <= row["val_mse"] <= 1


def test_cb_model_pixels_are_the_cb_mean(tiny_config):
    from aelab.losses import cb_mean

    config = tiny_config.replace(train={"loss": "cb"})
    result = train(config, progress=False)
    logits = result.model(torch.rand(3, 1, 28, 28))
    assert torch.allclose(result.model.pixels(logits), cb_mean(logits))


def test_chunked_evaluation_equals_the_metrics_of_the_whole_set(tiny_config):
    from aelab.evaluate import EVAL_CHUNK, evaluate
    from aelab.evaluate.metrics import reconstruction_metrics

    config = tiny_config.replace(data={"val_limit": 2 * EVAL_CHUNK + 100})  # three chunks, the last short
    trainer = RunState(config, load_dataset(config.data))
    run_epoch(trainer)
    row = evaluate(trainer.model, trainer.likelihood, trainer.validation)  # every metric, chunk by chunk
    targets = trainer.validation.targets
    with torch.no_grad():
        pixels = trainer.model.pixels(trainer.model(targets))
    whole = reconstruction_metrics(pixels, targets)
    for name in ("mse", "ssim", "psnr", "intensity_bias", "blob_score", "sharpness"):
        assert row[f"val_{name}"] == pytest.approx(whole[name], rel=1e-5, abs=1e-7), name
