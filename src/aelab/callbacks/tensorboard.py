"""TensorBoard logging: the "tensorboard" logger and a sweep's HParams dashboard.

A run folder stays the source of truth; its `tensorboard/` subfolder holds event files written
through `torch.utils.tensorboard`, so `tensorboard --logdir RUN` (or a sweep folder) shows:

    scalars     every metric of each epoch's metrics.jsonl row at step = epoch ("train/loss",
                "val/mse", "doctor/...", "run/seconds"), and "train/step_loss", the training
                loss every `step_every` optimisation steps, at step = the run's step number
    images      "reconstructions": a fixed set of validation images (top row) and the model's
                pixels for them (bottom row), at epoch 0 and every `every` epochs
    histograms  "weights/NAME" of every parameter, "activations/NAME" of every layer's output
                and "outputs/pixels" on a fixed probe batch, "outputs/targets" (the data) once
    text        "config" at the start, "findings" (the doctor's, from findings.json) at the end
    hparams     for a sweep (`write_sweep_hparams`): each run's grid values and final metrics

Per-step losses are kept on the device and read back once per epoch, so an accelerator is
not synchronised on every step. Everything of an epoch is written after that epoch's
checkpoint (as metrics.jsonl is), so the events never run ahead of what a resume starts from.
On a resume the folder is rewritten into one file: the metrics rows are written again from
the checkpoint's history (so they are exactly metrics.jsonl's), the other events of the epochs
the checkpoint holds are kept once each (a (tag, step) found twice, left by a kill between two
writes, is kept once), and anything later is dropped.

`torch.utils.tensorboard` needs the `tensorboard` package (`pip install 'aelab[tensorboard]'`);
it is imported when a logger is used, never when aelab is.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aelab.callbacks import LOGGER_PACKAGES, Logger
from aelab.errors import ConfigError
from aelab.findings import read_findings
from aelab.runs import TENSORBOARD_DIR

if TYPE_CHECKING:
    from aelab.train import RunState, TrainResult

STEP_TAG = "train/step_loss"
IMAGE_TAG = "reconstructions"
SHOWN_IMAGES = 8  # validation images in the reconstructions picture
PROBE_IMAGES = 256  # validation images the activation and output histograms are measured on
HISTOGRAM_BINS = 30
LOGGER_SUFFIX = ".aelab"  # the logger's event files: no SummaryWriter in the same process picks the name
HPARAMS_SUFFIX = ".hparams"  # the event file `write_sweep_hparams` writes in each run's folder
FINAL_PREFIX = "final/"  # the HParams dashboard's metric tags: the sweep's results row
SCALAR_GROUPS = ("train", "val", "doctor")  # row keys "val_mse" -> tag "val/mse"


def check_tensorboard() -> None:
    """A ConfigError with the install line when the tensorboard package is missing."""
    package, install = LOGGER_PACKAGES["tensorboard"]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"the tensorboard logger needs the {package} package: {install}")


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics row key: "val_mse" -> "val/mse", "seconds" -> "run/seconds"."""
    group, _, rest = key.partition("_")
    return f"{group}/{rest}" if group in SCALAR_GROUPS and rest else f"run/{key}"


def validation_images(trainer: RunState, count: int) -> torch.Tensor:
    """The first `count` validation images as floats (B, C, H, W)."""
    return trainer.validation.batch(0, count)


class TensorBoardLogger(Logger):
    """Writes a run's scalars, images, histograms and text to RUN/tensorboard/.

    every: epochs between reconstructions and histograms (also written at epoch 0, before
        training, and at the last epoch); step_every: optimisation steps between two
        "train/step_loss" points."""

    flush_first = False  # events after the checkpoint's epoch are dropped by a resume (on_train_start)

    def __init__(self, every: int = 5, step_every: int = 10) -> None:
        check_tensorboard()
        if every < 1 or step_every < 1:
            raise ValueError("every and step_every must be at least 1")
        self.every = every
        self.step_every = step_every
        self._writer: Any = None
        self._steps: list[int] = []
        self._losses: list[torch.Tensor] = []  # 0-d tensors on the training device, read per epoch

    def on_train_start(self, trainer: RunState, run_dir: Path | None) -> None:
        if run_dir is None:
            return
        folder = run_dir / TENSORBOARD_DIR
        earlier = _event_files(folder)  # a resumed run's
        # The rows' scalars are written again from the checkpoint's history (what metrics.jsonl
        # holds); everything else is kept from the epochs the checkpoint holds.
        row_tags = {scalar_tag(key) for row in trainer.history for key in row}
        kept = _events_to_keep(earlier, trainer.epoch, trainer.epoch * trainer.steps_per_epoch, row_tags)
        self._writer = EventFile(folder, suffix=LOGGER_SUFFIX)
        for event in kept:
            self._writer.add_event(event)
        for row in trainer.history:
            self._write_row(row)
        self._writer.flush()
        for path in earlier:  # only now: a kill before this leaves duplicates the next resume drops
            path.unlink()
        written = {(tag, int(event.step)) for event in kept for tag in _tags(event)}
        if trainer.epoch == 0 and (IMAGE_TAG, 0) not in written:  # the untrained model, once
            import yaml

            config_text = yaml.safe_dump(trainer.config.to_dict(), sort_keys=False)
            self._writer.add_text("config", "```\n" + config_text + "```", 0)
            targets = validation_images(trainer, PROBE_IMAGES)
            self._histogram("outputs/targets", targets, 0)
            self._write_pictures(trainer, 0)
        self._writer.flush()

    def on_step(self, trainer: RunState, step: int, loss: torch.Tensor) -> None:
        if self._writer is not None and step % self.step_every == 0:
            self._steps.append(step)
            self._losses.append(loss.detach().clone())  # no host synchronisation here

    def log_epoch(self, trainer: RunState, row: Mapping[str, Any], run_dir: Path | None) -> None:
        if self._writer is None:
            return
        if self._losses:
            for step, value in zip(self._steps, torch.stack(self._losses).tolist(), strict=True):
                self._writer.add_scalar(STEP_TAG, value, step)
            self._steps, self._losses = [], []
        self._write_row(row)
        epoch = int(row["epoch"])
        if epoch % self.every == 0 or epoch >= trainer.config.train.epochs:
            self._write_pictures(trainer, epoch)
        self._writer.flush()

    def on_train_end(self, trainer: RunState, result: TrainResult) -> None:
        if self._writer is None:
            return
        if result.run_dir is not None:
            findings = read_findings(result.run_dir)
            text = "\n".join(f"- {finding.line()}" for finding in findings) or "no findings"
            self._writer.add_text("findings", text, trainer.epoch)
        self._writer.flush()
        self._writer = None

    def _write_row(self, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                self._writer.add_scalar(scalar_tag(key), float(value), epoch)
            elif isinstance(value, str):
                self._writer.add_text(scalar_tag(key), value, epoch)

    @torch.no_grad()
    def _write_pictures(self, trainer: RunState, epoch: int) -> None:
        """Reconstructions and histograms of the model as it is now, in eval mode; the model's
        mode is restored and no random numbers are drawn, so training is not disturbed."""
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            images = validation_images(trainer, PROBE_IMAGES)
            layers: dict[str, torch.Tensor] = {}
            hooks = [
                module.register_forward_hook(_keep_output(layers, name))
                for name, module in model.named_modules()
                if name and not list(module.children())
            ]
            try:
                codes = model.encode(images)
            finally:
                for hook in hooks:
                    hook.remove()
            pixels = model.pixels(model.decode(codes))  # (B, C, H, W)
        finally:
            model.train(was_training)
        shown = min(SHOWN_IMAGES, images.shape[0])
        self._writer.add_image(IMAGE_TAG, _picture(images[:shown], pixels[:shown]), epoch)
        for name, parameter in model.named_parameters():
            self._histogram(f"weights/{name}", parameter.detach(), epoch)
        for name, output in layers.items():
            self._histogram(f"activations/{name}", output, epoch)
        self._histogram("activations/code", codes, epoch)
        self._histogram("outputs/pixels", pixels, epoch)

    def _histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """`add_histogram_raw` from HISTOGRAM_BINS equal bins counted by torch: add_histogram's
        numpy binning costs 15 ms for a layer's activations, this well under one."""
        values = values.detach().flatten().double()
        low, high = values.min(), values.max()
        counts = torch.histc(values, bins=HISTOGRAM_BINS, min=float(low), max=float(high))
        limits = torch.linspace(float(low), float(high), HISTOGRAM_BINS + 1, dtype=torch.float64)[1:]
        if float(low) == float(high):  # one value: one bucket
            counts, limits = counts.sum().reshape(1), high.reshape(1)
        self._writer.add_histogram_raw(
            tag,
            step,
            min=float(low),
            max=float(high),
            num=values.numel(),
            sum=float(values.sum()),
            sum_squares=float(values.square().sum()),
            bucket_limits=limits.tolist(),
            bucket_counts=counts.tolist(),
        )


class EventFile:
    """One event file written synchronously: what is added is kept in memory and appended to the
    file by `flush` (opened and closed each time, so nothing is left open between epochs). A
    SummaryWriter's background thread would hand every event across the GIL while training
    runs: on 2 cores that cost 25% of a run's wall time, against under 1% for this."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        self.path = folder / (name + suffix)
        self._pending: list[bytes] = []
        self._event = Event
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_event(self, event: Any) -> None:
        self._pending.append(event.SerializeToString())

    def add_summary(self, summary: Any, step: int) -> None:
        self.add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self.add_summary(scalar(tag, value), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        self.add_summary(text_summary(tag, text), step)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: (C, H, W) floats in [0, 1]."""
        from torch.utils.tensorboard.summary import image as image_summary

        self.add_summary(image_summary(tag, image, dataformats="CHW"), step)

    def add_histogram_raw(self, tag: str, step: int, **counts: Any) -> None:
        from torch.utils.tensorboard.summary import histogram_raw

        self.add_summary(histogram_raw(tag, **counts), step)

    def flush(self) -> None:
        if not self._pending:
            return
        from tensorboard.summary.writer.record_writer import RecordWriter

        with open(self.path, "ab") as file:
            records = RecordWriter(file)
            for record in self._pending:
                records.write(record)
        self._pending = []


_FILES = itertools.count()  # tells apart the event files one process starts in one second


def _keep_output(store: dict[str, torch.Tensor], name: str) -> Any:
    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            store[name] = output.detach()

    return hook


def _picture(originals: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """One (C, 2H, kW) image in [0, 1]: the originals side by side above their reconstructions.
    Images with other than 1 or 3 channels show their first channel."""
    if originals.shape[1] not in (1, 3):
        originals, pixels = originals[:, :1], pixels[:, :1]
    rows = [torch.cat(list(batch.float().clamp(0, 1).cpu()), dim=2) for batch in (originals, pixels)]
    return torch.cat(rows, dim=1)


def _tags(event: Any) -> set[str]:
    return {value.tag for value in event.summary.value}


def _event_files(folder: Path) -> list[Path]:
    """The logger's event files in `folder`, oldest name first (the sweep's hparams file apart)."""
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir() if "tfevents" in path.name and not path.name.endswith(HPARAMS_SUFFIX)
    )


def _events_to_keep(paths: Iterable[Path], epochs: int, steps: int, left_out: set[str]) -> list[Any]:
    """The summary events of these event files that belong to the first `epochs` epochs
    (`steps` optimisation steps for STEP_TAG), each (tag, step) once, in the order written,
    without the tags in `left_out`."""
    paths = list(paths)
    if not paths:
        return []  # a fresh run: nothing to read (and the reader's import, 0.3 s, not paid)
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    kept, seen = [], set()
    for path in paths:
        # Raw records, parsed as they were written: the other loader migrates old-style values
        # into another form, which TensorBoard would then file apart from the new ones.
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            if not event.HasField("summary"):
                continue  # file_version and the like: the new file gets its own
            values = [
                value
                for value in event.summary.value
                if (value.tag, event.step) not in seen
                and value.tag not in left_out
                and event.step <= (steps if value.tag == STEP_TAG else epochs)
            ]
            if not values:
                continue
            seen.update((value.tag, event.step) for value in values)
            copy = type(event)(wall_time=event.wall_time, step=event.step)
            for value in values:
                copy.summary.value.add().CopyFrom(value)
            kept.append(copy)
    return kept


# --- A sweep's HParams dashboard.


def hparam_value(value: Any) -> float | str | bool:
    """A grid value as TensorBoard's hparams take it: numbers as floats, booleans as they are,
    anything else (a list of hidden sizes, none) as its text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) or "[]"
    return str(value)


def write_sweep_hparams(
    run_dirs: Sequence[Path], values: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]]
) -> None:
    """The HParams dashboard of a sweep: in each run folder's tensorboard/, one event file
    (replacing the one an earlier call wrote) with the run's grid values (`values`, one
    mapping per run) as its hyperparameters and its results row's numbers (`results`) as
    "final/NAME" metrics at step = its epochs. Every file also holds the same experiment
    summary: each grid key with all the values it takes, and the metric names."""
    check_tensorboard()
    from torch.utils.tensorboard.summary import hparams, scalar

    runs = [{key: hparam_value(value) for key, value in point.items()} for point in values]
    keys = list(dict.fromkeys(key for run in runs for key in run))
    for run in runs:  # one type per key: a key whose values mix types is shown as text
        for key in keys:
            if len({type(other.get(key, "")) for other in runs}) > 1:
                run[key] = str(run.get(key, "none"))
    domains = {key: sorted({run[key] for run in runs if key in run}, key=str) for key in keys}
    metrics = [
        key
        for key in dict.fromkeys(key for row in results for key in row)
        if key not in keys and any(_is_number(row.get(key)) for row in results)
    ]
    for run_dir, run, row in zip(run_dirs, runs, results, strict=True):
        folder = Path(run_dir) / TENSORBOARD_DIR
        folder.mkdir(exist_ok=True)
        for old in folder.glob(f"*tfevents*{HPARAMS_SUFFIX}"):
            old.unlink()
        final = {f"{FINAL_PREFIX}{key}": float(row[key]) for key in metrics if _is_number(row.get(key))}
        experiment, start, end = hparams(
            run,
            {f"{FINAL_PREFIX}{key}": 0.0 for key in metrics},
            {key: [value for value in domains[key] if isinstance(value, type(run[key]))] for key in run},
        )
        step = int(row.get("epochs_done") or 0)
        writer = EventFile(folder, suffix=HPARAMS_SUFFIX)
        for summary in (experiment, start, *(scalar(tag, value) for tag, value in final.items()), end):
            writer.add_summary(summary, step)
        writer.flush()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
