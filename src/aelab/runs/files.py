"""Run folders: what a training run writes, and how it is read back.

A run folder describes itself:
    config.yaml          the whole resolved RunConfig
    metrics.jsonl        one JSON object per finished epoch
    model.safetensors    the trained weights, with the config and image shape in its metadata
    checkpoint.safetensors  weights, optimizer state, epoch and RNG states, to resume exactly
    status.json          "running", "finished" or "diverged"; only "finished" is a finished run
    findings.json        the doctor's findings (aelab.findings)
    report.html          the run's report (aelab.report)
    tensorboard/         event files, with the "tensorboard" logger (aelab.callbacks.tensorboard)
    .aelab.lock          held (fcntl) by the process writing the folder; removed when it is done

These names (RUN_FILES, and RUN_FOLDERS holding only event files) are the only things
`overwrite` may delete: a folder holding anything else, or a sweep folder (it holds
sweep.yaml), is refused as a run folder to replace.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any instant leaves the old complete file or the new one, never a torn one. Nothing
here unpickles: weights are safetensors, configs are safe YAML/JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from aelab.config import RunConfig
from aelab.errors import AelabError, RunFolderError
from aelab.nn.models import Autoencoder, build_model

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs go unguarded
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
STATUS_FILE = "status.json"
FINDINGS_FILE = "findings.json"
REPORT_FILE = "report.html"
LOCK_FILE = ".aelab.lock"
WRITE_PROBE = ".aelab-write-test"
# Every file aelab writes in a run folder, and so all that `overwrite` may delete there (with
# the temporaries `.NAME.*.tmp` that an interrupted atomic write of one of them leaves).
RUN_FILES = (
    CONFIG_FILE, METRICS_FILE, MODEL_FILE, CHECKPOINT_FILE, STATUS_FILE, FINDINGS_FILE, REPORT_FILE,
    LOCK_FILE, WRITE_PROBE,
)  # fmt: skip
TENSORBOARD_DIR = "tensorboard"
# The subfolders aelab writes in a run folder, with what their files' names hold: a subfolder
# holding only such files is the run's own (replaced by `overwrite`), anything else is foreign.
RUN_FOLDERS = {TENSORBOARD_DIR: "tfevents"}
# A sweep folder's own files (aelab.sweep); its run folders are subfolders.
SWEEP_FILE = "sweep.yaml"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
SWEEP_FILES = (SWEEP_FILE, RESULTS_CSV, RESULTS_JSON, REPORT_FILE)
MODEL_FORMAT = "aelab-model-1"
CHECKPOINT_FORMAT = "aelab-checkpoint-1"
# Random temporary names tried before giving up (as tempfile does; a clash is one in 4e9).
TEMPORARY_NAME_ATTEMPTS = 100


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The file gets the mode open() would give it (0o666 less the umask). A failed write (disk
    full, permissions) leaves the old file as it was, removes the temporary file and raises
    RunFolderError with the reason."""
    path = Path(path)
    temporary: Path | None = None
    try:
        handle, temporary = _create_temporary(path)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            hint = "free some space" if full else "check the folder's permissions"
            raise RunFolderError(
                f"cannot write {path} ({reason}); the previous version of the file is kept, {hint} and try again"
            ) from None
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty `.NAME.XXXXXXXX.tmp` beside `path`, open for writing: (descriptor, path).

    Created as open() creates a file, mode 0o666 that the kernel reduces by the umask (or a
    default ACL), so the file ends with the mode a plain write would give it. (tempfile.mkstemp
    makes 0600, and learning the umask to widen that means setting it for the whole process,
    which races with other threads creating files.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(TEMPORARY_NAME_ATTEMPTS):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- config


def save_config(run_dir: Path, config: RunConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names a key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the safe loader's own error follows
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"key {key!r} appears twice in one mapping (again on line {line}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a plain dict (safe loader: no objects are built). A key
    given twice in one mapping is an error, not "the last one wins"."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise AelabError(f"cannot read config file {path}: {error.strerror}; check the path") from None
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader: builds no objects
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as error:
        raise AelabError(f"config file {path}: {error}") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise AelabError(f"config file {path} is not valid YAML ({first}); fix its syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AelabError(f"config file {path} must hold a mapping of sections (data, model, train)")
    return raw


# Until issue 10, data.val_fraction defaulted to 0.2 and was recorded for every dataset, though
# only user data is split by it; it is None now wherever a dataset has its own split.
LEGACY_VAL_FRACTION = 0.2


def upgrade_config_dict(raw: dict[str, Any]) -> dict[str, Any]:
    """A config (or sweep file) read from a folder written by an earlier aelab, as this one
    writes it: an unused val_fraction of 0.2 on a dataset with its own split becomes None, so
    old run and sweep folders still match, resume and skip as before. Returns a new dict."""
    from aelab.data import DATASETS

    data = raw.get("data")
    if not isinstance(data, dict) or data.get("val_fraction") != LEGACY_VAL_FRACTION:
        return raw
    spec = DATASETS.get(data.get("name", RunConfig().data.name))
    if spec is None or spec.user_data:
        return raw
    return {**raw, "data": {**data, "val_fraction": None}}


def load_config(run_dir: Path) -> RunConfig:
    return RunConfig.from_dict(upgrade_config_dict(read_config_file(run_dir / CONFIG_FILE)))


# --- metrics and status


def metrics_bytes(history: list[dict[str, Any]]) -> bytes:
    """metrics.jsonl's contents: one JSON object per epoch."""
    return "".join(json.dumps(row) + "\n" for row in history).encode("utf-8")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_bytes(run_dir / METRICS_FILE, metrics_bytes(history))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise RunFolderError(f"{path}: line {number} is not valid JSON; the file was edited or damaged") from None
    return rows


def status_bytes(state: str, **details: Any) -> bytes:
    """status.json's contents: the state, when it was written, and `details`."""
    return json.dumps({"state": state, "updated": now(), **details}, indent=2).encode("utf-8")


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    atomic_write_bytes(run_dir / STATUS_FILE, status_bytes(state, **details))


def read_status(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return {"state": "missing"}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"state": "damaged"}
    return status if isinstance(status, dict) else {"state": "damaged"}


def read_threads(run_dir: str | Path) -> int | None:
    """The CPU thread count a run trained with, as recorded in its checkpoint's metadata (else
    in status.json), or None for a folder written before aelab recorded it. A recorded value
    that is not a positive count is a RunFolderError: that file is damaged."""
    run_dir = Path(run_dir)
    sources: list[tuple[Path, Any]] = []
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        try:
            with safe_open(checkpoint, "pt") as file:  # the header only; no tensor is read
                sources.append((checkpoint, (file.metadata() or {}).get("threads")))
        except (SafetensorError, OSError):
            pass  # a damaged checkpoint: resuming it says so; status.json may still tell
    sources.append((run_dir / STATUS_FILE, read_status(run_dir).get("threads")))
    for path, value in sources:
        if value is None:
            continue
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RunFolderError(f"{path} records {value!r} threads, not a thread count; the file is damaged")
        return value
    return None


def is_finished(run_dir: str | Path) -> bool:
    return read_status(Path(run_dir)).get("state") == "finished"


# --- weights


def _tensor_dict(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: value.detach().to("cpu").contiguous() for name, value in state.items()}


def save_model(run_dir: Path, model: Autoencoder, config: RunConfig) -> str:
    """model.safetensors in `run_dir`; returns its SHA-256 (status.json records it, so that the
    metrics training measured are reused for exactly these weights: `model_digest`)."""
    metadata = {
        "format": MODEL_FORMAT,
        "config": json.dumps(config.to_dict()),
        "image_shape": json.dumps(list(model.image_shape)),
    }
    data = save_safetensors_bytes(_tensor_dict(model.state_dict()), metadata)
    atomic_write_bytes(run_dir / MODEL_FILE, data)
    return hashlib.sha256(data).hexdigest()


def model_digest(run_dir: str | Path) -> str | None:
    """The SHA-256 of the run folder's model.safetensors, None when it cannot be read."""
    try:
        return hashlib.sha256((Path(run_dir) / MODEL_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a damaged file is a RunFolderError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunFolderError(f"{path} is missing; the run did not get that far") from None
    try:
        tensors = load_safetensors_bytes(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is not a valid safetensors file ({error}); the file is damaged") from None
    return tensors, header.get("__metadata__", {}) or {}


def load_weights(model: Autoencoder, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load `tensors` into `model`, refusing missing, extra or mis-shaped entries by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise RunFolderError(f"{source}: weights do not match the config's model ({what})")
    for name, value in expected.items():
        if tensors[name].shape != value.shape:
            raise RunFolderError(
                f"{source}: weight {name} has shape {tuple(tensors[name].shape)}, "
                f"the config's model needs {tuple(value.shape)}"
            )
    model.load_state_dict(tensors)


@dataclass
class Run:
    """A run folder read back: config, rebuilt model (eval mode, CPU), history and status."""

    path: Path
    config: RunConfig
    model: Autoencoder
    history: list[dict[str, Any]]
    status: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status.get("state") == "finished"


def load_run(path: str | Path) -> Run:
    """Rebuild the trained model of a run folder from the folder alone.

    A finished run gives its final weights; an unfinished one (killed or diverged, see
    `Run.status`) the weights of its last good checkpoint. Only safetensors and safe YAML/JSON
    are read: any other file in the folder (a pickle, say) is never opened."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunFolderError(
            template="{folder} is not a run folder; pass the folder that {train} wrote", folder=run_dir
        )
    source, tensors, metadata = _weights_source(run_dir)
    try:
        config = RunConfig.from_dict(upgrade_config_dict(json.loads(metadata["config"])))
        image_shape = tuple(json.loads(metadata["image_shape"]))
    except (KeyError, json.JSONDecodeError, TypeError):
        raise RunFolderError(f"{source}: its metadata lacks a readable config") from None
    except AelabError as error:
        raise RunFolderError(f"{source}: the config in its metadata does not validate ({error})") from None
    if len(image_shape) != 3 or not all(isinstance(size, int) and size >= 1 for size in image_shape):
        raise RunFolderError(f"{source}: image shape {list(image_shape)} is not (C, H, W)")
    model = build_model(config.model, image_shape, loss=config.train.loss)  # type: ignore[arg-type]
    load_weights(model, tensors, source)
    model.eval()
    return Run(run_dir, config, model, read_metrics(run_dir), read_status(run_dir))


def _weights_source(run_dir: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """The final weights, or for a run that has not finished (killed, diverged) the weights of
    its last checkpoint, so that an unfinished run can still be looked at."""
    if not (run_dir / MODEL_FILE).exists() and (run_dir / CHECKPOINT_FILE).exists():
        source = run_dir / CHECKPOINT_FILE
        tensors, metadata = read_safetensors(source)
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise RunFolderError(f"{source} was not written by aelab (format {metadata.get('format')!r})")
        weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
        return source, weights, metadata
    source = run_dir / MODEL_FILE
    tensors, metadata = read_safetensors(source)
    if metadata.get("format") != MODEL_FORMAT:
        raise RunFolderError(f"{source} was not written by aelab (format {metadata.get('format')!r})")
    return source, tensors, metadata
