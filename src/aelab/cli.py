"""The `aelab` command line: a thin layer that builds configs and calls the Python API.

User mistakes print one line, `aelab: error: ...`, and exit 2; tracebacks are for our bugs.
A run that diverges (NaN, Inf or exploding loss) prints one line and exits 4.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aelab.errors import AelabError, ConfigError, DivergenceError

EXIT_USER_ERROR = 2
EXIT_FINDINGS = 3  # --strict: the doctor found an error-level problem


def parse_threads(text: str) -> int | str:
    """--threads: '2' -> 2; 'auto', 'load' and anything else as given, for train.threads to check."""
    text = text.strip()
    return int(text) if text.lstrip("+-").isdigit() else text


# (flag, section, key, type, help) for every option of a RunConfig.
RUN_OPTIONS: list[tuple[str, str, str, Callable[[str], Any], str]] = [
    ("--dataset", "data", "name", str, "dataset name (see `aelab datasets`); default mnist-10k"),
    ("--data-path", "data", "path", str, "your own images: a .npy/.npz file or a folder of PNG/JPEG files"),
    ("--data-dir", "data", "data_dir", str, "a folder already holding a dataset's standard files"),
    ("--binarize", "data", "binarize", str, "none, threshold or bernoulli (fresh draw each epoch)"),
    ("--threshold", "data", "threshold", float, "threshold for --binarize threshold"),
    ("--val-fraction", "data", "val_fraction", float, "share of your own images held out for validation"),
    ("--train-limit", "data", "train_limit", int, "use only the first N training images"),
    ("--val-limit", "data", "val_limit", int, "use only the first N validation images"),
    ("--model", "model", "kind", str, "dense or conv"),
    ("--hidden", "model", "hidden_dims", "dims", "hidden sizes (dense) or channels (conv), e.g. 100 or 128,64"),
    ("--latent", "model", "latent_dim", int, "code size"),
    (
        "--activation",
        "model",
        "activation",
        str,
        "hidden activation: sigmoid, relu, leaky_relu, elu, selu, gelu, tanh, linear",
    ),
    ("--code-activation", "model", "code_activation", str, "activation of the code layer (default: --activation)"),
    ("--output-activation", "model", "output_activation", str, "output activation, softmax allowed"),
    (
        "--init",
        "model",
        "init",
        str,
        "weight init: glorot_uniform, glorot_normal, he_uniform, he_normal, torch_default",
    ),
    ("--loss", "train", "loss", str, "bce, mse, mae or cb"),
    ("--optimizer", "train", "optimizer", str, "adam, sgd, rmsprop, adadelta or adagrad"),
    ("--lr", "train", "learning_rate", float, "learning rate"),
    ("--momentum", "train", "momentum", float, "momentum for sgd and rmsprop"),
    ("--weight-decay", "train", "weight_decay", float, "L2 weight decay"),
    ("--batch-size", "train", "batch_size", int, "batch size"),
    ("--epochs", "train", "epochs", int, "number of epochs"),
    ("--seed", "train", "seed", int, "random seed (init, data order, binarisation)"),
    ("--patience", "train", "patience", int, "stop after N epochs without a better validation loss"),
    ("--device", "train", "device", str, "auto, cpu or cuda"),
    (
        "--threads",
        "train",
        "threads",
        parse_threads,
        "CPU threads for torch: N; auto (default: 1 for small steps, else every core; the same weights "
        "whatever else runs); or load (fewer when other programs keep the cores busy: faster on a shared "
        "machine, but the weights then depend on that load). A resume reuses the run's count",
    ),
    ("--engine", "train", "engine", str, "auto, autograd or fast (hand-written dense step); default auto"),
]


def parse_dims(text: str) -> list[int]:
    """'100,50' -> [100, 50]; '' or 'none' -> []."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--hidden takes comma-separated integers like 100 or 128,64, got {text!r}") from None


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="a YAML file with data/model/train sections; flags override it"
    )
    for flag, _, key, kind, text in RUN_OPTIONS:
        parser.add_argument(flag, dest=f"opt_{key}", type=str if kind == "dims" else kind, default=None, help=text)
    parser.add_argument("--raw-pixels", action="store_true", help="keep 0..255 values (the forgot-to-divide mistake)")
    parser.add_argument("--tied", action="store_true", default=None, help="dense decoder reuses encoder weights")


def raw_config_from_args(args: argparse.Namespace, kind: str = "config") -> dict[str, Any]:
    """The --config file's contents (sections data, model, train as dicts, and whatever else
    the file holds), with every run-option flag given on the command line laid over them."""
    from aelab.runs import read_config_file

    raw: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for section in ("data", "model", "train"):
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{kind} section {section!r} must be a mapping")
        raw[section] = dict(value)
    apply_run_flags(raw, args)
    return raw


def run_config_from_args(args: argparse.Namespace) -> Any:
    """The RunConfig a command line describes: the --config file, then each flag given."""
    from aelab.config import RunConfig

    return RunConfig.from_dict(raw_config_from_args(args))


def apply_run_flags(raw: dict[str, Any], args: argparse.Namespace) -> None:
    """Lay the run-option flags given on the command line over config sections `raw`."""
    for _, section, key, kind, _ in RUN_OPTIONS:
        value = getattr(args, f"opt_{key}")
        if value is not None:
            raw[section][key] = parse_dims(value) if kind == "dims" else value
    if args.raw_pixels:
        raw["data"]["scale"] = "none"
    if args.tied:
        raw["model"]["tied"] = True
    if raw["data"].get("path") and "name" not in raw["data"]:
        raw["data"]["name"] = "folder" if Path(raw["data"]["path"]).is_dir() else "array"


def command_train(args: argparse.Namespace) -> int:
    from aelab.doctor import Doctor
    from aelab.train import train

    if args.resume:
        return command_resume(args)
    config = run_config_from_args(args)
    out = args.out or f"runs/{config.train.loss}-{config.model.activation}-{datetime.now():%Y%m%d-%H%M%S}"
    doctor = Doctor()
    result = train(config, out, progress=not args.quiet, overwrite=args.overwrite, callbacks=[doctor])
    last = result.history[-1]
    print(
        f"finished {len(result.history)} epochs: val {config.train.loss} {last['val_loss']:.4f}; "
        f"val mse {last['val_mse']:.4f}, val bce {last['val_bce']:.4f} "
        f"(floor {last['val_bce'] - last['val_bce_excess']:.4f}, excess {last['val_bce_excess']:.4f})"
    )
    print(f"run folder: {result.run_dir}")
    return finish_train_command(args, result.run_dir, doctor.findings)


def finish_train_command(args: argparse.Namespace, run_dir: Path, findings: list[Any]) -> int:
    """What `aelab train` and `aelab train --resume` do after training: the report, the
    doctor's findings one line each, and --strict's exit status."""
    if not args.no_report:
        from aelab.report import render_report

        print(f"report: {render_report(run_dir)}")
    if findings:
        print(f"doctor: {len(findings)} finding(s); details: aelab doctor {run_dir}")
        for finding in findings:
            print(f"  {finding.line()}")
    if args.strict and any(finding.severity == "error" for finding in findings):
        return EXIT_FINDINGS
    return 0


def command_doctor(args: argparse.Namespace) -> int:
    from aelab.doctor import recheck_run
    from aelab.findings import FINDINGS_FILE, read_findings

    run_dir = Path(args.run_dir)
    saved = read_findings(run_dir)
    if args.recheck or not (run_dir / FINDINGS_FILE).exists():
        saved = recheck_run(run_dir)
        print(f"{run_dir}: checked again from the folder (model, config, data)")
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
    from aelab.sweep import SweepSpec, parse_grid, run_sweep

    raw = raw_config_from_args(args, kind="sweep file")
    grid = {**(raw.get("grid") or {}), **parse_grid(args.grid or [])} if args.grid else raw.get("grid")
    spec = SweepSpec.from_dict({**raw, "grid": grid})
    out = args.out or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}"
    result = run_sweep(spec, out, progress=not args.quiet, echo=lambda line: print(line, flush=True))
    print(f"results: {result.out / 'results.csv'}")
    if not args.no_report:
        print(f"report: {render_report(result.out, evaluations=result.evaluations)}")
    return 0


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
    from aelab.loss_curves import format_loss_table, plot_loss_curves

    targets = parse_numbers(args.target, "--target")
    predictions = parse_numbers(args.pred, "--pred") if args.pred else None
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
    compare.add_argument("--out", metavar="DIR", help="sweep folder (default runs/compare-TIME)")
    compare.add_argument("--no-report", action="store_true", help="skip report.html")
    compare.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    compare.set_defaults(handler=command_compare)

    report = commands.add_parser("report", help="re-render report.html from a run or sweep folder")
    report.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    report.add_argument("--out", metavar="FILE", help="where to write (default RUN_OR_SWEEP_DIR/report.html)")
    report.set_defaults(handler=command_report)

    loss = commands.add_parser("loss", help="every loss, its floor and excess for given targets and predictions")
    loss.add_argument("--target", required=True, help="comma-separated targets in [0, 1], e.g. 0.5,0.3,0.5,0.9")
    loss.add_argument("--pred", help="comma-separated predictions (pixels; for cb the cb mean), e.g. 0.1,0.3,0.5,0.8")
    loss.add_argument("--plot", metavar="PNG", help="draw each loss against the prediction for the targets")
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


def command_resume(args: argparse.Namespace) -> int:
    from aelab.runs import load_config
    from aelab.train import resume

    given = [flag for flag, _, key, _, _ in RUN_OPTIONS if getattr(args, f"opt_{key}") is not None]
    others = (("--config", args.config), ("--raw-pixels", args.raw_pixels), ("--tied", args.tied))
    given += [flag for flag, value in (*others, ("--out", args.out), ("--overwrite", args.overwrite)) if value]
    if given:
        raise ConfigError(
            f"--resume continues a run with the config in its folder; drop {', '.join(given)} "
            "(start a new run to change them)"
        )
    result = resume(args.resume, progress=not args.quiet)
    loss = load_config(Path(args.resume)).train.loss
    start = result.extras.get("resumed_from_epoch")
    if start == len(result.history):
        print(f"{args.resume} had already finished; nothing to resume")
    last = result.history[-1]
    print(
        f"finished {len(result.history)} epochs ({len(result.history) - start} after resuming): val {loss} "
        f"{last['val_loss']:.4f}, val mse {last['val_mse']:.4f}, val bce {last['val_bce']:.4f}"
    )
    print(f"run folder: {result.run_dir}")
    # The doctor's monitors follow a run from its start; for a resumed one, check the result
    # from the folder alone, as `aelab doctor --recheck` does.
    from aelab.doctor import recheck_run

    return finish_train_command(args, result.run_dir, recheck_run(result.run_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aelab", description="A lab for image autoencoders: train, compare losses, diagnose blobs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train_parser = commands.add_parser("train", help="train one autoencoder into a run folder")
    add_run_options(train_parser)
    train_parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an unfinished run folder from its last checkpoint"
    )
    train_parser.add_argument("--out", metavar="DIR", help="run folder to write (default runs/LOSS-ACTIVATION-TIME)")
    train_parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder's files")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    train_parser.add_argument(
        "--strict", action="store_true", help=f"exit {EXIT_FINDINGS} when the doctor finds an error-level problem"
    )
    train_parser.add_argument("--no-report", action="store_true", help="skip the run's report.html")
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
    return parser


EXIT_DIVERGED = 4  # training diverged (NaN, Inf or exploding loss); 3 is the doctor's --strict


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except DivergenceError as error:
        print(f"aelab: diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except AelabError as error:
        print(f"aelab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("aelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`aelab ... | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
