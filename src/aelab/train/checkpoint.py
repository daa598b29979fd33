"""Checkpoints: a run's whole training state in one safetensors file (tensors, plus JSON
metadata for the config, the optimizer's scalars, the generators, the history and the
early-stopping and divergence bookkeeping). No pickle anywhere: loading a checkpoint that
does not belong to the run is a RunFolderError that says why."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from aelab.config import RunConfig
from aelab.errors import AelabError, RunFolderError
from aelab.runs import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    atomic_write_bytes,
    load_weights,
    read_safetensors,
    upgrade_config_dict,
)
from aelab.train.state import RunState


def checkpoint_bytes(state: RunState) -> bytes:
    """The state as safetensors bytes: tensors, and JSON metadata for everything else."""
    from safetensors.torch import save

    tensors = {f"model/{k}": v for k, v in state.model.state_dict().items()}
    if state.best_state is not None:
        tensors.update({f"best/{k}": v for k, v in state.best_state.items()})
    optimizer_state = state.optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, moments in optimizer_state["state"].items():
        for key, value in moments.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/order"] = state.order_generator.get_state()
    tensors["rng/binarize"] = state.binarize_generator.get_state()
    if state.regularization.noise is not None:  # only denoising runs draw from it
        tensors["rng/noise"] = state.noise_generator.get_state()
    if state.config.model.variational:  # a VAE's reparameterisation draws; plain checkpoints stay as they were
        tensors["rng/sample"] = state.sample_generator.get_state()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(state.config.to_dict()),
        "image_shape": json.dumps(list(state.data.image_shape)),
        "epoch": str(state.epoch),
        "threads": str(state.threads),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "trainer": json.dumps(
            {
                "best_loss": state.best_loss,
                "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs,
                "history": state.history,
                **state.guard.state(),
            }
        ),
    }
    return save(tensors, metadata)


def save_checkpoint(state: RunState, run_dir: Path) -> None:
    """checkpoint.safetensors in `run_dir`, replaced atomically."""
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, checkpoint_bytes(state))


def load_checkpoint(state: RunState, path: Path) -> None:
    """Restore the state `save_checkpoint` wrote. A checkpoint that does not belong to this
    run (other config, missing or mis-shaped tensors, damaged metadata) is a RunFolderError
    that says why; nothing is unpickled."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise RunFolderError(f"{path} is not an aelab checkpoint (format {metadata.get('format')!r})")
    try:
        saved_config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise RunFolderError(f"{path}: its metadata lacks a readable config; the file is damaged") from None
    with contextlib.suppress(AelabError):  # fill in keys added since (data.fingerprint); invalid: differs
        saved_config = RunConfig.from_dict(upgrade_config_dict(saved_config)).to_dict()
    if saved_config != state.config.to_dict():
        changed = sorted(
            f"{section}.{key}"
            for section, values in state.config.to_dict().items()
            for key, value in values.items()
            if not isinstance(saved_config.get(section), dict) or saved_config[section].get(key) != value
        )
        raise RunFolderError(
            f"{path} was written for another config than this run's {CONFIG_FILE} "
            f"(differs in {', '.join(changed[:3]) or 'its sections'}); restore {CONFIG_FILE} or start a new run"
        )
    model_state = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    load_weights(state.model, model_state, path)
    best = {k.removeprefix("best/"): v for k, v in tensors.items() if k.startswith("best/")}
    if best:
        load_weights(state.model, best, path)  # checks names and shapes; the real weights follow
        load_weights(state.model, model_state, path)
    try:
        moments: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                moments.setdefault(int(index), {})[name] = value
        for index, values in json.loads(metadata["optimizer_scalars"]).items():
            moments.setdefault(int(index), {}).update(values)
        parameters = list(state.model.parameters())
        for index, values in moments.items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != parameters[index].shape:
                    raise ValueError(
                        f"optimizer {name} of parameter {index} has shape {tuple(value.shape)}, "
                        f"the parameter has {tuple(parameters[index].shape)}"
                    )
        state.optimizer.load_state_dict({"state": moments, "param_groups": json.loads(metadata["param_groups"])})
        state.order_generator.set_state(tensors["rng/order"])
        state.binarize_generator.set_state(tensors["rng/binarize"])  # a CPU byte tensor, whatever the device
        if state.regularization.noise is not None:
            state.noise_generator.set_state(tensors["rng/noise"])  # a CPU byte tensor, as every generator takes
        if state.config.model.variational:
            state.sample_generator.set_state(tensors["rng/sample"])
        trainer = json.loads(metadata["trainer"])
        epoch = int(metadata["epoch"])
        history = trainer["history"]
        if not isinstance(history, list) or len(history) != epoch:
            raise ValueError(f"epoch {epoch} but {len(history)} history rows")
        state.best_loss = float(trainer["best_loss"])
        state.best_epoch = int(trainer["best_epoch"])
        state.bad_epochs = int(trainer["bad_epochs"])
        state.guard.load_state(trainer)
    except KeyError as error:
        raise RunFolderError(f"{path}: the checkpoint lacks {error}; the file is damaged") from None
    except (ValueError, TypeError, IndexError, RuntimeError, json.JSONDecodeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunFolderError(f"{path}: the checkpoint does not match this run ({first})") from None
    state.best_state = {k: v.to(state.device) for k, v in best.items()} or None
    state.epoch = epoch
    state.history = history
