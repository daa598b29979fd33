"""The doctor's entry points outside training: on any PyTorch autoencoder, on a config before
training, and on a finished run folder."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from aelab.config import RunConfig, TrainConfig
from aelab.data import ImageData, data_for_run, prepare_batch
from aelab.data.datasets import ImagesLike
from aelab.errors import ConfigError
from aelab.findings import Finding, read_findings
from aelab.losses import get_loss
from aelab.models import Autoencoder, build_model
from aelab.runs import load_run

from .monitor import (
    baseline,
    config_setup,
    epochs_near_mean_image,
    measure,
    merge_and_save,
    run_context,
    state_findings,
)
from .probe import PROBE_IMAGES, Subject, trace_layers, weight_layers, weight_norms
from .setup import Setup, setup_findings


def probe_targets(data: ImageData, config: RunConfig | None = None, images: int = PROBE_IMAGES) -> torch.Tensor:
    """The fixed probe batch: the first `images` validation images as the model sees them
    (scaled, and binarised as the config says, with the trainer's validation seed)."""
    stored = data.val[:images]
    if config is None:
        return prepare_batch(stored, data.scale)
    generator = torch.Generator().manual_seed(config.train.seed + 2)
    return prepare_batch(stored, data.scale, config.data.binarize, config.data.threshold, generator)


def check_setup(config: RunConfig, data: ImageData) -> list[Finding]:
    """The pre-training findings for `config` on `data`, from a freshly initialised model."""
    model = build_model(config.model, data.image_shape, seed=config.train.seed)
    subject = Subject(model, config.train.loss)
    return setup_findings(config_setup(config, subject, probe_targets(data, config)))


def _fit_input(model: nn.Module, images: torch.Tensor) -> tuple[int, ...] | None:
    """The per-sample input shape the model takes: the images' own, or flattened."""
    for shape in (None, (images[0].numel(),)):
        inputs = images[:2] if shape is None else images[:2].reshape(-1, *shape)
        try:
            with torch.no_grad():
                output = model(inputs)
        except (RuntimeError, ValueError):
            continue
        if isinstance(output, torch.Tensor) and output.numel() == inputs.numel():
            return shape
    raise ConfigError(
        f"the model does not map a batch of images {tuple(images.shape[1:])} (or flattened, "
        f"({images[0].numel()},)) to a reconstruction of the same size; aelab.doctor.check needs a model whose "
        "forward returns the reconstruction"
    )


def _default_init_norms(model: nn.Module) -> dict[str, float]:
    """Weight norms of a copy of the model re-initialised with PyTorch's default initialisation."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for module in weight_layers(fresh):
            module.reset_parameters()
    return weight_norms(fresh)


def check(
    model: nn.Module,
    data: ImageData | torch.Tensor,
    loss: str = "bce",
    *,
    from_logits: bool = False,
    images: int = PROBE_IMAGES,
) -> list[Finding]:
    """Diagnose any PyTorch autoencoder: the pre-training checks and the state checks.

    model: an `nn.Module` whose forward maps a batch to its reconstruction, taking images
        (B, C, H, W) or flattened (B, C*H*W) (found by trying).
    data: an `ImageData` (its first `images` validation images, scaled by `data.scale` exactly
        as aelab would feed them), or a tensor (N, ...) of inputs exactly as you feed the model.
    loss: the reconstruction loss you train with, a key of `aelab.LOSSES` ("bce", "mse", ...).
    from_logits: True when the model returns logits (trained with BCEWithLogitsLoss), False when
        it returns pixels (after its own sigmoid, softmax, ...).
    Weight norms are compared with PyTorch's default initialisation of the same layers. Returns
    the findings; `aelab.findings.save_findings(folder, findings)` writes them."""
    get_loss(loss)
    if isinstance(data, ImageData):
        targets = probe_targets(data, images=images)
    else:
        targets = torch.as_tensor(data)[:images].float()
    parameter = next(model.parameters(), None)
    if parameter is not None:
        targets = targets.to(parameter.device)
    aelab_model = isinstance(model, Autoencoder)
    subject = Subject(
        model,
        loss,
        from_logits=None if aelab_model else from_logits,
        input_shape=None if aelab_model else _fit_input(model, targets),
    )
    layers = trace_layers(subject, targets)
    hidden = [layer for layer in layers if not layer.is_output]
    code = min(hidden, key=lambda layer: layer.width, default=None)
    if aelab_model:
        setup = config_setup(RunConfig(model=model.config, train=TrainConfig(loss=loss)), subject, targets)
    else:
        output_activation = layers[-1].activation if layers and layers[-1].is_output else None
        setup = Setup(
            loss=loss,
            output_activation=output_activation,
            targets=targets,
            code_width=code.width if code else None,
            input_width=targets[0].numel(),
            code_name=f"the output of {code.name}" if code else "",
            pixels=subject.reconstruct(targets)[0],
        )
    state = measure(subject, baseline(targets, loss), layers, _default_init_norms(model), "PyTorch default init")
    before = setup_findings(setup)
    return before + state_findings(state, {"setup_errors": [f.id for f in before if f.severity == "error"]})


def diagnose_run(run_dir: str | Path, data: ImagesLike | None = None) -> list[Finding]:
    """The doctor's findings for a finished (or stopped) run, from its folder alone: the model
    rebuilt from model.safetensors, the data reloaded from the config, the initial weights
    rebuilt from the seed, the loss history from metrics.jsonl. `data`: the images it was
    trained on instead of reloading them; a run trained on images passed in memory needs them
    (the same ones: their fingerprint is checked)."""
    run = load_run(run_dir)
    config = run.config
    call = f"aelab.doctor.recheck_run({str(run_dir)!r}, data=images)"
    data = data_for_run(config.data, data, str(run_dir), call)
    targets = probe_targets(data, config)
    subject = Subject(run.model, config.train.loss)
    layers = trace_layers(subject, targets)
    initial = weight_norms(build_model(config.model, data.image_shape, seed=config.train.seed))
    epoch = len(run.history) or None
    state = measure(subject, baseline(targets, config.train.loss), layers, initial, "initial", epoch=epoch)
    context = run_context(config)
    context["epochs_near_mean_image"] = epochs_near_mean_image([row["val_loss"] for row in run.history], state)
    before = setup_findings(config_setup(config, subject, targets))
    context["setup_errors"] = [f.id for f in before if f.severity == "error"]
    return before + state_findings(state, context)


def recheck_run(run_dir: str | Path, data: ImagesLike | None = None) -> list[Finding]:
    """`diagnose_run`, saved to the folder's findings.json beside the findings others wrote
    there (a divergence, say); returns everything the file now holds."""
    merge_and_save(Path(run_dir), diagnose_run(run_dir, data))
    return read_findings(run_dir)
