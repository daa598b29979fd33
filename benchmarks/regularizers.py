"""Denoising, sparse and over-complete autoencoders on mnist-10k (issue 13's "what it must show"),
each against the same model trained without the option at equal budget (same epochs, batch
size, optimizer, seed), trained side by side in one process:

1. denoising: a dense 784-100-50 sigmoid autoencoder, plain and with `--noise gaussian:0.5`
   (clipped), both scored on the same corrupted validation images (noise fixed by seed):
   the MSE of the clean image's reconstruction from its noisy copy;
2. sparse: the Keras blog's 784-32 ReLU code (sigmoid output, BCE, Adam), plain and with
   `--sparsity l1` (1e-4): the code's mean activation on the validation images;
3. over-complete: a 784-1000 sigmoid code (wider than the input), plain and with
   `--noise gaussian:0.5`, measured by how close each is to the identity map: the MSE of its
   reconstructions of images that are not digits (uniform noise images, the validation digits
   shifted by 3 pixels), 0 for the identity, and its perturbation gain (the share of a small
   random change of the input it passes on, E ||f(x + d) - f(x)||^2 / ||d||^2), 1 for the identity.
4. cost: the time of a training step with each option, fast step and autograd, side by side.

    PYTHONPATH=src python benchmarks/regularizers.py [--epochs 20] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from aelab import RunConfig, load_dataset, train
from aelab.evaluate.regularized import code_metrics, denoising_metrics
from aelab.regularizers import parse_noise
from aelab.train import RunState
from aelab.train.steps import make_step

NOISE = "gaussian:0.5"
SEED = 4  # the corrupted validation set every run is scored on (a run's own uses train.seed + 4)


def config(model: dict, train_options: dict, epochs: int) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": model,
            "train": {"epochs": epochs, "threads": 1, "device": "cpu", **train_options},
        }
    )


def fit(cfg: RunConfig, data) -> tuple[torch.nn.Module, float]:
    started = time.perf_counter()
    result = train(cfg, data=data, progress=False)
    return result.model, time.perf_counter() - started


def mse(model: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.pixels(model(images)) - images).square().mean())


def denoising(data, epochs: int) -> None:
    model = {"hidden_dims": [100], "latent_dim": 50}
    noise = parse_noise(NOISE)
    print(f"\n1. denoising, dense 784-100-50 sigmoid, BCE, Adam 1e-2, {epochs} epochs")
    print(f"   scored on the validation images corrupted by {NOISE} (clipped, seed {SEED})")
    print("   run              noisy-input MSE   clean-input MSE   seconds")
    scores = {}
    for name, options in (("plain", {}), (f"noise {NOISE}", {"noise": NOISE})):
        cfg = config(model, options, epochs)
        trained, seconds = fit(cfg, data)
        state = RunState(cfg, data)
        noisy = denoising_metrics(trained, "bce", state.validation, noise, SEED)["val_noisy_mse"]
        clean = mse(trained, state.validation.targets)
        scores[name] = noisy
        print(f"   {name:<16} {noisy:>15.5f}   {clean:>15.5f}   {seconds:7.1f}")
    plain, noisy = scores.values()
    print(f"   noisy-input MSE, denoiser / plain: {noisy / plain:.3f}")


def sparse(data, epochs: int) -> None:
    model = {"hidden_dims": [], "latent_dim": 32, "activation": "relu"}
    print(f"\n2. sparse code, 784-32 ReLU code (the Keras blog's), BCE, Adam 1e-3, {epochs} epochs, batch 256")
    print("   run              code mean   near-zero share   val MSE   seconds")
    means = {}
    for name, options in (("plain", {}), ("l1 (1e-4)", {"sparsity": "l1"})):
        cfg = config(model, {"learning_rate": 1e-3, **options}, epochs)
        trained, seconds = fit(cfg, data)
        state = RunState(cfg, data)
        codes = code_metrics(trained, state.validation)
        means[name] = codes["val_code_mean"]
        print(
            f"   {name:<16} {codes['val_code_mean']:>9.3f}   {codes['val_code_near_zero']:>15.3f}   "
            f"{mse(trained, state.validation.targets):7.5f}   {seconds:7.1f}"
        )
    plain, l1 = means.values()
    print(f"   code mean, l1 / plain: {l1 / plain:.3f}  (Keras blog, 100 epochs on 60k images: 3.33 / 7.30 = 0.456)")


def perturbation_gain(model: torch.nn.Module, images: torch.Tensor, scale: float = 0.05) -> float:
    """E ||f(x + d) - f(x)||^2 / ||d||^2 for small Gaussian d (std `scale`, a fixed seed): how much
    of a small change of its input the model passes on; 1 for the identity map."""
    generator = torch.Generator().manual_seed(1)
    delta = torch.randn(images.shape, generator=generator) * scale
    with torch.no_grad():
        change = model.pixels(model(images + delta)) - model.pixels(model(images))
    return float(change.square().sum() / delta.square().sum())


def overcomplete(data, epochs: int) -> None:
    model = {"hidden_dims": [], "latent_dim": 1000}
    print(f"\n3. over-complete code, 784-1000 sigmoid (code wider than the input), BCE, Adam 1e-3, {epochs} epochs")
    generator = torch.Generator().manual_seed(0)
    shape = data.image_shape
    noise_images = torch.rand(2000, *shape, generator=generator)
    print("   run                digits MSE   shifted-digits MSE   noise-images MSE   perturbation gain")
    for name, options in (("plain", {}), (f"noise {NOISE}", {"noise": NOISE})):
        cfg = config(model, {"learning_rate": 1e-3, **options}, epochs)
        trained, _ = fit(cfg, data)
        digits = RunState(cfg, data).validation.targets
        shifted = torch.roll(digits, shifts=(3, 3), dims=(2, 3))
        on_digits, on_shifted, on_noise = mse(trained, digits), mse(trained, shifted), mse(trained, noise_images)
        gain = perturbation_gain(trained, digits)
        print(f"   {name:<18} {on_digits:>10.5f}   {on_shifted:>18.5f}   {on_noise:>16.5f}   {gain:>17.3f}")
    print("   the identity map: 0 MSE on all three and a gain of 1; always outputting 0.5 scores 0.083 on noise images")


def cost(data, repeats: int) -> None:
    steps = 31  # the full batches of one epoch of mnist-10k at batch 256
    print("\n4. cost of a training step, 784-100-50 sigmoid, BCE, Adam, batch 256, 1 thread:")
    print(f"   {steps} steps per timing, best of {repeats}, the variants alternating")
    model = {"hidden_dims": [100], "latent_dim": 50}
    variants = {
        "plain": {},
        f"noise {NOISE}": {"noise": NOISE},
        "sparsity l1": {"sparsity": "l1"},
        "sparsity kl:0.05": {"sparsity": "kl:0.05"},
        "contractive 0.1": {"contractive": 0.1},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        states = {}
        for name, options in variants.items():
            for engine in ("fast", "autograd"):
                if engine == "fast" and "contractive" in options:
                    continue  # refused by the fast step
                state = RunState(config(model, {**options, "engine": engine}, 1), data)
                batches = [state.batch(torch.arange(i * 256, (i + 1) * 256))[None] for i in range(steps)]
                states[(name, engine)] = (make_step([state]), batches, [])
        for _ in range(repeats):
            for step, batches, times in states.values():
                started = time.perf_counter()
                for images in batches:
                    step(images)
                times.append((time.perf_counter() - started) / steps)
    finally:
        torch.set_num_threads(threads)
    plain = min(states[("plain", "fast")][2])
    print("   option              engine     ms/step   / plain fast")
    for (name, engine), (_, _, times) in states.items():
        print(f"   {name:<18}  {engine:<9} {1000 * min(times):8.2f}   {min(times) / plain:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each training run (default 20)")
    parser.add_argument("--sparse-epochs", type=int, default=50, help="epochs of the sparse runs (default 50)")
    parser.add_argument("--cost-repeats", type=int, default=5, help="timings per step variant (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 epochs each: a smoke run")
    parser.add_argument("--only", choices=["denoising", "sparse", "overcomplete", "cost"], action="append")
    args = parser.parse_args()
    if args.quick:
        args.epochs = args.sparse_epochs = 2
        args.cost_repeats = 1
    data = load_dataset(RunConfig().data)
    print(f"mnist-10k: {data.train.shape[0]} train / {data.val.shape[0]} validation images, torch {torch.__version__}")
    only = args.only or ["denoising", "sparse", "overcomplete", "cost"]
    if "denoising" in only:
        denoising(data, args.epochs)
    if "sparse" in only:
        sparse(data, args.sparse_epochs)
    if "overcomplete" in only:
        overcomplete(data, args.epochs)
    if "cost" in only:
        cost(data, args.cost_repeats)


if __name__ == "__main__":
    main()
