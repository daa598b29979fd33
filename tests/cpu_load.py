"""Load on the machine for tests: processes that spin on the CPU until the block ends."""

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

from aelab.train.threads import runnable_elsewhere, usable_cores


@contextlib.contextmanager
def cpu_burners(count: int | None = None) -> Iterator[None]:
    """Keep `count` other processes (default: one per usable core) running during the block,
    and wait until the system sees them ready to run (`aelab.train.threads.runnable_elsewhere`), so a
    load-based thread choice made inside the block sees that load. They are killed at the end."""
    count = usable_cores() if count is None else count
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        deadline = time.monotonic() + 30
        while runnable_elsewhere() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} CPU burners never showed as running")
            time.sleep(0.01)
        yield
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()
