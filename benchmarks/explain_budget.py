"""How long `aelab explain` takes against its budget: 10 minutes for the default run on
mnist-10k, 2 minutes for --quick, on 2 cores.

Runs `aelab.explain` into a fresh folder (or, with --out, a folder of your choosing: a rerun
there shows what reuse costs) and prints the wall time, this process's CPU time, the load
average before and after (other programs' share of the machine), and each as a ratio of the
budget. The wall time is what a user waits; on a machine shared with other jobs it runs long,
and CPU time / cores is then the better estimate of the wall time on an idle machine.

    .venv/bin/python benchmarks/explain_budget.py --quick
    .venv/bin/python benchmarks/explain_budget.py            # the default run (minutes)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from aelab.config import DataConfig
from aelab.explain import explain

BUDGET_SECONDS = {True: 120.0, False: 600.0}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default="mnist-10k")
    parser.add_argument("--out", help="explain folder (default: a fresh temporary one)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or os.path.join(scratch, "explain")
        load_before = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), cpu_seconds()
        explain(None, out, data=DataConfig(name=args.dataset), quick=args.quick)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        load_after = os.getloadavg()[0]
    budget = BUDGET_SECONDS[args.quick]
    print(f"aelab explain {'--quick ' if args.quick else ''}on {args.dataset}, {cores} cores")
    print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after")
    print(f"wall {wall:.0f} s = {wall / budget:.2f} x the {budget:.0f} s budget")
    print(f"cpu {cpu:.0f} s; cpu / {cores} cores = {cpu / cores:.0f} s = {cpu / cores / budget:.2f} x the budget")


if __name__ == "__main__":
    main()
