"""Frozen, serialisable run configuration.

A `RunConfig` holds three sections (`data`, `model`, `train`) of strings and numbers only, so
it round-trips through YAML/JSON unchanged. `from_dict` rejects unknown keys by name and
`__post_init__` checks ranges, so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from aelab.errors import ConfigError

BINARIZE_MODES = ("none", "threshold", "bernoulli")
SCALE_MODES = ("auto", "none")
# train.threads, besides a count: "auto" picks from the step's size and the machine's cores
# (deterministic); "load" also leaves out cores other programs keep busy (not deterministic).
THREAD_CHOICES = ("auto", "load")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how pixels become model inputs.

    name: a key of `aelab.data.DATASETS` ("mnist-10k", "digits", "mnist", "array", ...).
    path: the file or folder for user data ("array": .npy/.npz, "folder": PNG/JPEG files).
    data_dir: a folder that already holds the standard files of a downloadable dataset.
    scale: "auto" maps stored integer pixels to [0, 1] (0..255 -> /255); "none" keeps raw
        values, which reproduces the classic forgot-to-divide-by-255 mistake on purpose.
    binarize: "none", "threshold" (pixel > threshold) or "bernoulli" (a fresh draw each epoch).
    val_fraction: share of user data held out for validation (the last images).
    train_limit / val_limit: keep only the first N images of each split (quick runs, tests).
    """

    name: str = "mnist-10k"
    path: str | None = None
    data_dir: str | None = None
    scale: str = "auto"
    binarize: str = "none"
    threshold: float = 0.5
    val_fraction: float = 0.2
    train_limit: int | None = None
    val_limit: int | None = None

    def __post_init__(self) -> None:
        _check(self.scale in SCALE_MODES, f"data.scale must be one of {', '.join(SCALE_MODES)}, got {self.scale!r}")
        _check(
            self.binarize in BINARIZE_MODES,
            f"data.binarize must be one of {', '.join(BINARIZE_MODES)}, got {self.binarize!r}",
        )
        _check(0.0 < self.threshold < 1.0, f"data.threshold must be in (0, 1), got {self.threshold}")
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for key in ("train_limit", "val_limit"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"data.{key} must be at least 1, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The autoencoder's architecture.

    kind: a key of `aelab.models.MODELS` ("dense", "conv").
    hidden_dims: encoder hidden widths (dense) or channel counts (conv); the decoder mirrors them.
    latent_dim: width of the code.
    activation: hidden-layer activation; code_activation overrides it for the code layer.
    output_activation: turns the decoder's logits into pixels.
    init: weight initialisation, a key of `aelab.models.INITS`.
    tied: the dense decoder reuses the encoder's transposed weights.
    """

    kind: str = "dense"
    hidden_dims: tuple[int, ...] = (100,)
    latent_dim: int = 50
    activation: str = "sigmoid"
    code_activation: str | None = None
    output_activation: str = "sigmoid"
    init: str = "glorot_uniform"
    tied: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        _check(
            all(h >= 1 for h in self.hidden_dims), f"model.hidden_dims must be positive, got {list(self.hidden_dims)}"
        )
        _check(self.latent_dim >= 1, f"model.latent_dim must be at least 1, got {self.latent_dim}")
        if self.kind == "conv":
            _check(len(self.hidden_dims) >= 1, "model.hidden_dims must list at least one channel count for conv")


@dataclass(frozen=True)
class TrainConfig:
    """How the autoencoder is trained.

    loss: a key of `aelab.losses.LOSSES`, reported as the mean over pixels (Keras convention).
    optimizer: a key of `aelab.train.OPTIMIZERS`; momentum applies to sgd and rmsprop.
    patience: stop after this many epochs without a better validation loss (None: never).
    device: "auto" (GPU when there is one), "cpu" or "cuda".
    threads: CPU threads for torch: a count, "auto" (one for small steps, else every usable
        core: the same count, and so the same weights, whatever else runs on the machine) or
        "load" (as auto, less the cores other programs keep busy when the run starts: faster on
        a shared machine, but the weights then depend on that load). None (older config files)
        means "auto". A run records the count it used and a resume reuses it.
    engine: "auto" (the hand-written dense step where it applies, else autograd), "autograd"
        or "fast" (the hand-written step; an error for models it cannot train).
    """

    loss: str = "bce"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 20
    seed: int = 0
    patience: int | None = None
    device: str = "auto"
    threads: int | str | None = "auto"
    engine: str = "auto"

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, f"train.learning_rate must be positive, got {self.learning_rate}")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be non-negative, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"train.batch_size must be at least 1, got {self.batch_size}")
        _check(self.epochs >= 1, f"train.epochs must be at least 1, got {self.epochs}")
        _check(self.seed >= 0, f"train.seed must be non-negative, got {self.seed}")
        _check(self.patience is None or self.patience >= 1, f"train.patience must be at least 1, got {self.patience}")
        _check(self.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads is None:
            object.__setattr__(self, "threads", "auto")
        threads = self.threads
        _check(
            threads in THREAD_CHOICES or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1),
            f"train.threads must be a positive integer, auto or load, got {threads!r}",
        )
        _check(
            self.engine in ("auto", "autograd", "fast"),
            f"train.engine must be auto, autograd or fast, got {self.engine!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: Any) -> RunConfig:
        return _from_dict(cls, raw, "")

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some fields changed: `config.replace(train={"loss": "mse"})`."""
        merged = self.to_dict()
        for section, values in sections.items():
            if section not in merged:
                raise ConfigError(f"unknown config section {section!r}; valid: {', '.join(merged)}")
            merged[section] = {**merged[section], **values}
        return RunConfig.from_dict(merged)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_dict(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**values)
    except TypeError as error:  # pragma: no cover - guarded by _coerce
        raise ConfigError(f"{where}: {error}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against a field's type hint, allowing int -> float and list -> tuple."""
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key)
        # Several types (train.threads: a count or a name): the first that fits; a value that
        # fits none is left for the dataclass's own check, whose message lists what is valid.
        for option in inner:
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover
