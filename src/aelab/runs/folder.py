"""Who owns a run folder: the names aelab wrote (and may replace), claiming a folder for a
run (checked, locked, cleared with `overwrite`), the advisory lock held while a process writes
it, free space checked before a run starts, and the torn temporaries a kill leaves behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from aelab.errors import RunFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs go unguarded
    fcntl = None  # type: ignore[assignment]

from aelab.runs.files import LOCK_FILE, RUN_FILES, RUN_FOLDERS, SWEEP_FILE, WRITE_PROBE, read_status


def is_temporary_of(name: str, own_names: tuple[str, ...]) -> bool:
    """True for `.NAME.XXXX.tmp`, the temporary an interrupted atomic write of NAME leaves."""
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in own_names)


def foreign_entries(
    folder: Path, own_names: tuple[str, ...] = RUN_FILES, own_folders: Mapping[str, str] = RUN_FOLDERS
) -> list[str]:
    """The entries of `folder` that aelab did not write there (subfolders end in "/"), sorted;
    `own_names` are the files it writes and `own_folders` its subfolders (`is_own_folder`),
    a run folder's by default."""
    foreign = []
    for child in Path(folder).iterdir():
        if child.is_file() and not child.is_symlink():
            if child.name in own_names or is_temporary_of(child.name, own_names):
                continue
            foreign.append(child.name)
        elif is_own_folder(child, own_folders):
            continue
        else:
            foreign.append(child.name + ("/" if child.is_dir() else ""))
    return sorted(foreign)


def is_own_folder(path: Path, own_folders: Mapping[str, str] = RUN_FOLDERS) -> bool:
    """True for a subfolder named in `own_folders` (not a link) that holds only files whose
    names contain what `own_folders` gives for it: the files aelab writes there."""
    marker = own_folders.get(path.name)
    if marker is None or path.is_symlink() or not path.is_dir():
        return False
    return all(child.is_file() and not child.is_symlink() and marker in child.name for child in path.iterdir())


def describe_entries(names: list[str]) -> str:
    """ "train.py", "train.py and data.csv" or "train.py, data.csv and 3 more"."""
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"


def refuse_sweep_folder(run_dir: Path, *, other_out: bool = False) -> None:
    """Refuse, with how to resume it, a sweep folder (it holds sweep.yaml) given as a run folder."""
    if (run_dir / SWEEP_FILE).exists():
        or_else = ", or choose another {out}" if other_out else ""
        raise RunFolderError(
            template="{folder} is a sweep folder (it holds {sweep_file}), not a run folder; "
            "{run_sweep:{folder}} resumes it" + or_else,
            folder=run_dir,
            sweep_file=SWEEP_FILE,
        )


def check_replaceable(run_dir: Path) -> None:
    """Refuse a folder that is not a plain aelab run folder (a sweep folder, or one holding a
    file or folder aelab did not write), so nothing the user had there is ever deleted."""
    refuse_sweep_folder(run_dir, other_out=True)
    foreign = foreign_entries(run_dir)
    if foreign:
        raise RunFolderError(
            template="run folder {folder} holds {entries}, which aelab did not write; "
            "{overwrite} only replaces a run folder's own files: choose another {out}",
            folder=run_dir,
            entries=describe_entries(foreign),
        )


def prepare_run_dir(path: str | Path, *, overwrite: bool = False) -> Path:
    """Create an empty run folder, refusing to reuse one that holds files; with `overwrite`,
    delete an earlier run's files (RUN_FILES only; a folder holding anything else is refused).
    Call it holding the folder's `run_lock` (`claim_run_dir` does both), so that a run still
    going in another process is refused rather than deleted."""
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(template="{folder} exists and is not a folder; choose another {out}", folder=run_dir)
    # A folder that holds only our lock file (a run refused before it wrote anything) is empty.
    if run_dir.exists() and any(child.name not in (LOCK_FILE, WRITE_PROBE) for child in run_dir.iterdir()):
        check_replaceable(run_dir)
        if not overwrite:
            state = read_status(run_dir).get("state")
            hint = "continue it with {resume:{folder}}" if state == "running" else "choose another {out}"
            raise RunFolderError(
                template="run folder {folder} already exists ({state}); " + hint + " or pass {overwrite}",
                folder=run_dir,
                state=state,
            )
        for child in run_dir.iterdir():
            if child.name != LOCK_FILE and child.is_file():
                child.unlink()
            elif is_own_folder(child):  # checked above: it holds only aelab's event files
                for inner in child.iterdir():
                    inner.unlink()
                child.rmdir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / WRITE_PROBE
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _unwritable(run_dir, error) from None
    return run_dir


def _unwritable(run_dir: Path, error: OSError) -> RunFolderError:
    return RunFolderError(
        template="cannot write to run folder {folder}: {reason}; choose a writable {out}",
        folder=run_dir,
        reason=error.strerror,
    )


@contextlib.contextmanager
def claim_run_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Take a run folder for one run: create it, take its lock, then check and (with
    `overwrite`) clear it, and hold the lock until the block ends. The lock comes before
    anything is deleted or written, so a second process is refused while the first trains and
    never replaces its files; the folder's contents are checked before the lock file is made,
    so a folder that is not aelab's is refused without a trace. A folder this call created is
    removed again when the block raises before anything was written into it."""
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(template="{folder} exists and is not a folder; choose another {out}", folder=run_dir)
    if run_dir.is_dir():
        check_replaceable(run_dir)
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # leaf first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(run_dir, error) from None
    try:
        with run_lock(run_dir):
            yield prepare_run_dir(run_dir, overwrite=overwrite)
    except BaseException:
        # A run refused before it wrote anything leaves none of the folders it made behind.
        for folder in created:
            try:
                folder.rmdir()  # only ever removes an empty folder
            except OSError:
                break
        raise


# --- crash safety: free space, stale temporaries, one writer at a time


def check_free_space(run_dir: Path, needed_bytes: int) -> None:
    """Refuse to start a run that the disk holding `run_dir` cannot take."""
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunFolderError(
            template="only {free:.1f} MB free on the disk holding {folder}, and this run writes about "
            "{needed:.1f} MB; free some space or choose another {out}",
            free=free / 1e6,
            folder=run_dir,
            needed=needed_bytes / 1e6,
        )


def remove_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporary files a killed writer left (`.NAME.*.tmp` for a run folder's own
    files, the write probe); returns their names. Files aelab did not write are left alone."""
    removed = []
    for child in Path(run_dir).iterdir():
        stale = is_temporary_of(child.name, RUN_FILES) or child.name == WRITE_PROBE
        if stale and child.is_file():
            child.unlink(missing_ok=True)
            removed.append(child.name)
    return removed


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run folder while training writes to it. The operating system
    drops the lock when the process ends, even under SIGKILL, so a killed run never blocks its
    resume; a run still going in another process is refused.

    The lock file is removed when the block ends. That is safe because it is unlinked only by
    the process holding the lock, and a process that locks the file checks afterwards that it
    is still the one at the path: one that opened the file just before its holder removed it
    ends up locking a file no longer in the folder, sees so, and tries again on a fresh one."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = run_dir / LOCK_FILE
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise _unwritable(run_dir, error) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise RunFolderError(
                template="run folder {folder} is being trained by another process right now; "
                "wait for it to end or choose another {out}",
                folder=run_dir,
            ) from None
        if _is_file_at(descriptor, path):
            break
        os.close(descriptor)  # its holder removed it after we opened it: lock the file there now
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while holding the lock: see the docstring
        os.close(descriptor)


def _is_file_at(descriptor: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
