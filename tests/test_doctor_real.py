"""The doctor's promises on the real bundled MNIST (mnist-10k: 8,000 train, 2,000 validation).

These train real models (about 5-15 s each on a quiet machine): the blob plateau must be
flagged, healthy runs must raise no warning or error, and a user's PyTorch port with softmax
output, BCE and 0..255 inputs must be diagnosed with all three problems.
"""

import pytest
import torch
from torch import nn

import aelab.doctor
from aelab import DataConfig, RunConfig, load_dataset, train
from aelab.cli import main
from aelab.doctor import Doctor, diagnose_run
from aelab.findings import read_findings


def sigmoid_run(loss: str, learning_rate: float) -> RunConfig:
    """The sigmoid 784-100-50-100-784 of the blob question: adam, batch 256, glorot, 20 epochs."""
    return RunConfig.from_dict(
        {
            "model": {"hidden_dims": [100], "latent_dim": 50, "activation": "sigmoid"},
            "train": {"loss": loss, "learning_rate": learning_rate, "epochs": 20, "batch_size": 256, "threads": 1},
        }
    )


def problems(findings):
    return [f.line() for f in findings if f.severity in ("warning", "error")]


def test_sigmoid_model_left_on_the_plateau_is_a_blob(tmp_path):
    doctor = Doctor()
    result = train(sigmoid_run("bce", 1e-3), tmp_path / "run", progress=False, callbacks=[doctor])
    blob = next(f for f in doctor.findings if f.id == "blob")
    evidence = blob.evidence
    assert blob.severity == "error"
    assert evidence["variation_ratio"] < 0.2 and evidence["gap_closed"] < 0.1
    # the loss and the MSE sit at what the mean image scores on the same 2,000 images
    assert evidence["bce"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-4)
    assert evidence["mse"] == pytest.approx(evidence["mean_image_mse"], rel=0.1)
    assert evidence["epochs_near_mean_image"] >= 15
    assert f"{evidence['bce']:.4g}" in blob.explanation and f"{evidence['mean_image_bce']:.4g}" in blob.explanation
    assert "try 1e-2" in blob.fix
    assert read_findings(tmp_path / "run") == doctor.findings
    assert "blob" in {f.id for f in diagnose_run(tmp_path / "run")}  # the folder alone says the same


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(sigmoid_run("bce", 1e-2), id="sigmoid-bce-lr1e-2"),
        pytest.param(sigmoid_run("mse", 1e-2), id="sigmoid-mse-lr1e-2"),
        pytest.param(
            RunConfig.from_dict(
                {
                    "model": {"hidden_dims": [], "latent_dim": 32, "activation": "relu"},
                    "train": {"loss": "bce", "learning_rate": 1e-3, "epochs": 50, "batch_size": 256, "threads": 1},
                }
            ),
            id="keras-tutorial-784-32-784",
        ),
    ],
)
def test_healthy_runs_raise_no_warning_or_error(config):
    doctor = Doctor()
    result = train(config, progress=False, callbacks=[doctor])
    assert problems(doctor.findings) == []
    assert result.history[-1]["doctor_variation_ratio"] > 0.4  # far from the blob threshold, not just under it


class UserPort(nn.Module):
    """The user's PyTorch port of their Keras autoencoder, as they wrote it."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 28), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(28, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 784), nn.Softmax(dim=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def keras_binary_crossentropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # nn.BCELoss refuses targets above 1, so the user ported Keras's clipped formula.
    pred = pred.clamp(1e-7, 1 - 1e-7)
    return -(target * torch.log(pred) + (1 - target) * torch.log(1 - pred)).mean()


def assert_the_three_problems(findings):
    found = {f.id: f for f in findings}
    assert {"input-range", "bce-target-range", "softmax-output"} <= set(found), [f.line() for f in findings]
    for name in ("input-range", "bce-target-range", "softmax-output"):
        assert found[name].severity == "error"
    inputs = found["input-range"].evidence
    assert inputs["input_min"] == 0 and inputs["input_max"] == 255 and inputs["output_activation"] == "softmax"
    assert 0.1 < inputs["share_unreachable"] < 0.5  # the pixels above 1
    assert "from 0 to 255" in found["bce-target-range"].explanation
    softmax = found["softmax-output"].evidence
    assert softmax["pixels_per_image"] == 784 and softmax["output_sum_mean"] == pytest.approx(1, abs=1e-3)
    assert softmax["target_sum_mean"] > 1000  # 0..255 digits sum to tens of thousands
    assert "code-too-wide" not in found  # the traced code is 28 wide


def test_users_pytorch_port_is_diagnosed_with_all_three_problems():
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(scale="none"))  # MNIST left in 0..255
    images = data.train.float().view(-1, 784)
    torch.manual_seed(0)
    model = UserPort()
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(5):
        order = torch.randperm(images.shape[0])
        for start in range(0, images.shape[0], 100):
            batch = images[order[start : start + 100]]
            loss = keras_binary_crossentropy(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    findings = aelab.doctor.check(model, data, loss="bce")
    assert_the_three_problems(findings)


def test_the_same_set_up_through_aelab_train(tmp_path, capsys):
    out = tmp_path / "port"
    flags = ["--hidden", "128,64", "--latent", "28", "--activation", "relu", "--output-activation", "softmax"]
    flags += ["--raw-pixels", "--loss", "bce", "--epochs", "5", "--batch-size", "100", "--threads", "1", "--quiet"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("input-range", "bce-target-range", "softmax-output"):
        assert f"ERROR   {name}:" in printed
    assert_the_three_problems(read_findings(out))
