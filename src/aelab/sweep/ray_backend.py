"""The "ray" sweep backend: each of a plan's groups (the runs that train stacked, or one run
that trains alone) and each run to resume is one Ray task, on the cluster that `address` or
RAY_ADDRESS names, or on a local Ray that this backend starts (and stops) with its CPU count
set explicitly and no dashboard.

No shared filesystem is assumed. A task trains into a scratch folder of its own on whatever
node runs it, through the public API (`aelab.train_ensemble` with a doctor per run, or
`aelab.resume`), and streams the run folders' files back as it goes: after the first
checkpoint, after an epoch's checkpoint once `send_every` seconds have passed since the run's
last send (5 by default: a 2 MB checkpoint every epoch would be most of what a fast run ships),
and at the end. The driver writes them into the
sweep folder with the atomic writes of `aelab.runs` (status.json last), so the sweep folder
is at every instant what a local run killed at that moment leaves, and the same folder a
local sweep writes once the runs are done.

Faults: a run that raises is marked "failed" in its folder with the error, and the others
go on (a stacked group that raises is finished run by run, so that only the run at fault
fails). A task whose worker or node dies is submitted again, up to `max_retries` times, for
its runs that had not ended; each resumes from the last checkpoint the driver received,
or starts afresh where none had arrived. Ctrl-C cancels the tasks and leaves every folder
as a kill would: a rerun, with either backend, skips the finished runs and resumes the rest.

Threads: a task asks Ray for as many CPUs as its runs train with (train.threads when it is a
count, else `cpus_per_run`), and its runs train on exactly that many threads, recorded in
their folders, so their numbers are those of a local run at the same thread count. Ray also
sets OMP_NUM_THREADS to that count in the worker; aelab agrees with it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aelab.callbacks import Logger
from aelab.config import RunConfig
from aelab.errors import AelabError, ConfigError
from aelab.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    STATUS_FILE,
    WRITE_PROBE,
    atomic_write_bytes,
    claim_run_dir,
    read_metrics,
    read_status,
    read_threads,
    run_lock,
    save_config,
    write_status,
)
from aelab.sweep.grid import GridPoint
from aelab.sweep.plan import SweepPlan

log = logging.getLogger(__name__)

INSTALL_HINT = 'the ray backend needs Ray, which is not installed; install it with pip install "aelab[ray]"'
DEFAULT_RETRIES = 3  # a task whose worker died is submitted again this many times at most
# A task sends a run's files after an epoch only when this many seconds have passed since it last
# sent them: what a dead worker loses at most, and how often the sweep's progress line moves.
DEFAULT_SEND_EVERY = 5.0
ENDED_STATES = ("finished", "diverged", "failed")  # a run in one of these has nothing left to train
FAILED = "failed"
# The order the driver writes a message's files in, as training writes them: the config, then
# the checkpoint, then everything else (metrics, the model, findings), and status.json last,
# so the folder never claims more than its files hold.
FIRST_FILES = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE)


def require_ray() -> None:
    """Raise ConfigError, saying how to install it, when Ray cannot be imported."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(INSTALL_HINT)


# --- the run folder as files: read, compared, written


def _is_shipped(relative: str) -> bool:
    """Whether a file of a run folder travels: all but the lock, the write probe and the
    temporaries of interrupted atomic writes (`.NAME.XXXX.tmp`)."""
    name = relative.rsplit("/", 1)[-1]
    return name not in (LOCK_FILE, WRITE_PROBE) and not (name.startswith(".") and name.endswith(".tmp"))


def _folder_files(folder: Path) -> dict[str, os.stat_result]:
    """Every file that travels in `folder` (subfolders included) by relative path, with its stat."""
    found: dict[str, os.stat_result] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and _is_shipped(relative):
            found[relative] = path.stat()
    return found


def read_folder(folder: Path) -> dict[str, bytes]:
    """The files of a run folder that travel, by relative path."""
    return {relative: (folder / relative).read_bytes() for relative in _folder_files(folder)}


def _write_order(relative: str) -> tuple[int, str]:
    if relative == STATUS_FILE:
        return (len(FIRST_FILES) + 1, relative)
    return (FIRST_FILES.index(relative) if relative in FIRST_FILES else len(FIRST_FILES), relative)


def write_files(folder: Path, files: dict[str, bytes], removed: Iterable[str] = ()) -> None:
    """Write `files` (relative path -> bytes) into `folder`, each atomically and status.json
    last, and delete the files named in `removed`."""
    for relative in sorted(files, key=_write_order):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, files[relative])
    for relative in removed:
        (folder / relative).unlink(missing_ok=True)


def record_failure(run_dir: Path, config: RunConfig, message: str) -> None:
    """Mark a run folder "failed" with `message`, keeping what it holds. A folder without a
    config gets one, so that a rerun (with either backend) can start the run again."""
    before = read_status(run_dir) if run_dir.is_dir() else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG_FILE).exists():
        save_config(run_dir, config)
    epochs_done = before.get("epochs_done", 0) if isinstance(before.get("epochs_done"), int) else 0
    threads = before.get("threads", config.train.threads)
    write_status(run_dir, FAILED, epochs_done=epochs_done, message=message, threads=threads)


def _error_text(error: BaseException) -> str:
    return str(error) if isinstance(error, AelabError) else f"{type(error).__name__}: {error}"


# --- inside a task: train into scratch folders, send what changed


class _Outbox:
    """What a task sends: changes to its run folders, since the last send of each. `due`
    says whether `send_every` seconds have passed since a folder's last send."""

    def __init__(self, send_every: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.send_every, self.clock = send_every, clock
        self._sent: dict[Path, dict[str, tuple[int, int, int]]] = {}
        self._sent_at: dict[Path, float] = {}

    def due(self, folder: Path | None) -> bool:
        last = self._sent_at.get(folder) if folder is not None else None
        return last is None or self.clock() - last >= self.send_every

    def know(self, folder: Path) -> None:
        """Take the files `folder` holds now as sent (they came from the driver)."""
        self._sent[folder] = {rel: _signature(stat) for rel, stat in _folder_files(folder).items()}

    def send(self, folder: Path | None) -> None:
        """Queue the files of `folder` that changed since it was last sent, and those deleted.
        Called on the thread that writes the folder, between its writes."""
        if folder is None:
            return
        self._sent_at[folder] = self.clock()
        sent = self._sent.setdefault(folder, {})
        present = _folder_files(folder)
        files: dict[str, bytes] = {}
        for relative, stat in present.items():
            if sent.get(relative) != _signature(stat):
                with contextlib.suppress(FileNotFoundError):  # replaced since: the next send has it
                    files[relative] = (folder / relative).read_bytes()
                    sent[relative] = _signature(stat)
        removed = [relative for relative in sent if relative not in present]
        for relative in removed:
            del sent[relative]
        if files or removed:
            message = {"event": "files", "run": folder.name, "files": files, "removed": removed, "time": time.time()}
            self.messages.put(message)


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)  # an atomic replace changes the inode


class _Sender(Logger):
    """Sends its run folder's changes: at the start (config, first checkpoint), after an
    epoch's checkpoint when the outbox says a send is due (a Logger's `log_epoch` comes after
    the checkpoint, metrics.jsonl and status.json are on disk, so what it sends is a consistent
    folder) and at the end (model, finished status, the doctor's findings: it comes after the
    doctor)."""

    def __init__(self, outbox: _Outbox) -> None:
        self.outbox = outbox
        self.run_dir: Path | None = None

    def on_train_start(self, trainer: Any, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self.outbox.send(run_dir)

    def log_epoch(self, trainer: Any, row: Any, run_dir: Path | None) -> None:
        if self.outbox.due(run_dir):
            trainer.flush_writes()  # the epoch's checkpoint and metrics on disk before they are read
            self.outbox.send(run_dir)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        self.outbox.send(self.run_dir)


def train_task(
    runs: list[dict[str, Any]],
    loggers: list[str],
    make_callbacks: Callable[[], Iterable[Any]] | None,
    send_every: float = DEFAULT_SEND_EVERY,
) -> Iterator[dict[str, Any]]:
    """The body of one Ray task, a generator of messages for the driver. runs: {"name",
    "config" (a config dict), "files" (the run folder's files the driver has; none for a
    fresh run)}. Yields {"event": "start", node, pid, time, scratch} first, then {"event":
    "files", run, files, removed, time} as the run folders change, and {"event": "crash",
    message} should the task itself fail."""
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="aelab-ray-"))
    outbox = _Outbox(send_every)
    node = ray.get_runtime_context().get_node_id()
    yield {"event": "start", "node": node, "pid": os.getpid(), "time": time.time(), "scratch": str(scratch)}
    trainer = threading.Thread(
        target=_train_into, args=(runs, scratch, outbox, loggers, make_callbacks), name="aelab-ray-train", daemon=True
    )
    trainer.start()
    try:
        while (message := outbox.messages.get()) is not None:
            yield message
        trainer.join()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_into(
    runs: list[dict[str, Any]],
    scratch: Path,
    outbox: _Outbox,
    loggers: list[str],
    make_callbacks: Callable[[], Iterable[Any]] | None,
) -> None:
    """Train `runs` into scratch/NAME, sending their changes; ends the outbox."""
    try:
        configs = {run["name"]: RunConfig.from_dict(run["config"]) for run in runs}
        resumed, fresh = [], []
        for run in runs:
            folder = scratch / run["name"]
            if run["files"]:
                write_files(folder, run["files"])
                outbox.know(folder)
                resumed.append(run["name"])
            else:
                fresh.append(run["name"])

        def user_callbacks() -> list[Any]:
            return list(make_callbacks()) if make_callbacks is not None else []

        for name in resumed:
            _resume_one(scratch / name, configs[name], outbox, user_callbacks, loggers)
        if fresh:
            _train_fresh(fresh, configs, scratch, outbox, user_callbacks, loggers)
    except BaseException as error:  # a fault of the task itself: the driver fails its open runs
        outbox.messages.put({"event": "crash", "message": _error_text(error), "traceback": traceback.format_exc()})
    finally:
        outbox.messages.put(None)


def _train_fresh(
    names: list[str],
    configs: dict[str, RunConfig],
    scratch: Path,
    outbox: _Outbox,
    user_callbacks: Callable[[], list[Any]],
    loggers: list[str],
) -> None:
    """Train fresh runs stacked where they can (`aelab.train_ensemble`), each with a doctor.
    When that raises, each run that had not ended is finished alone, so only the run at
    fault is marked failed."""
    from aelab.doctor import Doctor
    from aelab.train import train_ensemble

    outs = [scratch / name for name in names]
    try:
        train_ensemble(
            [configs[name] for name in names],
            outs,
            progress=False,
            make_callbacks=lambda: [*user_callbacks(), Doctor(), _Sender(outbox)],
            loggers=loggers,
        )
    except Exception as error:
        if len(names) == 1:
            _fail(outs[0], configs[names[0]], error, outbox)
            return
        log.warning("a stacked group of %d runs raised (%s); finishing its runs one by one", len(names), error)
        for name, out in zip(names, outs, strict=True):
            if read_status(out).get("state") in ENDED_STATES:
                continue
            if (out / CONFIG_FILE).exists():
                _resume_one(out, configs[name], outbox, user_callbacks, loggers)
            else:
                _train_fresh([name], configs, scratch, outbox, user_callbacks, loggers)
    finally:
        for out in outs:
            outbox.send(out)  # what the callbacks could not send: a divergence, a failure


def _resume_one(
    folder: Path,
    config: RunConfig,
    outbox: _Outbox,
    user_callbacks: Callable[[], list[Any]],
    loggers: list[str],
) -> None:
    """Finish a run folder from its last checkpoint (`aelab.resume`), then let its doctor
    check the finished run from the folder alone, as the local backend does."""
    from aelab.doctor import recheck_run
    from aelab.errors import DivergenceError
    from aelab.train import resume

    try:
        resume(folder, progress=False, callbacks=[*user_callbacks(), _Sender(outbox)], loggers=loggers)
        recheck_run(folder)
    except DivergenceError:
        pass  # the folder says so
    except Exception as error:
        _fail(folder, config, error, outbox)
    finally:
        outbox.send(folder)


def _fail(folder: Path, config: RunConfig, error: Exception, outbox: _Outbox) -> None:
    log.warning("%s failed: %s", folder.name, _error_text(error))
    record_failure(folder, config, _error_text(error))
    outbox.send(folder)


# --- the driver


@dataclass
class RunRecord:
    """What the driver saw of one run: where it trained, how often, and when (seconds on
    time.time()'s clock, for the benchmark's overhead figures)."""

    name: str
    node: str | None = None
    attempts: int = 0
    submitted: float | None = None
    started: float | None = None  # the task began, on its worker
    ended: float | None = None  # its ending status was written into the sweep folder
    bytes_received: int = 0
    transfer_seconds: float = 0.0  # from a message's yield on the worker to its files written here
    write_seconds: float = 0.0
    state: str | None = None
    message: str | None = None
    scratch: str | None = None


@dataclass
class _Run:
    point: GridPoint
    run_dir: Path
    config: RunConfig  # the point's config, train.threads the count it trains with
    total_epochs: int
    epochs_done: int = 0
    state: str | None = None
    lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@dataclass
class _Task:
    names: list[str]
    attempt: int


class RayBackend:
    """Runs a sweep's plan as Ray tasks (see the module's docstring).

    address: the cluster to use ("auto", "ray://HOST:10001", "HOST:6379"); None: RAY_ADDRESS
        when it is set, else a local Ray started for the sweep with `num_cpus` CPUs (default:
        this machine's usable cores) and stopped after it. An already connected Ray
        (`ray.init` called before) is used as it is.
    cpus_per_run: the CPUs, and threads, of a task whose runs have train.threads auto or load;
        a count in train.threads is used as it is.
    gpus_per_run: the GPUs (a fraction shares one) of a task whose runs have train.device cuda.
    max_retries: how many times a task whose worker died is submitted again.
    send_every: seconds between two sends of a run's files from its task, at most one per
        epoch (0: after every epoch). A worker that dies loses at most this long and one epoch
        of training.

    `run` returns once every run's files are in the sweep folder, leaving the Ray it started to
    stop on a background thread while the caller evaluates the runs; `close()` waits for that
    (`run_sweep` calls it after the evaluation; a Ctrl-C or an error stops Ray before `run`
    returns). After `run`, `records` holds a `RunRecord` per run, `seconds` the time `run` took,
    `startup_seconds` the part spent starting or joining Ray and, after `close()`,
    `shutdown_seconds` the time stopping it took."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus_per_run: int = 1,
        gpus_per_run: float = 1.0,
        max_retries: int = DEFAULT_RETRIES,
        send_every: float = DEFAULT_SEND_EVERY,
    ) -> None:
        require_ray()
        for name, value in (("num_cpus", num_cpus), ("cpus_per_run", cpus_per_run)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"ray backend {name} must be a positive integer, got {value!r}")
        if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float)) or gpus_per_run <= 0:
            raise ConfigError(
                f"ray backend gpus_per_run must be a number above 0 (0.5 shares a GPU), got {gpus_per_run!r}"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"ray backend max_retries must be 0 or more, got {max_retries!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = float(gpus_per_run)
        if isinstance(send_every, bool) or not isinstance(send_every, (int, float)) or not 0 <= send_every < 1e9:
            raise ConfigError(f"ray backend send_every must be a number of seconds, 0 or more, got {send_every!r}")
        self.max_retries = max_retries
        self.send_every = float(send_every)
        self.records: dict[str, RunRecord] = {}
        self.seconds: float | None = None
        self.startup_seconds: float | None = None
        self.shutdown_seconds: float | None = None
        self._stopping: threading.Thread | None = None
        self._stop_error: BaseException | None = None

    def run(
        self,
        plan: SweepPlan,
        *,
        progress: bool,
        say: Callable[[str], None],
        make_callbacks: Callable[[], Iterable[Any]] | None = None,
        loggers: Iterable[str] = (),
    ) -> None:
        self.close()  # a Ray this backend started before is stopped first
        if not plan.unfinished and not plan.fresh:
            return
        import ray

        started = time.perf_counter()
        connection = contextlib.ExitStack()
        try:
            where = connection.enter_context(_connected(ray, self.address, self.num_cpus))
            self.startup_seconds = time.perf_counter() - started
            _Driver(self, ray, plan, progress, say, make_callbacks, list(loggers)).drive(where)
        except BaseException:
            connection.close()
            raise
        finally:
            self.seconds = time.perf_counter() - started
        # Every file is in the sweep folder: Ray stops while the caller evaluates the runs.
        self._stopping = threading.Thread(target=self._stop, args=(connection,), name="aelab-ray-stop", daemon=True)
        self._stopping.start()

    def close(self) -> None:
        """Wait until the Ray that `run` started has stopped (nothing to wait for otherwise)."""
        if self._stopping is not None:
            self._stopping.join()
            self._stopping = None
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error

    def _stop(self, connection: contextlib.ExitStack) -> None:
        stopping = time.perf_counter()
        try:
            connection.close()
        except BaseException as error:  # raised by close()
            self._stop_error = error
        self.shutdown_seconds = time.perf_counter() - stopping


@contextlib.contextmanager
def _connected(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[str]:
    """Ray, connected for the block: the cluster at `address` (or RAY_ADDRESS), a Ray this
    process had already joined, or a local one started here (and stopped after). Yields a
    description for the sweep's first line."""
    if ray.is_initialized():
        yield "the Ray this process is connected to"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and num_cpus is not None:
        raise ConfigError("ray backend num_cpus is for a local Ray; a cluster at an address has its own CPUs")
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        from aelab.train.threads import usable_cores

        num_cpus = num_cpus or usable_cores()
        # Ray counts the host's cores in a container; its dashboard is not needed here.
        options.update(num_cpus=num_cpus, include_dashboard=False)
        where = f"a local Ray with {num_cpus} CPUs"
    else:
        options["address"] = address
        where = f"the Ray cluster at {address}"
    with _usage_stats_off():
        try:
            ray.init(**options)
        except ConnectionError as error:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address} ({error}); start a Ray head node there, "
                "or leave the address and RAY_ADDRESS unset for a local Ray"
            ) from None
    try:
        yield where
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _usage_stats_off() -> Iterator[None]:
    """RAY_USAGE_STATS_ENABLED=0 while Ray starts, unless the user set it: Ray's usage
    statistics stay off unless asked for. The variable is restored after."""
    key = "RAY_USAGE_STATS_ENABLED"
    if key in os.environ:
        yield
        return
    os.environ[key] = "0"
    try:
        yield
    finally:
        os.environ.pop(key, None)


class _Driver:
    """One sweep's tasks, from submission to the last file written."""

    def __init__(
        self,
        backend: RayBackend,
        ray: Any,
        plan: SweepPlan,
        progress: bool,
        say: Callable[[str], None],
        make_callbacks: Callable[[], Iterable[Any]] | None,
        loggers: list[str],
    ) -> None:
        self.backend, self.ray, self.plan, self.say = backend, ray, plan, say
        self.make_callbacks, self.loggers = make_callbacks, loggers
        self.remote = ray.remote(train_task)
        self.runs: dict[str, _Run] = {}
        self.tasks: dict[Any, _Task] = {}  # ObjectRefGenerator -> task
        self.progress = _Progress(progress)
        backend.records = {}

    def drive(self, where: str) -> None:
        plan = self.plan
        batches = [[point] for point in plan.unfinished] + [list(group) for group in plan.groups]
        count = len(plan.unfinished) + len(plan.fresh)
        tasks = f"{len(batches)} Ray task{'s' if len(batches) != 1 else ''}"
        self.say(f"training {count} run{'s' if count != 1 else ''} as {tasks} on {where}")
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._release_all)
            for point in plan.unfinished:
                self._add(point, resumed=True)
            for point in plan.fresh:
                self._add(point, resumed=False)
            self.progress.start(self.runs.values())
            cleanup.callback(self.progress.close)
            for batch in batches:
                self._submit([point.name for point in batch], attempt=1)
            try:
                self._wait_for_tasks()
            except BaseException:
                for generator in self.tasks:  # Ctrl-C: the folders stay as a kill leaves them
                    with contextlib.suppress(Exception):
                        self.ray.cancel(generator, force=True)
                raise

    def _add(self, point: GridPoint, resumed: bool) -> None:
        run_dir = self.plan.run_dir(point)
        config = point.config
        threads = read_threads(run_dir) if resumed else None
        if threads is None:
            threads = config.train.threads if isinstance(config.train.threads, int) else self.backend.cpus_per_run
        if config.train.threads != threads:
            config = config.replace(train={"threads": threads})
        run = _Run(point, run_dir, config, config.train.epochs)
        # The sweep folder's run folders are locked while their runs train elsewhere, as a
        # local run locks its own: a second sweep on the same folder is refused.
        if resumed:
            run.lock.enter_context(run_lock(run_dir))
            run.epochs_done = len(read_metrics(run_dir))
        else:
            run.lock.enter_context(claim_run_dir(run_dir))
        self.runs[point.name] = run
        self.backend.records[point.name] = RunRecord(point.name)

    def _release_all(self) -> None:
        for run in self.runs.values():
            run.lock.close()

    def _submit(self, names: list[str], attempt: int) -> None:
        runs = [self.runs[name] for name in names]
        payload = [
            {"name": run.point.name, "config": run.config.to_dict(), "files": read_folder(run.run_dir)} for run in runs
        ]
        cpus = max(int(run.config.train.threads) for run in runs)  # type: ignore[call-overload]
        gpus = self.backend.gpus_per_run if any(run.config.train.device == "cuda" for run in runs) else 0
        generator = self.remote.options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, num_returns="streaming", name=f"aelab:{names[0]}"
        ).remote(payload, self.loggers, self.make_callbacks, self.backend.send_every)
        self.tasks[generator] = _Task(names, attempt)
        now = time.time()
        for name in names:
            record = self.backend.records[name]
            record.attempts, record.submitted, record.started = attempt, now, None
            self.runs[name].state = None
        self.progress.update(self.runs.values())

    def _wait_for_tasks(self) -> None:
        ray = self.ray
        while self.tasks:
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=1.0)
            for generator in ready:
                task = self.tasks[generator]
                try:
                    reference = next(generator)
                except StopIteration:
                    del self.tasks[generator]
                    self._end_task(task, "its task ended before the run did")
                    continue
                try:
                    message = ray.get(reference)
                except ray.exceptions.RayTaskError as error:  # the task's own code failed: again would too
                    del self.tasks[generator]
                    self._end_task(task, f"its Ray task failed: {str(error).splitlines()[-1]}")
                except ray.exceptions.RayError as error:  # a worker or node died, an object was lost
                    del self.tasks[generator]
                    with contextlib.suppress(Exception):  # should it still be going, it trains for nobody
                        ray.cancel(generator, force=True)
                    self._retry(task, error)
                else:
                    self._receive(task, message)
            self.progress.update(self.runs.values())

    def _receive(self, task: _Task, message: dict[str, Any]) -> None:
        event = message["event"]
        if event == "start":
            for name in task.names:
                record = self.backend.records[name]
                record.node, record.started, record.scratch = message["node"], message["time"], message["scratch"]
        elif event == "files":
            self._write(message)
        elif event == "crash":
            log.warning("a Ray task failed:\n%s", message.get("traceback", ""))
            self._end_task(task, f"its Ray task failed: {message['message']}")

    def _write(self, message: dict[str, Any]) -> None:
        run = self.runs[message["run"]]
        record = self.backend.records[run.point.name]
        started = time.perf_counter()
        write_files(run.run_dir, message["files"], message["removed"])
        record.write_seconds += time.perf_counter() - started
        record.transfer_seconds += time.time() - message["time"]
        record.bytes_received += sum(len(data) for data in message["files"].values())
        if STATUS_FILE not in message["files"]:
            return
        status = json.loads(message["files"][STATUS_FILE])
        run.epochs_done = int(status.get("epochs_done", run.epochs_done) or 0)
        if status.get("state") in ENDED_STATES and run.state not in ENDED_STATES:
            self._ended(run, status)

    def _ended(self, run: _Run, status: dict[str, Any]) -> None:
        run.state = status["state"]
        record = self.backend.records[run.point.name]
        record.state, record.message, record.ended = run.state, status.get("message"), time.time()
        if run.state == "finished":
            history = read_metrics(run.run_dir)
            last = history[-1] if history else {}
            line = f"{run.point.name}: finished, val loss {last.get('val_loss', float('nan')):.4f}"
            line += f"  val mse {last.get('val_mse', float('nan')):.4f}"
        else:
            line = f"{run.point.name}: {run.state}: {status.get('message') or 'no message'}"
        self.progress.write(self.say, line)

    def _open(self, task: _Task) -> list[str]:
        return [name for name in task.names if self.runs[name].state not in ENDED_STATES]

    def _end_task(self, task: _Task, reason: str) -> None:
        """A task is over: a run of it that has not ended is marked failed with `reason`."""
        for name in self._open(task):
            run = self.runs[name]
            record_failure(run.run_dir, run.config, reason)
            self._ended(run, read_status(run.run_dir))

    def _retry(self, task: _Task, error: Exception) -> None:
        names = self._open(task)
        if not names:
            return
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if task.attempt > self.backend.max_retries:
            self._end_task(task, f"its Ray worker died {task.attempt} times, the last: {reason}")
            return
        where = ", ".join(f"{name} after epoch {self.runs[name].epochs_done}" for name in names)
        self.progress.write(self.say, f"a Ray worker died ({type(error).__name__}); retrying {where}")
        self._submit(names, attempt=task.attempt + 1)


class _Progress:
    """One line for the whole sweep: runs done, running, failed, and the ETA (from epochs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, runs: Iterable[_Run]) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        runs = list(runs)
        self.bar = tqdm(
            total=sum(run.total_epochs for run in runs),
            initial=sum(run.epochs_done for run in runs),
            unit="epoch",
            bar_format="{desc} | {percentage:3.0f}% of epochs | {elapsed}, ETA {remaining}",
        )
        self.update(runs)

    def update(self, runs: Iterable[_Run]) -> None:
        if self.bar is None:
            return
        runs = list(runs)
        states = [run.state for run in runs]
        done = sum(state in ("finished", "diverged") for state in states)
        failed = states.count(FAILED)
        running = len(runs) - done - failed
        description = f"sweep: {done}/{len(runs)} runs done, {running} running, {failed} failed"
        epochs = sum(run.total_epochs if run.state in ENDED_STATES else run.epochs_done for run in runs)
        if description != self.bar.desc or epochs != self.bar.n:
            self.bar.set_description_str(description, refresh=False)
            self.bar.update(epochs - self.bar.n)
            self.bar.refresh()

    def write(self, say: Callable[[str], None], line: str) -> None:
        if self.bar is None:
            say(line)
            return
        with self.bar.external_write_mode():
            say(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
