"""The `aelab` command line: a thin layer that builds configs and calls the Python API.

User mistakes print one line, `aelab: error: ...`, and exit 2; tracebacks are for our bugs.
A run that diverges (NaN, Inf or exploding loss) prints one line and exits 4.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from aelab import __version__
from aelab.config import DEFAULT_VAL_FRACTION, RunConfig, option_name, parse_field
from aelab.errors import (
    AelabError,
    ConfigError,
    DivergenceError,
    RunFolderError,
    SetupFindingsError,
    python_words,
)

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_FINDINGS = 3  # --strict: the doctor found an error-level problem


# (section, key, help) for every option of a RunConfig; its flag is `--` + the field's name
# outside Python (`aelab.config.option_name`: the alias table the grid reads too).
RUN_OPTION_HELP: list[tuple[str, str, str]] = [
    ("data", "name", "dataset name, one of `aelab datasets`"),
    ("data", "path", "your own images: a .npy/.npz file or a folder of PNG/JPEG files"),
    ("data", "data_dir", "a folder already holding a dataset's standard files"),
    ("data", "binarize", "none, threshold or bernoulli (fresh draw each epoch)"),
    ("data", "threshold", "threshold for --binarize threshold"),
    ("data", "val_fraction", "share of your own images (--data-path) held out for validation"),
    ("data", "train_limit", "use only the first N training images"),
    ("data", "val_limit", "use only the first N validation images"),
    ("model", "kind", "dense or conv"),
    ("model", "hidden_dims", "hidden sizes (dense) or channels (conv), e.g. 100 or 128,64"),
    ("model", "latent_dim", "code size"),
    ("model", "activation", "hidden activation: sigmoid, relu, leaky_relu, elu, selu, gelu, tanh, linear"),
    ("model", "code_activation", "activation of the code layer (default: --activation)"),
    ("model", "output_activation", "output activation, softmax allowed"),
    ("model", "init", "weight init: glorot_uniform, glorot_normal, he_uniform, he_normal, torch_default"),
    (
        "model",
        "variational",
        "a variational autoencoder: Gaussian codes, trained on the negative ELBO (--vae alone: true; see --beta)",
    ),
    (
        "train",
        "loss",
        "the likelihood: bce, mse, mae, cb; with a learned scale gaussian, gaussian-pixel, laplace, "
        "laplace-pixel; or beta (see aelab loss)",
    ),
    ("train", "optimizer", "adam, sgd, rmsprop, adadelta or adagrad"),
    ("train", "learning_rate", "learning rate"),
    ("train", "momentum", "momentum for sgd and rmsprop; the other optimizers have none"),
    ("train", "weight_decay", "L2 weight decay"),
    ("train", "batch_size", "batch size"),
    ("train", "epochs", "number of epochs"),
    ("train", "seed", "random seed (init, data order, binarisation)"),
    ("train", "patience", "stop after N epochs without a better validation loss"),
    ("train", "device", "auto, cpu or cuda"),
    (
        "train",
        "threads",
        "CPU threads for torch: N; auto (default: 1 for small steps, else every core; the same weights "
        "whatever else runs); or load (fewer when other programs keep the cores busy: faster on a shared "
        "machine, but the weights then depend on that load). A resume reuses the run's count",
    ),
    ("train", "engine", "auto, autograd or fast (hand-written dense step)"),
    (
        "train",
        "noise",
        "denoising: corrupt the inputs (not the targets), fresh each step: gaussian:SIGMA, mask:SHARE "
        "or salt_pepper:SHARE, e.g. gaussian:0.5 (clipped to the data's range); none (default)",
    ),
    (
        "train",
        "sparsity",
        "sparse code: l1 (weight 1e-4), l1:WEIGHT, kl:RHO (sigmoid codes, weight 1e-2) or kl:RHO:WEIGHT; "
        "none (default)",
    ),
    ("train", "contractive", "contractive: weight of the encoder Jacobian's squared Frobenius norm (0: off)"),
    ("train", "beta", "VAE: the KL term's weight (1: the ELBO; beta-VAE above 1)"),
    ("train", "kl_warmup_epochs", "VAE: raise the KL weight linearly to beta over N epochs"),
    ("train", "free_bits", "VAE: nats per latent dimension of KL left unpenalised"),
]
# (flag, section, key, help) for every option of a RunConfig. Every value is parsed by
# `aelab.config.parse_field`, as grid values are.
RUN_OPTIONS: list[tuple[str, str, str, str]] = [
    (f"--{option_name(section, key)}", section, key, text) for section, key, text in RUN_OPTION_HELP
]


# How the command line names what an error tells the user to change: a config key by its flag
# ("--engine auto"), the Python API's parameters and calls (aelab.errors.PYTHON_WORDS) by the
# flags and commands that do the same. `command_words` renders an AelabError's template.
CONFIG_FLAGS = {f"{section}.{key}": flag for flag, section, key, _ in RUN_OPTIONS} | {"model.tied": "--tied"}
COMMAND_WORDS = {
    "out": "--out",
    "overwrite": "--overwrite",
    "extend": "--extend",
    "grid": "--grid",
    "train": "`aelab train --out`",
    "retrain": "`aelab train --out {value} --overwrite` and your options",
    "resume": "`aelab train --resume {value}`",
    "run_sweep": "`aelab compare --out {value}`",
    "resume_sweep": "`aelab compare --out {value}` alone",
}


def command_words(name: str, value: str | None = None) -> str:
    """A setting as the command line names it: "--engine auto", "--overwrite"; a config key
    with no flag as a --config file names it ("data.scale: auto")."""
    if name in COMMAND_WORDS:
        return COMMAND_WORDS[name].format(value=value)
    flag = CONFIG_FLAGS.get(name)
    if flag is None:
        return python_words(name, value)
    return flag if value is None else f"{flag} {value}"


# What --help shows as each run option's value (else the config key in capitals).
METAVARS = {
    "--dataset": "NAME",
    "--data-path": "PATH",
    "--data-dir": "DIR",
    "--binarize": "MODE",
    "--threshold": "T",
    "--val-fraction": "F",
    "--train-limit": "N",
    "--val-limit": "N",
    "--model": "KIND",
    "--hidden": "DIMS",
    "--latent": "N",
    "--activation": "NAME",
    "--code-activation": "NAME",
    "--output-activation": "NAME",
    "--init": "NAME",
    "--loss": "NAME",
    "--optimizer": "NAME",
    "--lr": "RATE",
    "--momentum": "M",
    "--weight-decay": "W",
    "--batch-size": "N",
    "--epochs": "N",
    "--seed": "N",
    "--patience": "N",
    "--device": "DEVICE",
    "--threads": "N",
    "--engine": "ENGINE",
    "--noise": "KIND:LEVEL",
    "--sparsity": "KIND[:...]",
    "--contractive": "WEIGHT",
    "--beta": "BETA",
    "--kl-warmup-epochs": "N",
    "--free-bits": "NATS",
    "--vae": "BOOL",
}
# --help's words for run options whose config default is None.
NONE_DEFAULTS = {
    "val_fraction": f"{DEFAULT_VAL_FRACTION:g}",
    "train_limit": "all",
    "val_limit": "all",
    "patience": "never stop early",
}


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class CommandParser(argparse.ArgumentParser):
    """argparse with whole option names only (no prefix matching: `--data` is not taken for
    `--dataset`) and one-line errors, `aelab: error: ...` and exit 2, that name the help."""

    def __init__(self, **kwargs: Any) -> None:
        self.option_names: list[str] = []
        self.command_parsers: dict[str, CommandParser] = {}
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)
        # argparse takes "-1e-3" and "-inf" for options ("--lr: expected one argument"); every
        # number is a value here, to be judged by the config's checks.
        self._negative_number_matcher = NEGATIVE_NUMBER

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*names, **kwargs)
        self.option_names.extend(action.option_strings)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"aelab: error: {message} (see `{self.prog} --help`)\n")

    def unknown_arguments(self, extras: list[str]) -> str:
        """The message for arguments this parser does not know: the options that start like
        the first unknown one, or the closest names."""
        first = next((extra for extra in extras if extra.startswith("-")), None)
        if first is None:
            return f"unexpected argument {extras[0]!r}"
        name = first.partition("=")[0]
        longs = [option for option in self.option_names if option.startswith("--")]
        similar = [option for option in longs if option.startswith(name)] or difflib.get_close_matches(name, longs)
        if not similar:
            return f"{self.prog} has no option {name}"
        return f"{self.prog} has no option {name}; did you mean {_one_of(similar)}?"


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _default_text(value: Any, key: str) -> str | None:
    if value is None:
        return NONE_DEFAULTS.get(key)
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="a YAML file with data/model/train sections; flags override it"
    )
    defaults = RunConfig()
    for flag, section, key, text in RUN_OPTIONS:
        default = _default_text(getattr(getattr(defaults, section), key), key)
        if default is not None and "(default:" not in text:
            text = f"{text} (default: {default})"
        # A true-or-false field given alone means true (`--vae`); it also takes a value (`--vae false`).
        switch = {"nargs": "?", "const": "true"} if isinstance(getattr(getattr(defaults, section), key), bool) else {}
        parser.add_argument(
            flag,
            dest=f"opt_{key}",
            # Values stay text here: apply_run_flags parses them as grid values are parsed.
            type=str,
            default=None,
            metavar=METAVARS.get(flag, key.upper()),
            help=text,
            **switch,
        )
    parser.add_argument("--raw-pixels", action="store_true", help="keep 0..255 values (the forgot-to-divide mistake)")
    parser.add_argument("--tied", action="store_true", default=None, help="dense decoder reuses encoder weights")


def raw_config_from_args(args: argparse.Namespace, kind: str = "config") -> dict[str, Any]:
    """The --config file's contents (sections data, model, train as dicts, and whatever else
    the file holds), with every run-option flag given on the command line laid over them."""
    raw = config_file_from_args(args, kind)
    raw = {**raw, **{section: dict(raw[section]) for section in ("data", "model", "train")}}
    apply_run_flags(raw, args)
    return raw


def config_file_from_args(args: argparse.Namespace, kind: str = "config") -> dict[str, Any]:
    """The --config file's contents as they are, sections data, model, train as dicts ({}
    without a file)."""
    from aelab.runs import read_config_file

    raw: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for section in ("data", "model", "train"):
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{kind} section {section!r} must be a mapping")
        raw[section] = dict(value)
    return raw


def given_run_flags(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    """The run-option flags given on the command line, by the (section, key) each sets, as
    they were typed: {("train", "loss"): "--loss mae"}."""
    given = {
        (section, key): f"{flag} {getattr(args, f'opt_{key}')}"
        for flag, section, key, _ in RUN_OPTIONS
        if getattr(args, f"opt_{key}") is not None
    }
    if args.raw_pixels:
        given["data", "scale"] = "--raw-pixels"
    if args.tied:
        given["model", "tied"] = "--tied"
    return given


def run_config_from_args(args: argparse.Namespace) -> Any:
    """The RunConfig a command line describes: the --config file, then each flag given."""
    from aelab.config import RunConfig

    return RunConfig.from_dict(raw_config_from_args(args))


def apply_run_flags(raw: dict[str, Any], args: argparse.Namespace) -> None:
    """Lay the run-option flags given on the command line over config sections `raw`."""
    for flag, section, key, _ in RUN_OPTIONS:
        text = getattr(args, f"opt_{key}")
        if text is None:
            continue
        try:
            raw[section][key] = parse_field(section, key, text)
        except ValueError as expected:
            if str(expected) == "a list of integers":
                raise ConfigError(f"{flag} takes comma-separated integers like 100 or 128,64, got {text!r}") from None
            raise ConfigError(f"{flag} must be {expected}, got {text!r}") from None
    if args.raw_pixels:
        raw["data"]["scale"] = "none"
    if args.tied:
        raw["model"]["tied"] = True
    if raw["data"].get("path") and "name" not in raw["data"]:
        raw["data"]["name"] = "folder" if Path(raw["data"]["path"]).is_dir() else "array"


def flag_setting(args: argparse.Namespace) -> Callable[[str, str | None], str]:
    """How the doctor's fixes name a setting for a run started by this command line: by its
    flag ("--output-activation sigmoid"); data.scale "auto" by what undoes the raw pixels
    (drop --raw-pixels, or the --config file's data.scale)."""

    def setting(key: str, value: str | None = None) -> str:
        if key == "data.scale" and value == "auto":
            if args.raw_pixels:
                return "drop --raw-pixels"
            return f"data.scale: auto in {args.config}" if args.config else "data.scale: auto"
        return command_words(key, value)

    return setting


def command_train(args: argparse.Namespace) -> int:
    from aelab.doctor import Doctor
    from aelab.train import train

    if args.resume:
        return command_resume(args)
    config = run_config_from_args(args)
    out = args.out or f"runs/{config.train.loss}-{config.model.activation}-{datetime.now():%Y%m%d-%H%M%S}"
    args.interrupted_folder = ("train", Path(out))
    doctor = Doctor(strict=args.strict, setting=flag_setting(args))
    try:
        result = train(
            config,
            out,
            progress=not args.quiet,
            overwrite=args.overwrite,
            callbacks=[doctor],
            loggers=args.logger,
            report=not args.no_report,
        )
    except SetupFindingsError as error:
        print(
            f"aelab: stopped before the first training step: --strict and the doctor's set-up checks found "
            f"{len(error.findings)} error(s); nothing was trained (details: aelab doctor {out})",
            file=sys.stderr,
        )
        for finding in error.findings:
            print(f"  {finding.line()}", file=sys.stderr)
        return EXIT_FINDINGS
    summary = validation_summary(config.train.loss, result.history[-1])
    print(f"finished {count(len(result.history), 'epoch')}: {summary}")
    print(f"run folder: {result.run_dir}")
    return finish_train_command(args, result.run_dir, doctor.findings, result.extras.get("report"))


def count(number: int, noun: str) -> str:
    """ "1 epoch", "2 epochs"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def validation_summary(loss: str, row: dict[str, Any]) -> str:
    """An epoch's validation numbers in one line: the training loss (with its floor and the
    excess over it where the floor is not zero), then MSE and BCE unless the loss is one."""
    if "val_elbo" in row:  # a VAE: every term in nats per image
        text = f"val -ELBO {-row['val_elbo']:.2f} nats per image (recon {row['val_recon']:.2f}, KL {row['val_kl']:.2f})"
        if "val_nll" in row:
            text += f"; IWAE NLL {row['val_nll']:.2f} (K={row['val_nll_samples']})"
        if math.isfinite(row.get("val_bpd", math.nan)):
            text += f"; {row['val_bpd']:.4f} bits per dimension"
        return f"{text}; {row['val_active_units']} active units; val mse {row['val_mse']:.4f}"
    parts = [f"val {loss} {row['val_loss']:.4f}{_floor_text(row['val_loss'], row.get('val_loss_excess'))}"]
    if loss != "mse":
        parts.append(f"val mse {row['val_mse']:.4f}")
    if loss != "bce":
        parts.append(f"val bce {row['val_bce']:.4f}{_floor_text(row['val_bce'], row.get('val_bce_excess'))}")
    return "; ".join(parts)


def _floor_text(value: float, excess: float | None) -> str:
    if excess is None or not math.isfinite(excess) or abs(value - excess) < 5e-5:
        return ""  # no floor known, or a floor of zero: the value is the excess
    return f" (floor {value - excess:.4f}, excess {excess:.4f})"


def finish_train_command(
    args: argparse.Namespace, run_dir: Path, findings: list[Any], report: Path | None = None
) -> int:
    """What `aelab train` and `aelab train --resume` do after training: the report (written
    here unless training wrote it, `report`), the doctor's findings one line each, and
    --strict's exit status."""
    if report is None and not args.no_report:
        from aelab.report import render_report

        report = render_report(run_dir)
    if report is not None:
        print(f"report: {report}")
    if findings:
        print(f"doctor: {count(len(findings), 'finding')}; details: aelab doctor {run_dir}")
        for finding in findings:
            print(f"  {finding.line()}")
    if args.strict and any(finding.severity == "error" for finding in findings):
        return EXIT_FINDINGS
    return 0


def command_doctor(args: argparse.Namespace) -> int:
    from aelab.doctor import recheck_run
    from aelab.doctor.check import listed, sweep_runs
    from aelab.findings import FINDINGS_FILE, compare_findings, read_findings
    from aelab.runs import read_status

    run_dir = Path(args.run_dir)
    runs = sweep_runs(run_dir)
    if runs is not None:
        inside = f": {listed(runs)}" if runs else " (it holds none yet)"
        raise RunFolderError(
            f"{run_dir} is a sweep folder, not a run folder; run `aelab doctor` on one of its runs{inside}"
        )
    saved = read_findings(run_dir)
    if args.recheck or not (run_dir / FINDINGS_FILE).exists():
        existed = (run_dir / FINDINGS_FILE).exists()
        before, saved = saved, recheck_run(run_dir)
        if not existed:
            print(f"{run_dir}: checked from the folder (model, config, data); wrote {FINDINGS_FILE}")
        else:
            changes = compare_findings(before, saved)
            counts = (
                f"{len(changes.added)} added, {len(changes.removed)} removed, {len(changes.changed)} changed severity"
            )
            print(
                f"{run_dir}: checked again from the folder (model, config, data); {FINDINGS_FILE} updated: "
                + (counts if changes else "the same problems as before")
            )
            for line in changes.lines():
                print(f"  {line}")
    status = read_status(run_dir)
    if status.get("state") != "finished":
        message = status.get("message")
        print(f"{run_dir}: not a finished run (status: {status.get('state')}{f'; {message}' if message else ''})")
    if not saved:
        print(f"{run_dir}: no findings")
    for finding in saved:
        when = "before training" if finding.epoch is None else f"since epoch {finding.epoch}"
        print(f"\n{finding.severity.upper()} {finding.id} ({when}): {finding.title}")
        print(f"  why: {finding.explanation}")
        if finding.fix:
            print(f"  fix: {finding.fix}")
        if finding.evidence:
            numbers = ", ".join(f"{key}={_show(value)}" for key, value in finding.evidence.items())
            print(f"  evidence: {numbers}")
    if args.strict and any(finding.severity == "error" for finding in saved):
        return EXIT_FINDINGS
    return 0


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- compare, report, loss (issue 5)


def command_compare(args: argparse.Namespace) -> int:
    from aelab.report import render_report
    from aelab.runs import SWEEP_FILE
    from aelab.sweep import SweepSpec, read_sweep, run_sweep

    raw = raw_config_from_args(args, kind="sweep file")
    runner = sweep_backend(args, raw)
    spec = SweepSpec.from_dict({**raw, "grid": sweep_grid(args)})
    out = args.out or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}"
    recorded = read_sweep(out)
    if recorded is not None and not args.grid and not given_flags(args):
        spec = recorded.specs[0]  # `aelab compare --out DIR` alone: the sweep DIR holds, finished
        print(f"sweep {out}: continuing it with its {SWEEP_FILE}", flush=True)
    args.interrupted_folder = ("compare", Path(out))
    result = run_sweep(
        spec,
        out,
        progress=not args.quiet,
        echo=lambda line: print(line, flush=True),
        extend=args.extend,
        backend=runner,
        loggers=args.logger,
    )
    print(f"results: {result.out / 'results.csv'}")
    if not args.no_report:
        print(f"report: {render_report(result.out, evaluations=result.evaluations)}")
    return 0


# Keys of a sweep file that choose where its runs train, not what they are.
BACKEND_KEYS = ("backend", "address")


def sweep_backend(args: argparse.Namespace, raw: dict[str, Any]) -> Any:
    """The backend `aelab compare` trains with: --backend and --address, else the sweep file's
    `backend:` and `address:` (taken out of `raw`), else local. Built here, so that a backend
    that cannot be used (ray without Ray installed) is refused before anything is written."""
    from aelab.sweep import get_backend

    from_file = {key: raw.pop(key) for key in BACKEND_KEYS if key in raw}
    for key, value in from_file.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"sweep file {args.config}: {key} must be a name, like {key}: ray; got {value!r}")
    name = args.backend or from_file.get("backend", "local")
    address = args.address or from_file.get("address")
    if address is not None and name != "ray":
        where = "--address" if args.address else f"address: in {args.config}"
        raise ConfigError(f"{where} names a Ray cluster; add --backend ray, or drop it")
    return get_backend(name, **({"address": address} if address else {}))


def sweep_grid(args: argparse.Namespace) -> dict[str, Any] | None:
    """The grid `aelab compare` runs: the sweep file's axes, each --grid axis added or in place
    of the file's axis for that field (said in a warning); None for the default grid. Refuses
    what `aelab.sweep.check_sweep_file` refuses and a flag that an axis would replace in every
    run (--loss mae beside --grid loss=...)."""
    from aelab.sweep import check_sweep_file, parse_grid, resolve_key

    sweep_file = config_file_from_args(args, kind="sweep file")
    if args.config:
        check_sweep_file(sweep_file, args.config)
    file_grid = sweep_file.get("grid") or {}
    flag_grid = parse_grid(args.grid or [])
    replaced = {resolve_key(key): key for key in flag_grid}
    grid: dict[str, Any] = {}
    for key, values in file_grid.items():
        if resolve_key(key) in replaced:
            log.warning("--grid %s=... replaces the axis %s of %s", replaced[resolve_key(key)], key, args.config)
        else:
            grid[key] = values
    grid.update(flag_grid)
    flags = given_run_flags(args)
    for key in grid:
        section, name = resolve_key(key)
        if (section, name) in flags:
            raise ConfigError(
                f"{flags[section, name]} is replaced by the grid axis {key} in every run; drop {flags[section, name]} "
                f"or the axis"
            )
        if name in sweep_file[section]:  # only a --grid axis: check_sweep_file refused the file's own
            fixed = f"{section}.{name}: {sweep_file[section][name]!r}"
            log.warning("the grid axis %s replaces %s of %s in every run", key, fixed, args.config)
    return grid or None


def command_report(args: argparse.Namespace) -> int:
    from aelab.report import render_report

    print(f"report: {render_report(args.path, args.out)}")
    return 0


def parse_numbers(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers like 0.5,0.3; got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{flag} values must lie in [0, 1] (divide 0..255 pixels by 255); got {text!r}")
    return values


def command_loss(args: argparse.Namespace) -> int:
    from aelab.report.loss_curves import format_loss_table, plot_format, plot_loss_curves

    if args.plot:
        plot_format(args.plot)  # a name it cannot write fails before anything is printed
    if args.target is None:
        if args.html is None:
            raise ConfigError("give --target (and --pred or --plot FILE), or --html FILE for the loss explorer")
        if args.pred or args.plot:
            raise ConfigError("--pred and --plot need --target")
        return write_loss_explorer(args.html, None, None)
    targets = parse_numbers(args.target, "--target")
    predictions = parse_numbers(args.pred, "--pred") if args.pred else None
    if args.html is not None:
        write_loss_explorer(args.html, targets, predictions)
        if predictions is None and not args.plot:
            return 0
    if predictions is not None:
        if len(targets) == 1 and len(predictions) > 1:
            targets = targets * len(predictions)
        if len(predictions) != len(targets):
            raise ConfigError(f"{len(targets)} targets but {len(predictions)} predictions; give as many of each")
        print(format_loss_table(targets, predictions))
    if args.plot:
        plot_loss_curves(targets, args.plot, predictions)
        print(f"curves: {args.plot}")
    if predictions is None and not args.plot:
        raise ConfigError("give --pred to compute the losses, or --plot FILE to draw the curves")
    return 0


def write_loss_explorer(path: str, targets: list[float] | None, predictions: list[float] | None) -> int:
    """`aelab loss --html FILE`: the explorer page, its sliders at the first target and prediction given."""
    from aelab.report.loss_explorer import DEFAULT_PREDICTION, DEFAULT_TARGET, write_explorer

    target = targets[0] if targets else DEFAULT_TARGET
    prediction = predictions[0] if predictions else DEFAULT_PREDICTION
    try:
        write_explorer(path, target, prediction)
    except OSError as error:
        raise ConfigError(f"cannot write the loss explorer to {path}: {error.strerror or error}") from None
    print(f"loss explorer: {path}")
    return 0


def add_logger_option(parser: argparse.ArgumentParser) -> None:
    from aelab.callbacks import LOGGERS

    parser.add_argument(
        "--logger",
        action="append",
        default=[],
        metavar="NAME",
        help=f"also write each epoch's metrics with this logger (one of: {', '.join(LOGGERS)}; repeatable); "
        "metrics.jsonl is always written",
    )
    parser.add_argument(
        "--tensorboard",
        action="append_const",
        const="tensorboard",
        dest="logger",
        help="the same as --logger tensorboard: event files in each run folder's tensorboard/ "
        "(then: tensorboard --logdir FOLDER)",
    )


def add_compare_commands(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="train a grid of runs (default: losses bce, mse, mae, cb x activations sigmoid, relu) and report",
        description="Train one run per grid point into OUT/NAME (finished runs are skipped on a rerun), write "
        "OUT/results.csv, OUT/results.json and OUT/report.html. Run options and --config set the base config of "
        "every run; a --config file may also hold `grid: {KEY: [VALUES]}`. An axis of the default grid that "
        "you fix (--loss mse) is left out of it.",
    )
    add_run_options(compare)
    compare.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V,V",
        help="grid axes, e.g. loss=bce,mse activation=sigmoid,relu lr=1e-2,1e-3 seed=0,1,2 hidden=[100],[128,64]",
    )
    compare.add_argument(
        "--out",
        metavar="DIR",
        help="sweep folder (default runs/compare-TIME); an existing one, with no run options or --grid, is "
        "finished as it was made",
    )
    compare.add_argument(
        "--extend",
        action="store_true",
        help="add this grid's runs to the existing sweep folder --out (else a sweep made with another grid is refused)",
    )
    compare.add_argument("--no-report", action="store_true", help="skip report.html")
    compare.add_argument(
        "--backend",
        metavar="NAME",
        help="where the runs train: local (this process, the default) or ray (a Ray cluster: pip install "
        '"aelab[ray]"); a sweep file may say backend: ray',
    )
    compare.add_argument(
        "--address",
        metavar="ADDR",
        help="with --backend ray, the cluster to use (auto, HOST:6379, ray://HOST:10001; default RAY_ADDRESS, "
        "else a local Ray on this machine's cores)",
    )
    add_logger_option(compare)
    compare.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    compare.set_defaults(handler=command_compare)

    report = commands.add_parser("report", help="re-render report.html from a run or sweep folder")
    report.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    report.add_argument("--out", metavar="FILE", help="where to write (default RUN_OR_SWEEP_DIR/report.html)")
    report.set_defaults(handler=command_report)

    loss = commands.add_parser("loss", help="every loss, its floor and excess for given targets and predictions")
    loss.add_argument("--target", help="comma-separated targets in [0, 1], e.g. 0.5,0.3,0.5,0.9")
    loss.add_argument("--pred", help="comma-separated predictions (pixels; for cb the cb mean), e.g. 0.1,0.3,0.5,0.8")
    loss.add_argument(
        "--plot", metavar="FILE", help="draw each loss against the prediction for the targets into a .png, .svg or .pdf"
    )
    loss.add_argument(
        "--html",
        metavar="FILE",
        help="write the interactive loss explorer, a self-contained page (its sliders start at the first "
        "--target and --pred)",
    )
    loss.set_defaults(handler=command_loss)


def command_datasets(args: argparse.Namespace) -> int:
    from aelab.data import DATASETS

    rows = [
        (spec.name, "x".join(map(str, spec.shape)) if spec.shape else "any", spec.description, spec.source)
        for spec in DATASETS.values()
    ]
    widths = [max(len(row[i]) for row in [("name", "shape", "", ""), *rows]) for i in range(2)]
    print(f"{'name':<{widths[0]}}  {'shape':<{widths[1]}}  description (source)")
    for name, shape, description, source in rows:
        print(f"{name:<{widths[0]}}  {shape:<{widths[1]}}  {description} ({source})")
    return 0


def given_flags(args: argparse.Namespace) -> list[str]:
    """The names of the flags given that set the run's config (`given_run_flags`), and --config."""
    typed = [text.split(" ", 1)[0] for text in given_run_flags(args).values()]
    return typed + (["--config"] if args.config else [])


def refuse_in_memory(run_dir: Path, call: str) -> None:
    """One line, before any work, when `run_dir` was trained on images passed from Python: the
    command line has no way to pass them again."""
    from aelab.data import IN_MEMORY
    from aelab.data.datasets import short_fingerprint
    from aelab.runs import load_config

    try:
        data = load_config(run_dir).data
    except AelabError:
        return  # no readable config: the command says what is wrong with the folder
    if data.name == IN_MEMORY:
        raise ConfigError(
            f"{run_dir} was trained on images passed from Python ({short_fingerprint(data.fingerprint)}), "
            f"which are not saved in the folder, so the command line cannot load them; from Python: {call}"
        )


def command_resume(args: argparse.Namespace) -> int:
    from aelab.runs import load_config
    from aelab.train import resume

    given = given_flags(args)
    given += [flag for flag, value in (("--out", args.out), ("--overwrite", args.overwrite)) if value]
    if given:
        raise ConfigError(
            f"--resume continues a run with the config in its folder; drop {', '.join(given)} "
            "(start a new run to change them)"
        )
    args.interrupted_folder = ("train", Path(args.resume))
    refuse_in_memory(Path(args.resume), f"aelab.resume({args.resume!r}, data=images)")
    result = resume(args.resume, progress=not args.quiet, loggers=args.logger)
    loss = load_config(Path(args.resume)).train.loss
    start = result.extras.get("resumed_from_epoch")
    if start == len(result.history):
        print(f"{args.resume} had already finished; nothing to resume")
    print(
        f"finished {count(len(result.history), 'epoch')} ({len(result.history) - start} after resuming): "
        f"{validation_summary(loss, result.history[-1])}"
    )
    print(f"run folder: {result.run_dir}")
    # The doctor's monitors follow a run from its start; for a resumed one, check the result
    # from the folder alone, as `aelab doctor --recheck` does.
    from aelab.doctor import recheck_run

    return finish_train_command(args, result.run_dir, recheck_run(result.run_dir))


# --- explain (issue 14)

# The data options `aelab explain` takes: the experiments choose binarisation and scaling themselves.
EXPLAIN_DATA_KEYS = ("name", "path", "data_dir", "val_fraction", "train_limit", "val_limit")


def add_explain_command(commands: Any) -> None:
    from aelab.explain import QUESTIONS

    explain = commands.add_parser(
        "explain",
        help="answer the classic autoencoder questions (blob, keras, floor, softmax) with experiments on your data",
        description="Run the experiments behind each question as sweeps in OUT/QUESTION/NAME (a rerun reuses "
        "finished runs and finishes interrupted ones), judge every claim of its thread on the numbers measured, "
        "and write OUT/answers.md, OUT/answers.html and OUT/answers.json.",
    )
    explain.add_argument(
        "questions", nargs="*", metavar="QUESTION", help=f"any of {', '.join(QUESTIONS)} (default: all four)"
    )
    for flag, section, key, text in RUN_OPTIONS:
        if section == "data" and key in EXPLAIN_DATA_KEYS:
            metavar = METAVARS.get(flag, key.upper())
            explain.add_argument(flag, dest=f"opt_{key}", type=str, default=None, metavar=metavar, help=text)
    explain.add_argument("--out", metavar="DIR", default="runs/explain", help="output folder (default runs/explain)")
    explain.add_argument("--quick", action="store_true", help="one seed and fewer epochs (a 2-minute budget)")
    explain.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    explain.set_defaults(handler=command_explain)


def command_explain(args: argparse.Namespace) -> int:
    from aelab.explain import explain, short_answer

    raw: dict[str, Any] = {}
    words = ["aelab explain", *args.questions]
    for flag, section, key, _ in RUN_OPTIONS:
        text = getattr(args, f"opt_{key}", None)
        if section != "data" or key not in EXPLAIN_DATA_KEYS or text is None:
            continue
        words.append(f"{flag} {text}")
        try:
            raw[key] = parse_field(section, key, text)
        except ValueError as expected:
            raise ConfigError(f"{flag} must be {expected}, got {text!r}") from None
    if raw.get("path") and "name" not in raw:
        raw["name"] = "folder" if Path(raw["path"]).is_dir() else "array"
    data = RunConfig.from_dict({"data": raw}).data
    args.interrupted_folder = ("explain", Path(args.out))
    words += ["--quick"] * args.quick + [f"--out {args.out}"]
    result = explain(
        args.questions,
        args.out,
        data=data,
        quick=args.quick,
        echo=None if args.quiet else (lambda line: print(line, flush=True)),
        command=" ".join(words),
    )
    for answer in result.answers:
        print("\n".join(short_answer(answer)))
    for path in result.pages.values():
        print(f"wrote {path}")
    return 0


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="aelab", description="A lab for image autoencoders: train, compare losses, diagnose blobs."
    )
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train_parser = commands.add_parser("train", help="train one autoencoder into a run folder")
    add_run_options(train_parser)
    train_parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an unfinished run folder from its last checkpoint"
    )
    train_parser.add_argument("--out", metavar="DIR", help="run folder to write (default runs/LOSS-ACTIVATION-TIME)")
    train_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier run in --out (refused for a folder holding anything aelab did not "
        "write, a sweep folder, or a run still training)",
    )
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    train_parser.add_argument(
        "--strict", action="store_true", help=f"exit {EXIT_FINDINGS} when the doctor finds an error-level problem"
    )
    train_parser.add_argument("--no-report", action="store_true", help="skip the run's report.html")
    add_logger_option(train_parser)
    train_parser.set_defaults(handler=command_train)

    doctor_parser = commands.add_parser("doctor", help="list what is wrong with a run, why, and what to change")
    doctor_parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `aelab train`")
    doctor_parser.add_argument(
        "--recheck", action="store_true", help="run the checks again from the folder (model, config, data)"
    )
    doctor_parser.add_argument(
        "--strict", action="store_true", help=f"exit {EXIT_FINDINGS} when there is an error-level finding"
    )
    doctor_parser.set_defaults(handler=command_doctor)

    datasets_parser = commands.add_parser("datasets", help="list the datasets aelab knows")
    datasets_parser.set_defaults(handler=command_datasets)
    add_compare_commands(commands)
    add_explain_command(commands)
    parser.command_parsers = commands.choices
    return parser


EXIT_DIVERGED = 4  # training diverged (NaN, Inf or exploding loss); 3 is the doctor's --strict


def interrupted_hint(args: argparse.Namespace) -> str:
    """What to type to carry on after Ctrl-C, from what the command had written by then."""
    from aelab.runs import CONFIG_FILE, SWEEP_FILE

    command, folder = getattr(args, "interrupted_folder", (None, None))
    if command == "train" and (folder / CONFIG_FILE).exists():
        return f"; continue the run with `aelab train --resume {folder}`"
    if command == "compare" and (folder / SWEEP_FILE).exists():
        return f"; finish the sweep with `aelab compare --out {folder}`"
    if command == "explain":
        return f"; run the same command again to finish: the runs done in {folder} are kept"
    if command is not None:
        return f"; nothing was trained into {folder} yet, run the same command again to start"
    return ""


class LineFormatter(logging.Formatter):
    """Log records as the CLI's other lines: `aelab: warning: ...`."""

    def format(self, record: logging.LogRecord) -> str:
        return f"aelab: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = parser.command_parsers.get(args.command, parser)
        command.error(command.unknown_arguments(extras))
    if args.command is None:  # bare `aelab`: what it can do
        parser.print_help()
        return 0
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        return args.handler(args)
    except DivergenceError as error:
        print(f"aelab: diverged: {error.render(command_words)}", file=sys.stderr)
        return EXIT_DIVERGED
    except AelabError as error:
        print(f"aelab: error: {error.render(command_words)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"aelab: interrupted{interrupted_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`aelab ... | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
