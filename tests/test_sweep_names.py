"""One alias table and one value parser for command-line flags and grid keys."""

import pytest

from aelab.cli import RUN_OPTIONS, build_parser, run_config_from_args
from aelab.config import ALIASES
from aelab.errors import ConfigError
from aelab.sweep import SweepSpec, parse_grid, parse_value, resolve_key, short_key

from .test_sweep_checks import TINY_BASE


def test_every_flag_is_a_grid_key_for_the_same_field_and_every_alias_is_a_flag():
    flags = {flag: (section, key) for flag, section, key, _ in RUN_OPTIONS}
    for flag, field in flags.items():
        assert resolve_key(flag.removeprefix("--")) == field
    for alias, target in ALIASES.items():
        assert flags[f"--{alias}"] == tuple(target.split("."))
    assert flags["--lr"] == ("train", "learning_rate") and flags["--batch-size"] == ("train", "batch_size")


def test_folder_names_keep_their_short_keys():
    assert [short_key(key) for key in ("lr", "hidden", "latent", "dataset", "model", "data-path", "batch-size")] == [
        "lr", "hidden", "latent", "name", "kind", "path", "batch_size",
    ]  # fmt: skip
    (flag_names,) = SweepSpec(TINY_BASE, parse_grid(["batch-size=32", "lr=1e-3"])).points()
    (field_names,) = SweepSpec(TINY_BASE, parse_grid(["batch_size=32", "train.learning_rate=1e-3"])).points()
    assert flag_names.name == field_names.name == "batch-size-32_lr-0.001"
    assert flag_names.values == {"batch_size": 32, "lr": 0.001}


@pytest.mark.parametrize(
    ("flag", "text", "value"),
    [
        ("--lr", "1e-3", 0.001),
        ("--epochs", "1e1", 10),
        ("--hidden", "[128,64]", (128, 64)),
        ("--hidden", "128x64", (128, 64)),
        ("--hidden", "100", (100,)),
        ("--hidden", "none", ()),
        ("--patience", "none", None),
        ("--patience", "3", 3),
        ("--val-fraction", "null", None),
        ("--code-activation", "none", None),
        ("--code-activation", "tanh", "tanh"),
        ("--threads", "2", 2),
        ("--threads", "auto", "auto"),
        ("--threads", "load", "load"),
    ],
)
def test_a_flag_and_a_grid_value_read_the_same_text_the_same_way(flag, text, value):
    section, key = next((s, k) for f, s, k, _ in RUN_OPTIONS if f == flag)
    args = build_parser().parse_args(["train", flag, text])
    assert getattr(getattr(run_config_from_args(args), section), key) == value
    (point,) = SweepSpec(TINY_BASE, {flag.removeprefix("--"): (text,)}).points()
    assert getattr(getattr(point.config, section), key) == value
    assert parse_value(flag.removeprefix("--"), text) == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize(
    ("flag", "text", "cli", "grid"),
    [
        ("--lr", "fast", "--lr must be a number, got 'fast'", "grid key lr: 'fast' is not a number"),
        ("--epochs", "2.5", "--epochs must be an integer, got '2.5'", "grid key epochs: '2.5' is not an integer"),
        (
            "--hidden",
            "100,x",
            "--hidden takes comma-separated integers like 100 or 128,64, got '100,x'",
            "grid key hidden: '100,x' is not a list of integers like 100 or [128,64]",
        ),
        (
            "--threads",
            "many",
            "train.threads must be a positive integer, auto or load, got 'many'",
            "train.threads must be a positive integer, auto or load, got 'many'",
        ),
    ],
)
def test_a_flag_and_a_grid_value_refuse_the_same_text(flag, text, cli, grid):
    args = build_parser().parse_args(["train", flag, text])
    with pytest.raises(ConfigError) as from_flag:
        run_config_from_args(args)
    assert str(from_flag.value) == cli
    with pytest.raises(ConfigError) as from_grid:
        SweepSpec(TINY_BASE, {flag.removeprefix("--"): (text,)}).points()
    assert str(from_grid.value).endswith(grid)
