"""The doctor's entry points outside training: on any PyTorch autoencoder, on a config before
training, and on a finished run folder."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aelab.config import RunConfig, TrainConfig
from aelab.data import ImageData, data_for_run, prepare_batch
from aelab.data.datasets import ImagesLike
from aelab.errors import ConfigError, RunFolderError
from aelab.findings import Finding, finding_key, read_findings
from aelab.likelihoods import get_likelihood
from aelab.nn.models import Autoencoder, build_model
from aelab.nn.variational import is_variational
from aelab.runs import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE, load_run
from aelab.sweep import SWEEP_FILE

from .monitor import (
    State,
    baseline,
    config_setup,
    epochs_near_mean_image,
    measure,
    merge_and_save,
    run_context,
    state_findings,
)
from .posterior import posterior_findings, posterior_in, posterior_stats, vae_context
from .probe import (
    PROBE_IMAGES,
    Layer,
    Subject,
    eval_mode,
    reconstruction_in,
    trace_layers,
    weight_layers,
    weight_norms,
)
from .setup import Setting, Setup, config_setting, setup_findings


def probe_targets(data: ImageData, config: RunConfig | None = None, images: int = PROBE_IMAGES) -> torch.Tensor:
    """The fixed probe batch: the first `images` validation images as the model sees them
    (scaled, and binarised as the config says, with the trainer's validation seed)."""
    stored = data.val[:images]
    if config is None:
        return prepare_batch(stored, data.scale)
    generator = torch.Generator().manual_seed(config.train.seed + 2)
    return prepare_batch(stored, data.scale, config.data.binarize, config.data.threshold, generator)


def check_setup(config: RunConfig, data: ImageData, setting: Setting = config_setting) -> list[Finding]:
    """The pre-training findings for `config` on `data`, from a freshly initialised model."""
    model = build_model(config.model, data.image_shape, seed=config.train.seed, loss=config.train.loss)
    subject = Subject(model, config.train.loss)
    return setup_findings(config_setup(config, subject, probe_targets(data, config), data, setting))


UNCHECKED = "unchecked"  # the finding that names the checks a model did not allow


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
        (B, C, H, W) or flattened (B, C*H*W) (found by trying). It may return the reconstruction
        alone or inside a tuple, list, dict, named tuple or dataclass (a VAE's (recon, mu,
        logvar)): the item named like "recon", else the first with as many values as the input.
    data: an `ImageData` (its first `images` validation images, scaled by `data.scale` exactly
        as aelab would feed them), or a tensor (N, ...) of inputs exactly as you feed the model;
        either is cast to the model's floating dtype and moved to its device.
    loss: the reconstruction loss you train with, a key of `aelab.LIKELIHOODS` ("bce", "mse", ...).
    from_logits: True when the model returns logits (trained with BCEWithLogitsLoss), False when
        it returns pixels (after its own sigmoid, softmax, ...).
    A VAE (an aelab one, or one whose forward returns its posterior's mean and log-variance
    beside the reconstruction: pytorch/examples' (recon, mu, logvar), or a dict naming `mu` and
    `logvar`) also gets the posterior checks (`aelab.doctor.posterior`: collapse, log-variance
    blow-up), on the means and log-variances of the probe images.
    Weight norms are compared with PyTorch's default initialisation of the same layers. Every
    forward pass runs in eval mode, and the model is left exactly as it was found: each
    submodule's train/eval mode, parameters, buffers (BatchNorm's running statistics), .grad
    fields and requires_grad flags; the global random state is restored too. Checks the model
    does not allow (no traceable layers, no gradient, ...) are named in an "unchecked" finding.
    Returns the findings; `aelab.findings.save_findings(folder, findings)` writes them.
    Raises ConfigError for an unknown loss, or when the model raises on every input shape."""
    likelihood = get_likelihood(loss)
    if likelihood.parameters_per_pixel != 1 and not isinstance(model, Autoencoder):
        raise ConfigError(
            f"loss {loss} reads {likelihood.parameters_per_pixel} parameters per pixel, which aelab.doctor.check "
            "reads from aelab's own models only; check your module with a one-parameter loss (mse, bce, mae, cb)"
        )
    with preserved(model), own_random_state(model):
        return _check(model, data, loss, from_logits, images)


def _check(
    model: nn.Module, data: ImageData | torch.Tensor, loss: str, from_logits: bool, images: int
) -> list[Finding]:
    targets = probe_targets(data, images=images) if isinstance(data, ImageData) else torch.as_tensor(data)[:images]
    targets = targets.to(**_model_placement(model, targets))
    aelab_model = isinstance(model, Autoencoder)
    input_shape = None
    if not aelab_model:
        input_shape, returned = _fit_input(model, targets)
        if returned is not None:
            return [_nothing_checked(targets, returned)]
    subject = Subject(model, loss, from_logits=None if aelab_model else from_logits, input_shape=input_shape)
    unchecked: dict[str, str] = {}
    try:
        layers = trace_layers(subject, targets)
    except Exception as error:  # a user's forward may raise anything: say so, go on
        layers = []
        unchecked["dead and saturated units"] = f"tracing the layers failed ({_first_line(error)})"
    hidden = [layer for layer in layers if not layer.is_output]
    code = min(hidden, key=lambda layer: layer.width, default=None)
    try:
        pixels = subject.reconstruct(targets)[0]
    except Exception as error:
        pixels = None
        unchecked["reconstruction"] = f"the model failed on {targets.shape[0]} probe inputs ({_first_line(error)})"
    if aelab_model:
        run_config = RunConfig(model=model.config, train=TrainConfig(loss=loss))
        loaded = data if isinstance(data, ImageData) else None
        setup = replace(config_setup(run_config, subject, targets, loaded), pixels=pixels)
    else:
        output_activation = layers[-1].activation if layers and layers[-1].is_output else None
        if output_activation is None:
            unchecked["output range"] = (
                "the output activation was not identified, so whether its range fits the data and the loss "
                "was not checked"
            )
        setup = Setup(
            loss=loss,
            output_activation=output_activation,
            targets=targets,
            code_width=code.width if code else None,
            input_width=targets[0].numel(),
            code_name=f"the output of {code.name}" if code else "",
            pixels=pixels,
            setting=None,
        )
    before = setup_findings(setup)
    after: list[Finding] = []
    if pixels is not None:
        reference = _default_init_norms(model, unchecked)
        try:
            state = measure(subject, baseline(targets, loss), layers, reference, "PyTorch default init")
        except Exception as error:
            unchecked["blob, units, weights and gradients"] = f"measuring the model failed ({_first_line(error)})"
        else:
            after = state_findings(state, {"setup_errors": [f.id for f in before if f.severity == "error"]})
            if not state.nonfinite:  # on NaN nothing else is measured, so nothing else is missing
                _note_unmeasured(model, layers, state, unchecked)
    if pixels is not None:
        after += _posterior_check(model, subject, targets)
    return before + after + ([_unchecked_finding(unchecked)] if unchecked else [])


def _posterior_check(model: nn.Module, subject: Subject, targets: torch.Tensor) -> list[Finding]:
    """The VAE checks (`aelab.doctor.posterior`) for an aelab VAE, or a model whose forward
    returns its posterior's mean and log-variance beside the reconstruction ((recon, mu,
    logvar), or a dict naming them); none for any other model."""
    pixels = targets[0].numel()
    try:
        with eval_mode(model), torch.no_grad():
            if is_variational(model):
                mean, log_variance = model.posterior(targets)  # type: ignore[operator]
                context: dict[str, Any] = {"summed_reconstruction": True, "pixels": pixels}
            else:
                shape = subject.input_shape
                inputs = targets if shape is None else targets.reshape(targets.shape[0], *shape)
                output = model(inputs)
                found = posterior_in(output, reconstruction_in(output, inputs))
                if found is None:
                    return []
                mean, log_variance = found
                context = {"pixels": pixels}
    except Exception:  # a user's forward may raise anything; the other checks said so already
        return []
    return posterior_findings(posterior_stats(mean, log_variance), context)


def _model_placement(model: nn.Module, targets: torch.Tensor) -> dict[str, Any]:
    """The device and floating dtype of the model's first floating parameter or buffer; the
    targets' own (float32 for integer targets) for a model that holds none."""
    held = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if held is not None:
        return {"device": held.device, "dtype": held.dtype}
    return {"device": targets.device, "dtype": targets.dtype if targets.is_floating_point() else torch.float32}


def _fit_input(model: nn.Module, images: torch.Tensor) -> tuple[tuple[int, ...] | None, str | None]:
    """(the per-sample input shape the model takes, None): the images' own shape (None), or
    flattened, or (1, s, s) for flat inputs of s * s values. (None, what it returned) when the
    model runs but returns no reconstruction. Raises ConfigError when it raises on every shape."""
    count = images[0].numel()
    shapes: list[tuple[int, ...] | None] = [None]
    if images.ndim != 2:
        shapes.append((count,))
    side = math.isqrt(count)
    if images.ndim == 2 and side * side == count:
        shapes.append((1, side, side))
    errors, returned = [], None
    with eval_mode(model), torch.no_grad():
        for shape in shapes:
            inputs = images[:2] if shape is None else images[:2].reshape(-1, *shape)
            try:
                output = model(inputs)
            except Exception as error:  # trying shapes: any failure means "not this one"
                errors.append(f"{tuple(inputs.shape)}: {_first_line(error)}")
                continue
            if reconstruction_in(output, inputs) is not None:
                return shape, None
            returned = returned or _describe(output)
    if returned is not None:
        return None, returned
    raise ConfigError(
        f"the model raised on every input shape tried ({'; '.join(errors)}); aelab.doctor.check needs a model "
        "whose forward takes a batch of the data given"
    )


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    size = f" of {len(output)} items" if isinstance(output, (tuple, list, dict)) else ""
    return f"a {type(output).__name__}{size}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _nothing_checked(targets: torch.Tensor, returned: str) -> Finding:
    width = targets[0].numel()
    return Finding(
        id=UNCHECKED,
        severity="warning",
        title=f"no check could run: the model returns {returned}, with no tensor of {width} values per input",
        evidence={"returned": returned, "input_shape": list(targets.shape[1:]), "values_per_input": width},
        explanation=(
            f"The doctor compares a model's reconstruction with its input, so it looks for a tensor with as many "
            f"values as the input ({width} per sample) in what the forward returns: the output itself, or an item "
            f"of a tuple, dict or dataclass (named like 'recon', or the first of that size). Here the model returns "
            f"{returned}, and none of it has that size."
        ),
        fix="pass a model (or a small wrapper module) whose forward returns the reconstruction",
    )


def _unchecked_finding(unchecked: dict[str, str]) -> Finding:
    names = list(unchecked)
    return Finding(
        id=UNCHECKED,
        severity="info",
        title=f"not checked on this model: {', '.join(names)}",
        evidence={"not_checked": dict(unchecked)},
        explanation=" ".join(f"{name[0].upper()}{name[1:]}: {reason}." for name, reason in unchecked.items()),
    )


def _note_unmeasured(model: nn.Module, layers: list[Layer], state: State, unchecked: dict[str, str]) -> None:
    """Name the checks that had nothing to look at on this model, and why."""
    traced = {
        f"{layer.name}.{name}" if layer.name else name
        for layer in layers
        for name, _ in layer.module.named_parameters()
    }
    untraced = [name for name in state.weights if name not in traced]
    if untraced:
        unchecked["dead and saturated units"] = (
            f"{_names(untraced)} are not the weights of an nn.Linear or convolution module (F.linear with bare "
            "parameters, say), so the doctor cannot watch their layers' outputs"
        )
    unknown = [layer.name for layer in layers if not layer.is_output and layer.activation is None]
    if unknown and "dead and saturated units" not in unchecked:
        unchecked["dead and saturated units"] = (
            f"no activation was identified after {_names(unknown)} (a normalisation or another step sits between "
            "them and the next layer)"
        )
    missing = [name for name in state.weights if name not in state.reference_weights]
    if missing and "weight collapse" not in unchecked:
        unchecked["weight collapse"] = f"{_names(missing)} have no PyTorch default initialisation to compare with"
    if state.weights and not state.gradients:
        trainable = any(p.requires_grad for p in model.parameters() if p.ndim >= 2)
        unchecked["gradients"] = (
            "the loss does not depend on any weight (the forward detaches its output or runs under no_grad)"
            if trainable
            else "no weight matrix requires a gradient"
        )


def _names(names: list[str]) -> str:
    more = len(names) - 3
    return ", ".join(names[:3]) + (f" and {more} more" if more > 0 else "")


def _default_init_norms(model: nn.Module, unchecked: dict[str, str]) -> dict[str, float]:
    """Weight norms of a copy of the model re-initialised with PyTorch's default initialisation."""
    try:
        fresh = copy.deepcopy(model)
    except Exception as error:  # a model holding something that cannot be copied
        unchecked["weight collapse"] = f"the model could not be copied to re-initialise it ({_first_line(error)})"
        return {}
    layers = weight_layers(fresh)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(0)
        for module in layers:
            module.reset_parameters()
    # Only the layers' own weights: bare parameters have no default initialisation to compare with.
    return {
        f"{name}.{key}" if name else key: float(parameter.detach().norm())
        for module, name in layers.items()
        for key, parameter in module.named_parameters(recurse=False)
        if parameter.ndim >= 2
    }


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Put the model back exactly as it was: each submodule's train/eval mode, the values of its
    parameters and buffers (BatchNorm's running statistics and batch count), each parameter's
    .grad (None stays None) and requires_grad. Only what changed is written back, so tensors
    that nothing touched keep their autograd version."""
    modes = [(module, module.training) for module in model.modules()]
    parameters = list(model.parameters())
    flags = [parameter.requires_grad for parameter in parameters]
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in parameters]
    values = [(tensor, tensor.detach().clone()) for tensor in (*parameters, *model.buffers())]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in values:
                if not _same(tensor.detach(), value):
                    tensor.copy_(value)
            for parameter, flag, (grad, value) in zip(parameters, flags, grads, strict=True):
                parameter.grad = grad
                if grad is not None and value is not None and not _same(grad, value):
                    grad.copy_(value)
                if parameter.requires_grad != flag:
                    parameter.requires_grad_(flag)
        for module, training in modes:
            module.training = training


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, counting NaN as equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


@contextmanager
def own_random_state(model: nn.Module) -> Iterator[None]:
    """A fixed seed inside, the caller's random state restored after (a VAE's forward draws
    its noise from the global generator)."""
    devices = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(0)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(0)
        yield


def sweep_runs(path: str | Path) -> list[Path] | None:
    """The run folders inside a sweep folder (one with sweep.yaml, or with run folders inside
    it and no config of its own), in name order; None for any other folder."""
    path = Path(path)
    if not path.is_dir() or (path / CONFIG_FILE).exists():
        return None
    runs = sorted(child for child in path.iterdir() if child.is_dir() and (child / CONFIG_FILE).exists())
    return runs if runs or (path / SWEEP_FILE).exists() else None


def listed(paths: list[Path], most: int = 4) -> str:
    """ "a, b, c and 2 more"."""
    more = len(paths) - most
    return ", ".join(str(p) for p in paths[:most]) + (f" and {more} more" if more > 0 else "")


def _check_run_folder(run_dir: Path) -> None:
    """Refuse, in one line, a folder that is no run folder: a sweep folder or an empty one."""
    runs = sweep_runs(run_dir)
    if runs is not None:
        inside = f": {listed(runs)}" if runs else " (it holds none yet)"
        raise RunFolderError(f"{run_dir} is a sweep folder, not a run folder; diagnose one of its runs{inside}")
    if run_dir.is_dir() and not any((run_dir / name).exists() for name in (CONFIG_FILE, MODEL_FILE, CHECKPOINT_FILE)):
        raise RunFolderError(
            f"{run_dir} is not a run folder: it holds no {CONFIG_FILE} (a run writes one when it starts); "
            "pass the folder a training run wrote"
        )


def diagnose_run(
    run_dir: str | Path, data: ImagesLike | None = None, setting: Setting = config_setting
) -> list[Finding]:
    """The doctor's findings for a finished (or stopped) run, from its folder alone: the model
    rebuilt from model.safetensors, the data reloaded from the config, the initial weights
    rebuilt from the seed, the loss history from metrics.jsonl. `data`: the images it was
    trained on instead of reloading them; a run trained on images passed in memory needs them
    (the same ones: their fingerprint is checked). `setting`: how fixes name a setting (config
    keys by default). Raises RunFolderError for a folder that is no run folder
    (a sweep folder: pass one of its runs)."""
    _check_run_folder(Path(run_dir))
    run = load_run(run_dir)
    config = run.config
    call = f"aelab.doctor.recheck_run({str(run_dir)!r}, data=images)"
    data = data_for_run(config.data, data, str(run_dir), call)
    targets = probe_targets(data, config)
    subject = Subject(run.model, config.train.loss)
    layers = trace_layers(subject, targets)
    initial = weight_norms(build_model(config.model, data.image_shape, seed=config.train.seed, loss=config.train.loss))
    epoch = len(run.history) or None
    state = measure(subject, baseline(targets, config.train.loss), layers, initial, "initial", epoch=epoch)
    context = run_context(config, setting)
    context["epochs_near_mean_image"] = epochs_near_mean_image([row["val_loss"] for row in run.history], state)
    before = setup_findings(config_setup(config, subject, targets, data, setting))
    context["setup_errors"] = [f.id for f in before if f.severity == "error"]
    found = state_findings(state, context)
    if is_variational(run.model) and not state.nonfinite:
        with eval_mode(run.model), torch.no_grad():
            stats = posterior_stats(*run.model.posterior(targets))  # type: ignore[operator]
        found += posterior_findings(stats, vae_context(config, targets[0].numel(), setting), run.history, epoch)
    return before + found


def recheck_run(
    run_dir: str | Path, data: ImagesLike | None = None, setting: Setting = config_setting
) -> list[Finding]:
    """`diagnose_run`, saved to the folder's findings.json beside the findings others wrote
    there (a divergence, say); returns everything the file now holds. A problem the file
    already held keeps the epoch it was first seen at (a blob seen since epoch 1 stays so);
    `aelab.findings.compare_findings(before, after)` says what changed."""
    first_seen = {finding_key(f): f.epoch for f in read_findings(run_dir) if f.epoch is not None}
    found = [
        replace(f, epoch=min(f.epoch, first_seen[finding_key(f)]))
        if f.epoch is not None and first_seen.get(finding_key(f)) is not None
        else f
        for f in diagnose_run(run_dir, data, setting)
    ]
    merge_and_save(Path(run_dir), found)
    return read_findings(run_dir)
