"""Library errors name config keys and Python parameters; the command line names its flags.

Each mistake is made twice: through the Python API, whose message must name what to change
in its own terms and no `--flag`, and through `aelab.cli.main`, whose one line must name the
flag or command that does the same (issue 11, point 6)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

import aelab
from aelab import cli
from aelab.cli import COMMAND_WORDS, CONFIG_FLAGS, RUN_OPTIONS, command_words, main
from aelab.config import RunConfig
from aelab.errors import PYTHON_WORDS, AelabError, ConfigError, RunFolderError, python_words
from aelab.runs import SWEEP_FILE, run_lock, write_status
from aelab.sweep import Sweep, SweepSpec, parse_grid, run_sweep
from tests.conftest import TINY, TINY_FLAGS

FLAG = re.compile(r"(?<![\w-])--[a-z]")
COMMAND = re.compile(r"`aelab [a-z]")
SRC = Path(aelab.__file__).parent


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    aelab.train(RunConfig.from_dict(TINY), run, progress=False, doctor=False, report=False)
    return run


def _config(**sections) -> RunConfig:
    return RunConfig.from_dict(
        {key: {**TINY.get(key, {}), **sections.get(key, {})} for key in ("data", "model", "train")}
    )


# Each case: (folder) -> (the Python call that makes the mistake, the command line that makes it,
# what the Python message says, what the command line's line says).
Case = Callable[[Path, Path], tuple[Callable[[], object], list[str], str, str]]


def existing_run(tmp: Path, finished: Path):
    return (
        lambda: aelab.train(RunConfig.from_dict(TINY), finished, progress=False),
        ["train", *TINY_FLAGS, "--out", str(finished)],
        "already exists (finished); choose another `out` or pass `overwrite=True`",
        "already exists (finished); choose another --out or pass --overwrite",
    )


def running_run(tmp: Path, finished: Path):
    run = tmp / "running"
    run.mkdir()
    (run / "config.yaml").write_text((finished / "config.yaml").read_text())
    write_status(run, "running", epochs_done=0)
    return (
        lambda: aelab.train(RunConfig.from_dict(TINY), run, progress=False),
        ["train", *TINY_FLAGS, "--out", str(run)],
        f"continue it with `aelab.resume({str(run)!r})` or pass `overwrite=True`",
        f"continue it with `aelab train --resume {run}` or pass --overwrite",
    )


def foreign_file(tmp: Path, finished: Path):
    (tmp / "notes.txt").write_text("mine")
    return (
        lambda: aelab.train(RunConfig.from_dict(TINY), tmp, progress=False, overwrite=True),
        ["train", *TINY_FLAGS, "--out", str(tmp), "--overwrite"],
        "`overwrite=True` only replaces a run folder's own files: choose another `out`",
        "--overwrite only replaces a run folder's own files: choose another --out",
    )


def out_is_a_file(tmp: Path, finished: Path):
    (tmp / "file").write_text("mine")
    return (
        lambda: aelab.train(RunConfig.from_dict(TINY), tmp / "file", progress=False),
        ["train", *TINY_FLAGS, "--out", str(tmp / "file")],
        "exists and is not a folder; choose another `out`",
        "exists and is not a folder; choose another --out",
    )


def folder_in_use(tmp: Path, finished: Path):
    run = tmp / "busy"
    run.mkdir()

    def call():
        with run_lock(run):  # flock conflicts across open files, in one process too
            aelab.train(RunConfig.from_dict(TINY), run, progress=False)

    def command():
        with run_lock(run):
            return main(["train", *TINY_FLAGS, "--out", str(run)])

    return (call, command, "wait for it to end or choose another `out`", "wait for it to end or choose another --out")


def resume_a_sweep(tmp: Path, finished: Path):
    (tmp / SWEEP_FILE).write_text("grid: {}\n")
    return (
        lambda: aelab.resume(tmp, progress=False),
        ["train", "--resume", str(tmp)],
        f"not a run folder; `aelab.sweep.run_sweep(spec, {str(tmp)!r})` resumes it",
        f"not a run folder; `aelab compare --out {tmp}` resumes it",
    )


def resume_before_config(tmp: Path, finished: Path):
    return (
        lambda: aelab.resume(tmp, progress=False),
        ["train", "--resume", str(tmp)],
        f"start it again with `aelab.train(config, {str(tmp)!r}, overwrite=True)`",
        f"start it again with `aelab train --out {tmp} --overwrite` and your options",
    )


def resume_no_folder(tmp: Path, finished: Path):
    return (
        lambda: aelab.resume(tmp / "missing", progress=False),
        ["train", "--resume", str(tmp / "missing")],
        "is not a run folder; pass the folder that `aelab.train(config, out)` wrote",
        "is not a run folder; pass the folder that `aelab train --out` wrote",
    )


def fast_engine_on_conv(tmp: Path, finished: Path):
    config = _config(model={"kind": "conv", "hidden_dims": [4]}, train={"engine": "fast"})
    return (
        lambda: aelab.train(config, progress=False),
        ["train", *TINY_FLAGS, "--model", "conv", "--hidden", "4", "--engine", "fast", "--out", str(tmp / "r")],
        "train.engine fast cannot train this model: ",
        "; use --engine auto",
    )


def tied_conv(tmp: Path, finished: Path):
    config = _config(model={"kind": "conv", "hidden_dims": [4], "tied": True})
    return (
        lambda: aelab.train(config, progress=False),
        ["train", *TINY_FLAGS, "--model", "conv", "--hidden", "4", "--tied", "--out", str(tmp / "r")],
        "model.tied applies to dense models only; drop model.tied or use model.kind: dense",
        "model.tied applies to dense models only; drop --tied or use --model dense",
    )


def cuda_without_gpu(tmp: Path, finished: Path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    return (
        lambda: aelab.train(_config(train={"device": "cuda"}), progress=False),
        ["train", *TINY_FLAGS, "--device", "cuda", "--out", str(tmp / "r")],
        "no GPU is visible to torch; use train.device: cpu or auto",
        "no GPU is visible to torch; use --device cpu or auto",
    )


def grid_item_without_values(tmp: Path, finished: Path):
    return (
        lambda: parse_grid(["loss"]),
        ["compare", *TINY_FLAGS, "--grid", "loss", "--out", str(tmp / "s")],
        "the grid takes KEY=VALUE,VALUE,... like loss=bce,mse; got 'loss'",
        "--grid takes KEY=VALUE,VALUE,... like loss=bce,mse; got 'loss'",
    )


def sweep_with_another_grid(tmp: Path, finished: Path):
    base = _config(train={"epochs": 1})
    (tmp / SWEEP_FILE).write_text(yaml.safe_dump(Sweep((SweepSpec(base, {"loss": ("bce",)}),)).to_dict()))
    return (
        lambda: run_sweep(SweepSpec(base, {"loss": ("mse",)}), tmp),
        ["compare", *TINY_FLAGS, "--epochs", "1", "--grid", "loss=mse", "--out", str(tmp)],
        f"`aelab.sweep.run_sweep(spec, {str(tmp)!r})` with the spec it was made with resumes it as it is, "
        "another `out` starts a new sweep, `extend=True` adds this grid's runs to it",
        f"`aelab compare --out {tmp}` alone resumes it as it is, another --out starts a new sweep, --extend adds "
        "this grid's runs to it",
    )


def sweep_into_a_run(tmp: Path, finished: Path):
    return (
        lambda: run_sweep(SweepSpec(_config(), {"loss": ("mse",)}), finished),
        ["compare", *TINY_FLAGS, "--grid", "loss=mse", "--out", str(finished)],
        "is a run folder, not a sweep folder; choose another `out`",
        "is a run folder, not a sweep folder; choose another --out",
    )


CASES: dict[str, Case] = {
    case.__name__: case
    for case in (
        existing_run,
        running_run,
        foreign_file,
        out_is_a_file,
        folder_in_use,
        resume_a_sweep,
        resume_before_config,
        resume_no_folder,
        fast_engine_on_conv,
        tied_conv,
        cuda_without_gpu,
        grid_item_without_values,
        sweep_with_another_grid,
        sweep_into_a_run,
    )
}
ERROR_CLASS = {"fast_engine_on_conv": ConfigError, "tied_conv": ConfigError, "cuda_without_gpu": ConfigError}
ERROR_CLASS |= {"grid_item_without_values": ConfigError}


@pytest.mark.parametrize("name", CASES)
def test_the_library_names_keys_and_parameters_and_the_command_line_its_flags(name, tmp_path, finished_run, capsys):
    call, command, python_text, command_text = CASES[name](tmp_path, finished_run)
    with pytest.raises(ERROR_CLASS.get(name, RunFolderError)) as raised:
        call()
    message = str(raised.value)
    assert python_text in message
    assert not FLAG.search(message) and not COMMAND.search(message), message
    capsys.readouterr()
    code = command() if callable(command) else main(command)
    assert code == 2
    line = capsys.readouterr().err
    assert line.startswith("aelab: error: ") and line.count("\n") == 1, line
    assert command_text in line
    assert "`out`" not in line and "=True`" not in line and "aelab.train(" not in line, line


def test_values_go_in_as_they_are_and_settings_in_each_sides_words():
    folder = "runs/{odd}:name"  # braces and a colon in a path are text, never template syntax
    error = RunFolderError(
        template="{folder} is stale; {resume:{folder}}, {train.learning_rate:1e-3}, {model.tied} or {out} "
        "({count:.1f})",
        folder=folder,
        count=2.25,
    )
    assert str(error) == (
        "runs/{odd}:name is stale; `aelab.resume('runs/{odd}:name')`, train.learning_rate: 1e-3, model.tied "
        "or `out` (2.2)"
    )
    assert error.render(command_words) == (
        "runs/{odd}:name is stale; `aelab train --resume runs/{odd}:name`, --lr 1e-3, --tied or --out (2.2)"
    )
    plain = AelabError("a {plain} message")  # a message without a template is never parsed
    assert str(plain) == plain.render(command_words) == "a {plain} message"
    with pytest.raises(KeyError, match="ouT"):
        AelabError(template="choose another {ouT}")  # a misspelt setting is our bug, caught at once


def test_every_python_word_has_a_command_line_word_and_every_config_key_its_flag():
    assert set(COMMAND_WORDS) == set(PYTHON_WORDS)
    for flag, section, key, _ in RUN_OPTIONS:
        assert command_words(f"{section}.{key}", "x") == f"{flag} x"
        assert python_words(f"{section}.{key}", "x") == f"{section}.{key}: x"
    assert CONFIG_FLAGS["model.tied"] == "--tied"
    assert command_words("data.scale", "none") == "data.scale: none"  # no flag: as a --config file says it


def _raised_texts(tree: ast.AST) -> list[tuple[int, str]]:
    """The literal text of every `raise SomethingError(...)` in a module, by line."""
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    texts.append((part.lineno, part.value))
    return texts


def test_no_library_error_names_a_flag_or_a_command():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "cli.py" and path.parent == SRC:
            continue
        for line, text in _raised_texts(ast.parse(path.read_text())):
            if FLAG.search(text) or COMMAND.search(text):
                found.append(f"{path.relative_to(SRC)}:{line}: {text}")
    assert found == []
    assert _raised_texts(ast.parse('raise ConfigError(f"use --engine {x}")')) != []  # the scan sees f-strings


def test_the_command_line_renders_a_diverged_runs_error_too(monkeypatch, capsys):
    from aelab.errors import DivergenceError

    def diverge(args):
        raise DivergenceError(template="diverged in {folder}; try {train.learning_rate:1e-3}", folder="r")

    monkeypatch.setattr(cli, "command_datasets", diverge)
    assert main(["datasets"]) == cli.EXIT_DIVERGED
    assert capsys.readouterr().err == "aelab: diverged: diverged in r; try --lr 1e-3\n"
