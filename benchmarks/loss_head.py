"""The BCE loss head of the fast step against what might replace it, side by side in one run.

The head (`aelab.likelihoods`' BCE `fused_head`) turns a batch of logits (1, 256, 784) into the
loss value (softplus(z) - x z, summed) and overwrites them with the gradient (sigmoid(z) - x).
Its transcendental passes are what is left of a training step beyond the GEMMs (see
docs/benchmarks.md, issue 11). Variants, interleaved, medians of per-call times:

    aelab       the head as the fast step runs it
    compiled    the same arithmetic through `torch.compile` (one fused loop); the first call's
                compile time is printed apart

    python benchmarks/loss_head.py              # about 30 s, most of it compiling
    python benchmarks/loss_head.py --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from aelab.likelihoods import LIKELIHOODS


def reference_head(z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's arithmetic written plainly, for `torch.compile` to fuse."""
    scale = 1.0 / (z.shape[1] * z.shape[2])
    value = (torch.nn.functional.softplus(z) - x * z).sum((1, 2)) * scale
    return value, (torch.sigmoid(z) - x) * scale


def per_call(head: Callable[..., object], logits: torch.Tensor, targets: torch.Tensor, calls: int) -> float:
    """Median microseconds of one call on a fresh copy of the logits (the head overwrites them)."""
    times = []
    for _ in range(calls):
        z = logits.clone()
        started = time.perf_counter()
        head(z, targets)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 256, 784, generator=generator) * 3 - 4  # mostly dark pixels, as on MNIST
    targets = torch.rand(1, 256, 784, generator=generator)
    heads: dict[str, Callable[..., object]] = {"aelab": LIKELIHOODS["bce"].fused_head}  # type: ignore[dict-item]
    if not args.no_compile:
        started = time.perf_counter()
        compiled = torch.compile(reference_head, dynamic=False)
        compiled(logits.clone(), targets)
        print(f"torch.compile: first call {time.perf_counter() - started:.1f} s")
        heads["compiled"] = compiled
        value, _ = compiled(logits.clone(), targets)
        z = logits.clone()
        assert torch.allclose(value, heads["aelab"](z, targets), rtol=1e-5)  # type: ignore[operator]
    times: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(args.repeats):
        for name, head in heads.items():
            times[name].append(per_call(head, logits, targets, 200))
    print(f"torch {torch.__version__}, {args.threads} threads, logits (1, 256, 784), {args.repeats} repeats")
    base = times["aelab"]
    for name, values in times.items():
        ratio = statistics.median(b / v for b, v in zip(base, values, strict=True))
        print(f"  {name:<10} {statistics.median(values):8.1f} us   aelab / this {ratio:.3f}")


if __name__ == "__main__":
    main()
