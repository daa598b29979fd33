"""Every likelihood on one plain autoencoder: the 784-100-50 sigmoid autoencoder (aelab's
defaults) on mnist-10k, trained the same way with each `--loss`, and for each the validation
MSE of the pixels it shows (the likelihood's mean) and its NLL in nats per image (the true
negative log-likelihood: the reported mean over pixels plus the density constant, times 784).

    PYTHONPATH=src python benchmarks/likelihood_table.py [--epochs 20] [--threads 1] [--loss NAME ...]

Prints a markdown table. NLLs of different supports do not compare: bce is a pmf on {0, 1} (on
grey pixels a cross-entropy, no likelihood of the data), cb and beta densities on [0, 1], the
others densities on the real line; and a density on data with repeated values (MNIST's black
background) can go far below zero by shrinking its scale there.
"""

from __future__ import annotations

import argparse
import math
import time

from aelab import LIKELIHOODS, RunConfig, load_dataset, train
from aelab.losses import bounded_log_scale
from aelab.train.steps import choose_engine

SUPPORT_WORDS = {"binary": "pmf on {0,1}", "unit": "density on [0,1]", "real": "density on R"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss", nargs="*", default=list(LIKELIHOODS))
    args = parser.parse_args()
    base = RunConfig.from_dict({"train": {"epochs": args.epochs, "threads": args.threads, "device": "cpu"}})
    data = load_dataset(base.data)
    pixels = math.prod(data.image_shape)
    sizes = "-".join(str(size) for size in (pixels, *base.model.hidden_dims, base.model.latent_dim))
    print(
        f"{sizes} {base.model.activation} autoencoder, {base.model.output_activation} output, {base.data.name}, "
        f"{args.epochs} epochs, Adam lr {base.train.learning_rate}, batch {base.train.batch_size}, seed 0, "
        f"{args.threads} thread(s)\n"
    )
    columns = ["loss", "distribution", "val MSE of the mean", "val NLL, nats per image", "blob score"]
    columns += ["learned shared sigma / scale", "engine", "time"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in args.loss:
        record = LIKELIHOODS[name]
        config = base.replace(train={"loss": name})
        started = time.perf_counter()
        result = train(config, data=data, progress=False, doctor=False, report=False)
        seconds = time.perf_counter() - started
        last = result.history[-1]
        nats = (last["val_loss"] + record.density_constant) * pixels
        shared = result.model._parameters.get("likelihood_parameters")
        scale = "-"
        if shared is not None:  # the learned shared scale against its closed form on the validation set
            learned = float(bounded_log_scale(shared.detach()).exp()[0])
            closed = math.sqrt(last["val_mse"]) if name == "gaussian" else last["val_mae"]
            scale = f"{learned:.4f} (closed form {closed:.4f})"
        engine = choose_engine(config, result.model)
        print(
            f"| {name} | {SUPPORT_WORDS[record.support]} | {last['val_mse']:.4f} | {nats:.1f} | "
            f"{last['val_blob_score']:.2f} | {scale} | {engine} | {seconds:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
