"""Frozen, serialisable run configuration.

A `RunConfig` holds three sections (`data`, `model`, `train`) of strings and numbers only, so
it round-trips through YAML/JSON unchanged. `from_dict` rejects unknown keys by name and
`__post_init__` checks ranges, so a bad value fails before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from aelab.errors import ConfigError

BINARIZE_MODES = ("none", "threshold", "bernoulli")
SCALE_MODES = ("auto", "none")
DEFAULT_VAL_FRACTION = 0.2  # the share of user data (array, folder) held out when val_fraction is None
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the optimizers that take train.momentum


def parse_number(value: Any, kind: type[int] | type[float]) -> int | float:
    """`value` as a finite number of type `kind` (int or float): the one number parser behind
    config files, sweep files, grid values and command-line flags.

    Takes numbers and text that spells one ("1e-3", "0.01", "100", "1e4"), since YAML 1.1 reads
    `1e-3` as text and the command line gives text only. An int field takes whole numbers in
    any spelling (10, "10", 10.0, "1e1"); nothing takes true/false, inf or nan. Raises
    ValueError whose message is what was expected: "a number", "a finite number" or
    "an integer"."""
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, str):
        text = value.strip()
        if kind is int:
            with contextlib.suppress(ValueError):
                return int(text)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(expected) from None
    if not isinstance(value, (int, float)):
        raise ValueError(expected)
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ValueError(expected)
        return int(value)
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return float(value)


# train.threads, besides a count: "auto" picks from the step's size and the machine's cores
# (deterministic); "load" also leaves out cores other programs keep busy (not deterministic).
THREAD_CHOICES = ("auto", "load")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_finite(config: Any, section: str) -> None:
    """Every float field of `config` is finite: inf and nan pass `> 0` and range checks."""
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{name} must be a finite number, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how pixels become model inputs.

    name: a key of `aelab.data.DATASETS` ("mnist-10k", "digits", "mnist", "array", ...).
    path: the file or folder for user data ("array": .npy/.npz, "folder": PNG/JPEG files).
    data_dir: a folder that already holds the standard files of a downloadable dataset.
    scale: "auto" maps stored integer pixels to [0, 1] (0..255 -> /255); "none" keeps raw
        values, which reproduces the classic forgot-to-divide-by-255 mistake on purpose.
    binarize: "none", "threshold" (pixel > threshold) or "bernoulli" (a fresh draw each epoch).
    val_fraction: share of user data ("array", "folder") held out for validation (the last
        images); None: DEFAULT_VAL_FRACTION. Datasets that come with their own split refuse it.
    train_limit / val_limit: keep only the first N images of each split (quick runs, tests).
    fingerprint: for name "in-memory" (images passed from Python as `data=`), what they were:
        dtype, split sizes, image shape and a sha256 of their contents, written by `aelab.train`
        so that the same images can be recognised when passed again; None otherwise.
    """

    name: str = "mnist-10k"
    path: str | None = None
    data_dir: str | None = None
    scale: str = "auto"
    binarize: str = "none"
    threshold: float = 0.5
    val_fraction: float | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check(self.scale in SCALE_MODES, f"data.scale must be one of {', '.join(SCALE_MODES)}, got {self.scale!r}")
        _check(
            self.binarize in BINARIZE_MODES,
            f"data.binarize must be one of {', '.join(BINARIZE_MODES)}, got {self.binarize!r}",
        )
        _check(0.0 < self.threshold < 1.0, f"data.threshold must be in (0, 1), got {self.threshold}")
        _check(
            self.val_fraction is None or 0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        _check(
            self.binarize == "threshold" or self.threshold == DataConfig.threshold,
            f"data.threshold applies to data.binarize threshold only, and binarize is {self.binarize!r}: "
            "drop data.threshold or set data.binarize to threshold",
        )
        for key in ("train_limit", "val_limit"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"data.{key} must be at least 1, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The autoencoder's architecture.

    kind: a key of `aelab.nn.models.MODELS` ("dense", "conv").
    hidden_dims: encoder hidden widths (dense) or channel counts (conv); the decoder mirrors them.
    latent_dim: width of the code.
    activation: hidden-layer activation; code_activation overrides it for the code layer.
    output_activation: turns the decoder's logits into pixels.
    init: weight initialisation, a key of `aelab.nn.models.INITS`.
    tied: the dense decoder reuses the encoder's transposed weights.
    variational: a variational autoencoder (`aelab.nn.variational`): the encoder gives a
        Gaussian's mean and log-variance of the code, training draws the code from it and
        minimises the negative ELBO (train.beta, train.kl_warmup_epochs, train.free_bits).
    """

    kind: str = "dense"
    hidden_dims: tuple[int, ...] = (100,)
    latent_dim: int = 50
    activation: str = "sigmoid"
    code_activation: str | None = None
    output_activation: str = "sigmoid"
    init: str = "glorot_uniform"
    tied: bool = False
    variational: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        _check(
            all(h >= 1 for h in self.hidden_dims), f"model.hidden_dims must be positive, got {list(self.hidden_dims)}"
        )
        _check(self.latent_dim >= 1, f"model.latent_dim must be at least 1, got {self.latent_dim}")
        if self.kind == "conv":
            _check(len(self.hidden_dims) >= 1, "model.hidden_dims must list at least one channel count for conv")
        if self.variational:
            _check(not self.tied, "model.tied applies to plain autoencoders only; drop model.tied for a VAE")
            _check(
                self.code_activation is None,
                "model.code_activation does not apply to a VAE (its code is a Gaussian's mean and log-variance); "
                "drop model.code_activation",
            )


@dataclass(frozen=True)
class TrainConfig:
    """How the autoencoder is trained.

    loss: a key of `aelab.LIKELIHOODS`, reported as the mean over pixels (Keras convention).
    optimizer: a key of `aelab.train.OPTIMIZERS`; momentum applies to sgd and rmsprop only
        (MOMENTUM_OPTIMIZERS), other optimizers refuse a non-zero momentum.
    patience: stop after this many epochs without a better validation loss (None: never).
    device: "auto" (GPU when there is one), "cpu" or "cuda".
    threads: CPU threads for torch: a count, "auto" (one for small steps, else every usable
        core: the same count, and so the same weights, whatever else runs on the machine) or
        "load" (as auto, less the cores other programs keep busy when the run starts: faster on
        a shared machine, but the weights then depend on that load). None (older config files)
        means "auto". A run records the count it used and a resume reuses it.
    engine: "auto" (the hand-written dense step where it applies, else autograd), "autograd"
        or "fast" (the hand-written step; an error for models it cannot train).
    noise: input corruption for a denoising autoencoder, "none" or "KIND:LEVEL"
        ("gaussian:0.5", "mask:0.3", "salt_pepper:0.1"; `aelab.regularizers.NOISES`).
    sparsity: a sparsity penalty on the code, "none", "l1[:WEIGHT]" or "kl:RHO[:WEIGHT]"
        (`aelab.regularizers.PENALTIES`).
    contractive: the weight of the contractive penalty (the encoder Jacobian's squared
        Frobenius norm); 0 is off.
    beta: the KL term's weight in a VAE's objective (Higgins et al. 2017's beta-VAE; 1: the ELBO).
    kl_warmup_epochs: the KL weight rises linearly over this many epochs, beta * e / N in
        epoch e = 1..N, then beta (Bowman et al. 2016); 0: no warm-up.
    free_bits: nats per latent dimension below which a dimension's KL (its mean over the batch)
        is not penalised (Kingma et al. 2016, "Improved variational inference with inverse
        autoregressive flow"); 0: none.
    The last three apply to VAEs only (model.variational).
    """

    loss: str = "bce"
    optimizer: str = "adam"
    learning_rate: float = 1e-2
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 20
    seed: int = 0
    patience: int | None = None
    device: str = "auto"
    threads: int | str | None = "auto"
    engine: str = "auto"
    noise: str = "none"
    sparsity: str = "none"
    contractive: float = 0.0
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(self.contractive >= 0, f"train.contractive must be non-negative, got {self.contractive}")
        _check(self.learning_rate > 0, f"train.learning_rate must be positive, got {self.learning_rate}")
        _check(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        _check(
            self.momentum == 0.0 or self.optimizer in MOMENTUM_OPTIMIZERS,
            f"train.momentum applies to {' and '.join(MOMENTUM_OPTIMIZERS)} only; {self.optimizer} has none: "
            "drop train.momentum or choose train.optimizer sgd or rmsprop",
        )
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
        _check(self.beta >= 0, f"train.beta must be non-negative, got {self.beta}")
        _check(self.kl_warmup_epochs >= 0, f"train.kl_warmup_epochs must be non-negative, got {self.kl_warmup_epochs}")
        _check(self.free_bits >= 0, f"train.free_bits must be non-negative, got {self.free_bits}")


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
    """Check `value` against a field's type hint, allowing list -> tuple and numbers spelt as
    text (`parse_number`)."""
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
    if hint in (int, float):
        try:
            return parse_number(value, hint)
        except ValueError as expected:
            raise ConfigError(f"{key} must be {expected}, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


# How a run computes, not what it computes: recorded with each run (its config.yaml; the
# thread count also in status.json and checkpoints) but not part of its identity, so a
# finished run is the same run whatever device, thread count or engine asks for it again.
# A resume always computes as the run's folder recorded.
RUNTIME_KEYS = ("train.device", "train.threads", "train.engine")


def run_identity(config: RunConfig) -> dict[str, Any]:
    """`config.to_dict()` less the RUNTIME_KEYS: what makes a run this run."""
    identity = config.to_dict()
    for key in RUNTIME_KEYS:
        section, _, name = key.partition(".")
        del identity[section][name]
    return identity


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether configs `a` and `b` describe the same run: equal but for the RUNTIME_KEYS."""
    return run_identity(a) == run_identity(b)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# The one alias table: the name a config field goes by outside Python where it is not the
# field's own. The command line's flag is `--NAME` (`--lr`); every other field's flag is its
# name with dashes (`--batch-size`). A grid takes these names, the field names and dotted
# keys (`lr`, `learning_rate`, `train.learning_rate`).
ALIASES: dict[str, str] = {
    "dataset": "data.name",
    "data-path": "data.path",
    "model": "model.kind",
    "hidden": "model.hidden_dims",
    "latent": "model.latent_dim",
    "lr": "train.learning_rate",
    "vae": "model.variational",
}
NONE_WORDS = ("none", "null")  # text that means None for a field that may be None


def field_names(section: str) -> list[str]:
    """The fields of config section `section` ("data", "model", "train"), in order."""
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def option_name(section: str, name: str) -> str:
    """The name field `section.name` goes by on the command line, without the dashes:
    its alias in ALIASES, else the field name with dashes ("batch-size")."""
    return next((alias for alias, key in ALIASES.items() if key == f"{section}.{name}"), name.replace("_", "-"))


def parse_field(section: str, name: str, value: Any) -> Any:
    """`value` as config field `section.name` wants it: the one value parser behind
    command-line flags, grid values (`aelab.sweep.parse_value`) and sweep files' grids; the
    config's own checks then judge the result.

    Text (the command line gives only text; YAML 1.1 reads 1e-3 as text) becomes: None for
    "none" or "null" where the field may be None; for a list field (model.hidden_dims) a list
    of integers from "100", "128,64", "128x64" or "[128,64]" ("none", "[]" or "": no
    entries); true or false for a bool field; a number through `parse_number`; for a field
    that takes a count or a name (train.threads) a count where the text spells one, else the
    text; other text stripped of spaces. A value YAML typed passes through the same number
    checks, a single integer for a list field becomes a one-entry list. Raises ValueError
    whose message is what was expected ("a number", "an integer", "a list of integers",
    "true or false")."""
    hint = typing.get_type_hints(SECTIONS[section])[name]
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    several = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint, several = options[0], len(options) > 1  # several: train.threads, a count or a name
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in NONE_WORDS:
            return None
        if typing.get_origin(hint) is tuple:
            if text.lower() in ("none", "[]", ""):
                return []
            parsed = yaml.safe_load(text) if text.startswith("[") else text.replace("x", ",").split(",")
            try:
                return [parse_number(v, int) for v in (parsed if isinstance(parsed, list) else [parsed])]
            except ValueError:
                raise ValueError("a list of integers") from None
        if hint is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError("true or false")
            return text.lower() == "true"
        if hint in (int, float):
            if several:
                try:
                    return parse_number(text, hint)
                except ValueError:
                    return text  # a name, or neither: the field's own check says what is valid
            return parse_number(text, hint)
        return text
    if typing.get_origin(hint) is tuple and isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if hint in (int, float) and value is not None and not several:
        return parse_number(value, hint)
    return value
