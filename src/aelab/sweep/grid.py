"""The grid language: a base config and an ordered grid of config keys to values
(`SweepSpec`), the keys' aliases and short names, value parsing, the folder name of each
grid point, and what a sweep folder's sweep.yaml holds (`Sweep`, `read_sweep`)."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aelab.config import ALIASES, SECTIONS, RunConfig, field_names, parse_field, run_identity, same_run
from aelab.errors import ConfigError, DataError, RunFolderError
from aelab.runs import SWEEP_FILE, read_config_file, upgrade_config_dict

EXTENDED_KEY = "extended"  # sweep.yaml: the grids added to the sweep after the first

# The aliases that name a field in folder names and results columns; the others (dataset,
# data-path, model) leave their field's own name there (name, path, kind), as ever.
FOLDER_ALIASES = ("lr", "hidden", "latent")
_SHORT = {target: alias for alias, target in ALIASES.items() if alias in FOLDER_ALIASES}

# `aelab compare` with no grid: the 784-100-50-100-784 autoencoder with a sigmoid output on
# mnist-10k, four losses times two hidden activations. Adam at 1e-2 for 20 epochs takes the
# sigmoid bce and mse runs off the blob plateau (at 1e-3 both stay near val MSE 0.066).
DEFAULT_BASE = RunConfig.from_dict(
    {
        "data": {"name": "mnist-10k"},
        "model": {
            "kind": "dense",
            "hidden_dims": [100],
            "latent_dim": 50,
            "output_activation": "sigmoid",
            "init": "glorot_uniform",
        },
        "train": {"optimizer": "adam", "learning_rate": 1e-2, "batch_size": 256, "epochs": 20},
    }
)
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {"loss": ("bce", "mse", "mae", "cb"), "activation": ("sigmoid", "relu")}


def resolve_key(key: str) -> tuple[str, str]:
    """(section, field) for a grid key: "loss", "train.loss" or an alias like "lr"."""
    key = key.strip()
    target = ALIASES.get(key, key)
    if "." in target:
        section, _, name = target.partition(".")
        if section not in SECTIONS or name not in field_names(section):
            raise ConfigError(f"unknown grid key {key!r}; use a field like train.loss or model.activation")
        return section, name
    target = target.replace("-", "_")  # a flag's name: batch-size
    owners = [section for section in SECTIONS if target in field_names(section)]
    if not owners:
        known = sorted({*ALIASES, *(n for s in SECTIONS for n in field_names(s))})
        raise ConfigError(f"unknown grid key {key!r}; valid keys: {', '.join(known)}")
    return owners[0], target


def short_key(key: str) -> str:
    """The name a grid key goes by in folder names and tables: "train.learning_rate" -> "lr"."""
    section, name = resolve_key(key)
    return _SHORT.get(f"{section}.{name}", name)


def parse_value(key: str, value: Any) -> Any:
    """A grid value as its config field wants it, by `aelab.config.parse_field` (the parser of
    command-line flags too): text ("1e-2", "none", "[128,64]", "100", "auto") becomes a
    number, None, a list or stays text; YAML values pass through the same checks (PyYAML
    reads 1e-2 as text)."""
    section, name = resolve_key(key)
    try:
        return parse_field(section, name, value)
    except ValueError as expected:
        if str(expected) == "a list of integers":
            raise ConfigError(f"grid key {key}: {value!r} is not a list of integers like 100 or [128,64]") from None
        raise ConfigError(f"grid key {key}: {value!r} is not {expected}") from None


def split_values(text: str) -> list[str]:
    """ "bce,mse" -> ["bce", "mse"]; commas inside brackets stay: "[128,64],100" -> ["[128,64]", "100"]."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_grid(items: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """Command-line grid axes, "loss=bce,mse" "lr=1e-2,1e-3", as an ordered grid. A key given
    twice is refused (a later axis would replace the earlier one)."""
    grid: dict[str, tuple[Any, ...]] = {}
    given: dict[str, str] = {}
    for item in items:
        key, equals, values = item.partition("=")
        if not equals or not key.strip() or not values.strip():
            raise ConfigError(template="{grid} takes KEY=VALUE,VALUE,... like loss=bce,mse; got {item!r}", item=item)
        key = key.strip()
        if key in grid:
            both = ",".join([*grid[key], *split_values(values)])
            raise ConfigError(
                template="{grid} names {key} twice ({first} and {item}); give one axis: {key}={both}",
                key=key,
                first=given[key],
                item=item,
                both=both,
            )
        grid[key], given[key] = tuple(split_values(values)), item
    return grid


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def check_names(config: RunConfig) -> None:
    """Every name in `config` checked against its registry, as training would check it, with
    no data read and no memory taken: the dataset and the data keys it reads, the loss and
    the optimizer (`aelab.train.state.check_config`), the model kind, init and activations (the
    model built on torch's meta device, on the dataset's image shape where it is known), and
    whether train.engine can train that model. Raises ConfigError or DataError."""
    import torch

    from aelab.data import DATASETS, IN_MEMORY
    from aelab.nn.models import build_model
    from aelab.train.state import check_config
    from aelab.train.steps import choose_engine

    check_config(config)
    if config.data.name == IN_MEMORY:
        raise ConfigError(
            f"dataset {IN_MEMORY!r} is images passed from Python and a sweep loads its data by name; "
            "save them with np.save and use dataset 'array' with data.path"
        )
    shape = DATASETS[config.data.name].shape or (1, 28, 28)  # check_config refused an unknown name
    with torch.device("meta"):
        model = build_model(config.model, shape, loss=config.train.loss)
    choose_engine(config, model)


@dataclass(frozen=True)
class GridPoint:
    """One run of a sweep: its folder name, its grid values by short key, its full config."""

    name: str
    values: dict[str, Any]
    config: RunConfig


@dataclass(frozen=True)
class SweepSpec:
    """A base config and an ordered grid of config keys to values."""

    base: RunConfig = DEFAULT_BASE
    grid: dict[str, tuple[Any, ...]] = field(default_factory=lambda: dict(DEFAULT_GRID))

    def __post_init__(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        grid: dict[str, tuple[Any, ...]] = {}
        for key, values in self.grid.items():
            where = resolve_key(key)
            if where in seen:
                raise ConfigError(f"grid keys {seen[where]!r} and {key!r} name the same field; keep one")
            seen[where] = key
            values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
            if not values:
                raise ConfigError(f"grid key {key!r} has no values")
            grid[key] = tuple(parse_value(key, v) for v in values)
        object.__setattr__(self, "grid", grid)

    def points(self) -> list[GridPoint]:
        """Every combination of grid values, the first key varying slowest. Raises ConfigError
        (DataError for a data key) for a combination that is not a valid config, naming the
        grid point, before anything trains: every name is checked (`check_names`)."""
        keys = list(self.grid)
        total = math.prod(len(values) for values in self.grid.values())
        points, names = [], set()
        for index, combination in enumerate(itertools.product(*(self.grid[key] for key in keys)), 1):
            changes: dict[str, dict[str, Any]] = {}
            values: dict[str, Any] = {}
            for key, value in zip(keys, combination, strict=True):
                section, name = resolve_key(key)
                changes.setdefault(section, {})[name] = value
                values[short_key(key)] = list(value) if isinstance(value, tuple) else value
            try:
                config = self.base.replace(**changes)
                check_names(config)
            except (ConfigError, DataError) as error:
                if not values:
                    raise
                where = " ".join(f"{short}={_format_value(v)}" for short, v in values.items())
                raise type(error)(f"grid point {index} of {total} ({where}): {error}") from None
            name = "_".join(f"{_safe(short)}-{_safe(_format_value(v))}" for short, v in values.items()) or "run"
            if name in names:
                raise ConfigError(f"two grid points share the folder name {name!r}; make the grid values distinct")
            names.add(name)
            points.append(GridPoint(name, values, config))
        return points

    def same_runs(self, other: SweepSpec) -> bool:
        """Whether `other` makes the same runs: the same grid and a base config equal but for
        the runtime settings (`aelab.config.RUNTIME_KEYS`)."""
        return self.grid == other.grid and same_run(self.base, other.base)

    def to_dict(self) -> dict[str, Any]:
        grid = {key: [list(v) if isinstance(v, tuple) else v for v in values] for key, values in self.grid.items()}
        return {**self.base.to_dict(), "grid": grid}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: RunConfig = DEFAULT_BASE) -> SweepSpec:
        """A sweep file's contents: data/model/train sections laid over `base`, and a `grid`."""
        unknown = sorted(set(raw) - {"data", "model", "train", "grid"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in sweep file; valid keys: data, model, train, grid")
        sections = {}
        for name in ("data", "model", "train"):
            section = raw.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"sweep file section {name!r} must be a mapping")
            sections[name] = section
        grid = raw.get("grid")
        if grid is not None and not isinstance(grid, dict):
            raise ConfigError("sweep file key 'grid' must map config keys to lists of values")
        spec_base = base.replace(**sections)
        if grid:
            return cls(spec_base, dict(grid))
        # The default grid, less the axes the file or flags fixed ("train: {loss: mse}").
        fixed = {(section, key) for section, values in sections.items() for key in values}
        return cls(spec_base, {k: v for k, v in DEFAULT_GRID.items() if resolve_key(k) not in fixed})


def _config_value(config: RunConfig, key: str) -> Any:
    section, name = resolve_key(key)
    value = getattr(getattr(config, section), name)
    return list(value) if isinstance(value, tuple) else value


def grid_text(grid: dict[str, tuple[Any, ...]]) -> str:
    """A grid as one would type it: "loss=bce,mse activation=relu"."""
    return " ".join(f"{short_key(k)}={','.join(_format_value(v) for v in values)}" for k, values in grid.items())


@dataclass(frozen=True)
class Sweep:
    """What a sweep folder holds: the spec it was made with, then each spec added to it since
    (`run_sweep(..., extend=True)`). Its runs are every spec's runs."""

    specs: tuple[SweepSpec, ...]

    def points(self) -> list[GridPoint]:
        """Every spec's points in order, each folder name once. With several specs, a point's
        values cover the grid keys of all of them (read from its config), so that every row
        of the results names the same keys. Raises RunFolderError when two specs give one
        folder name different configs."""
        if len(self.specs) == 1:
            return self.specs[0].points()
        keys = {short_key(key): key for spec in self.specs for key in spec.grid}
        points: dict[str, GridPoint] = {}
        for spec in self.specs:
            for point in spec.points():
                if point.name in points:
                    if not same_run(points[point.name].config, point.config):
                        difference = _config_difference(point.config, points[point.name].config)
                        raise RunFolderError(
                            template="run {name} of this grid has another config than the sweep's run of that "
                            "name ({difference}); choose another {out}",
                            name=point.name,
                            difference=difference,
                        )
                    continue
                values = {short: _config_value(point.config, key) for short, key in keys.items()}
                points[point.name] = GridPoint(point.name, values, point.config)
        return list(points.values())

    @property
    def grid(self) -> dict[str, tuple[Any, ...]]:
        """Every key of every spec's grid with all the values it takes, in first-seen order."""
        grid: dict[str, tuple[Any, ...]] = {}
        for spec in self.specs:
            for key, values in spec.grid.items():
                known = next((k for k in grid if short_key(k) == short_key(key)), key)
                grid[known] = (*grid.get(known, ()), *(v for v in values if v not in grid.get(known, ())))
        return grid

    def to_dict(self) -> dict[str, Any]:
        first, *more = self.specs
        return {**first.to_dict(), EXTENDED_KEY: [spec.to_dict() for spec in more]} if more else first.to_dict()


def load_sweep_file(path: str | Path, base: RunConfig = DEFAULT_BASE) -> SweepSpec:
    """A YAML sweep file: a run config's sections (over `base`) plus `grid: {key: [values]}`,
    checked by `check_sweep_file`."""
    raw = read_config_file(path)
    check_sweep_file(raw, path)
    return SweepSpec.from_dict(raw, base)


def check_sweep_file(raw: dict[str, Any], path: str | Path) -> None:
    """Refuse what a sweep file's contents would otherwise do without a word: an empty grid
    (the default grid would run) and a key set in a section that a grid axis replaces in
    every run."""
    if "grid" in raw and not raw["grid"]:
        raise ConfigError(
            f"sweep file {path}: grid is empty; list at least one axis, like grid: {{loss: [bce, mse]}}, "
            "or leave grid out for the default grid"
        )
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError("sweep file key 'grid' must map config keys to lists of values")
    for key in grid:
        section, name = resolve_key(key)
        values = raw.get(section) or {}
        if isinstance(values, dict) and name in values:
            raise ConfigError(
                f"sweep file {path} sets {section}.{name}: {values[name]!r} and has a grid axis {key}, which "
                "replaces it in every run; drop one of them"
            )


def _config_difference(wanted: RunConfig, found: RunConfig) -> str:
    """The first key in which two runs differ (`run_identity`: runtime settings aside)."""
    a, b = run_identity(wanted), run_identity(found)
    for section in a:
        for key in a[section]:
            if a[section][key] != b[section].get(key):
                return f"{section}.{key} is {b[section].get(key)!r} there, {a[section][key]!r} here"
    return "they differ"  # pragma: no cover


def read_sweep(out: str | Path) -> Sweep | None:
    """The sweep a sweep folder holds (the spec it was made with and any it was extended
    with), or None when it has no sweep.yaml."""
    path = Path(out) / SWEEP_FILE
    if not path.exists():
        return None
    raw = read_config_file(path)
    extended = raw.pop(EXTENDED_KEY, None) or []
    if not isinstance(extended, list) or not all(isinstance(part, dict) for part in extended):
        raise RunFolderError(f"{path}: {EXTENDED_KEY!r} must be a list of sweeps; the file was edited or damaged")
    return Sweep(tuple(SweepSpec.from_dict(upgrade_config_dict(part), RunConfig()) for part in (raw, *extended)))
