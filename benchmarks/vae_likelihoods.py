"""Every likelihood's VAE on one honest scale (issue 12's table), and the continuous Bernoulli
paper's point about its mean.

Each likelihood in `aelab.LIKELIHOODS` trains the same dense VAE (784-400-20-400-784, relu,
PyTorch's default init, Adam 1e-3, batch 128, the same epochs and seed) on mnist-10k; a
Bernoulli likelihood (support "binary") trains and is scored on dynamically binarised pixels
(`--binarize bernoulli`), every other on the grey pixels. For each it prints the validation
numbers aelab records: bits per dimension of the dequantised 8-bit pixels (for densities) or
the IWAE NLL on binarised data (for a Bernoulli), the ELBO's terms, active units, and the MSE
of the likelihood's mean decoded from the posterior mean.

For a likelihood whose mean is not its parameter (cb: its mean differs from lambda, the
sigmoid of the logits), it also prints the MSE of the reconstructions read through lambda:
Loaiza-Ganem & Cunningham (NeurIPS 2019) show that the mean is the better reconstruction.

It asks the registry, not a list of names, so likelihoods added later (learned-sigma Gaussians,
Laplace, Beta) join the table when they are registered.

    python benchmarks/vae_likelihoods.py                 # 10 epochs each
    python benchmarks/vae_likelihoods.py --epochs 2      # a quicker look
    python benchmarks/vae_likelihoods.py --only cb,mse   # some of them
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import aelab
from aelab import LIKELIHOODS, RunConfig, load_dataset
from aelab.evaluate import Validation

BASE = {
    "model": {
        "hidden_dims": [400],
        "latent_dim": 20,
        "activation": "relu",
        "init": "torch_default",
        "variational": True,
    },
    "train": {"learning_rate": 1e-3, "batch_size": 128, "threads": 2},
}


def config_for(name: str, epochs: int) -> RunConfig:
    binary = LIKELIHOODS[name].support == "binary"
    return RunConfig.from_dict(BASE).replace(
        data={"binarize": "bernoulli" if binary else "none"}, train={"loss": name, "epochs": epochs}
    )


@torch.no_grad()
def parameter_mse(model: torch.nn.Module, config: RunConfig) -> float:
    """The validation MSE of the reconstructions read as the decoder's parameter (the sigmoid
    of the logits: lambda for cb) instead of the likelihood's mean."""
    data = load_dataset(config.data)
    validation = Validation.build(data, config.data, config.train.seed + 2)
    total = 0.0
    for _, targets in validation.chunks():
        logits = model(targets)
        total += float((torch.sigmoid(logits) - targets).square().flatten(1).mean(1).sum())
    return total / validation.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", help="comma-separated likelihood names (default: every registered one)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(LIKELIHOODS)
    print(f"dense VAE 784-400-20, relu, Adam 1e-3, batch 128, {args.epochs} epochs, mnist-10k, 2 threads")
    header = (
        f"{'likelihood':12s} {'data':8s} {'bits/dim':>9s} {'IWAE NLL':>9s} {'-ELBO':>9s} {'recon':>9s} "
        f"{'KL':>7s} {'active':>7s} {'MSE mean':>9s} {'MSE param':>9s} {'s':>6s}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            config = config_for(name, args.epochs)
            started = time.perf_counter()
            result = aelab.train(config, Path(folder) / name, progress=False, doctor=False, report=False)
            seconds = time.perf_counter() - started
            row = result.history[-1]
            likelihood = LIKELIHOODS[name]
            shown_parameter = likelihood.mean_words is not None  # the mean is not the parameter
            bpd = row["val_bpd"]
            print(
                f"{name:12s} {'binary' if config.data.binarize != 'none' else 'grey':8s} "
                f"{bpd if math.isfinite(bpd) else math.nan:9.4f} {row['val_nll']:9.2f} {-row['val_elbo']:9.2f} "
                f"{row['val_recon']:9.2f} {row['val_kl']:7.2f} {row['val_active_units']:4d}/20 "
                f"{row['val_mse']:9.4f} "
                + (f"{parameter_mse(result.model, config):9.4f}" if shown_parameter else f"{'':9s}")
                + f" {seconds:6.0f}"
            )
    print("IWAE NLL: K = 100 samples per image, nats per image; bits/dim: dequantised 8-bit pixels (nan: no density)")
    print("MSE mean: the likelihood's mean (what aelab shows); MSE param: the sigmoid of the logits (cb: lambda)")


if __name__ == "__main__":
    main()
