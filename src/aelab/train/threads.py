"""CPU threads: how many a run trains with, and applying a count for a block only.

`choose_threads` picks from the step's size and the machine's cores (rule "auto", the same
count on the same machine whatever else runs) or also from the load (rule "load");
`thread_count` applies a run config's choice; `torch_threads` sets torch's count for a block
and gives the previous one back, so library calls leave no global change.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from aelab.config import THREAD_CHOICES, RunConfig
from aelab.data import ImageData

# Below this many input values per step (batch size x pixels x stacked runs) one thread is
# as fast as two: waking a second thread costs more than its share of the work saves.
ONE_THREAD_BELOW = 32 * 784


def _running_here() -> int:
    """This process's threads that are running or ready to run (Linux /proc/self/task): torch's
    own worker threads spin for a while after each parallel region and must not be mistaken for
    another program's work."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as file:
                state = file.read().rpartition(")")[2].split()[0]  # the field after "(name)"
        except (OSError, IndexError):
            continue
        running += state == "R"
    return max(1, running)


def runnable_elsewhere() -> int:
    """Tasks of other processes ready to run right now (Linux /proc/loadavg minus this
    process's running threads), else 0."""
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            running = int(file.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - _running_here())


def usable_cores() -> int:
    """CPU cores this process may use: its CPU affinity, capped by a cgroup CPU quota where one
    is set (a container started with `--cpus 2` on a 64-core host sees 64 cores but may use 2).
    A fixed property of the machine and the container, never of what else is running."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota is not None else max(1, cores)


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int | None:
    """Whole CPUs of this process's cgroup quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us), or
    None when there is no quota or no cgroup file to read. Rounded down: threads beyond the
    quota are throttled, and a throttled thread stalls the others at every operation."""
    group = ""
    with contextlib.suppress(OSError), open(membership, encoding="ascii", errors="replace") as file:
        for line in file:
            if line.startswith("0::"):  # cgroup v2: this process's group below the mount
                group = line[3:].strip().lstrip("/")
    candidates = [
        (os.path.join(root, group, "cpu.max"), None),
        (os.path.join(root, "cpu.max"), None),  # a container sees its own group at the root
        (os.path.join(root, "cpu", "cpu.cfs_quota_us"), os.path.join(root, "cpu", "cpu.cfs_period_us")),
    ]
    for quota_path, period_path in candidates:
        try:
            with open(quota_path, encoding="ascii") as file:
                fields = file.read().split()
            if period_path is not None:
                with open(period_path, encoding="ascii") as file:
                    fields = fields[:1] + file.read().split()[:1]
            quota, period = fields[0], int(fields[1])
            if quota in ("max", "-1") or period <= 0:
                return None
            return max(1, int(quota) // period)
        except (OSError, ValueError, IndexError):
            continue
    return None


def choose_threads(step_values: int, rule: str = "auto", busy: int | None = None) -> int:
    """CPU threads for a step that reads `step_values` input values (batch size x pixels x
    stacked runs): one for small steps, where a second thread costs more than it saves
    (docs/benchmarks.md), else every usable core (`usable_cores`).

    rule "auto" depends on nothing else, so the same config on the same machine always gets
    the same count, and with it the same weights (torch splits its reductions by thread count,
    so 1 and 2 threads round differently). rule "load" also subtracts the cores busy with other
    work (`busy`, by default read from the system): faster on a shared machine, where one
    thread that shares a core with another program stalls the others at every operation (two
    threads ran 5-25x slower than one on a busy 2-core machine), but the count, and so the
    numbers, then depend on what else was running when the run started."""
    if rule not in THREAD_CHOICES:
        raise ValueError(f"unknown thread rule {rule!r}; valid: {', '.join(THREAD_CHOICES)}")
    if step_values < ONE_THREAD_BELOW:
        return 1
    cores = usable_cores()
    if rule == "auto":
        return cores
    busy = runnable_elsewhere() if busy is None else busy
    return max(1, cores - busy)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block with torch on `threads` CPU threads, and give torch back its previous
    count afterwards, also when the block raises: library calls leave no global change."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def thread_count(config: RunConfig, data: ImageData, members: int = 1) -> int:
    """The CPU threads a run trains with: `train.threads` when it is a count, else
    `choose_threads` by its rule ("auto" or "load") for one step of `members` stacked runs.
    Sets nothing; `torch_threads` applies the count for a block."""
    threads = config.train.threads
    if isinstance(threads, int):
        return threads
    return choose_threads(members * config.train.batch_size * data.num_pixels, threads)
