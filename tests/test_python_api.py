"""The Python API on data held in memory (issue 10, item 6) and the model's pixels (item 8)."""

import pytest
import torch

import aelab
from aelab import RunConfig, load_run, train
from aelab.data import load_dataset
from aelab.evaluate import evaluate_run
from aelab.losses import cb_mean
from aelab.runs import read_metrics
from aelab.train import Trainer, model_pixels


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
    targets = Trainer(config, load_dataset(config.data)).val_targets  # (64, 1, 28, 28)
    with torch.no_grad():
        logits = run.model(targets)
        pixels = run.model.pixels(logits)
        fresh = result.model.pixels(result.model(targets))
    assert torch.allclose(pixels, cb_mean(logits)) and torch.allclose(pixels, model_pixels(run.model, "cb", logits))
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
