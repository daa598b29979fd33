"""`FolderWriter`: a run's own files (checkpoint, metrics.jsonl, status.json) written on one
background thread, in the order they were handed over, while training goes on.

Each write is `atomic_write_bytes` (a whole new file, fsynced, then renamed over the old one),
and they happen one after another in order, so at every instant the folder is one that the same
writes done in the training thread would have passed through: metrics.jsonl never runs ahead of
the checkpoint, status.json never ahead of either. The bytes are made in the training thread
when the write is handed over, so later training cannot change what is written.

A write that fails (disk full) stops the writer: the writes handed over after it are dropped,
so nothing newer than the failed file lands, and the error is raised in the training thread by
the next `write`, `flush` or `close`, as the write itself would have raised it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from types import TracebackType

from aelab.runs.files import atomic_write_bytes

_STOP = None


class FolderWriter:
    """Writes files on a background thread (started at the first write), in order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Path, bytes] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, path: str | Path, data: bytes) -> None:
        """Hand over one atomic write of `data` to `path`."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="aelab-folder-writer", daemon=True)
            self._thread.start()
        self._queue.put((Path(path), data))

    def flush(self) -> None:
        """Wait until every write handed over is on disk (or the writer stopped at a failure,
        which is then raised)."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Flush, then end the thread. Raises a failed write's error, like `flush`."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._raise()

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Waits for the writes handed over; a failed write's error is raised unless the block
        is already raising (Ctrl-C, a divergence): the folder is consistent either way."""
        try:
            self.close()
        except BaseException:
            if kind is None:
                raise

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after a failure, nothing newer may land
                    atomic_write_bytes(*item)
            except BaseException as error:  # raised in the training thread
                self._error = error
            finally:
                self._queue.task_done()
