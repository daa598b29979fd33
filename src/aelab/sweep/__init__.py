"""Sweeps: a grid over any RunConfig fields, one run folder per grid point, a results table.

A sweep is a base `RunConfig` and a grid: an ordered mapping from config keys to the values
to try. Keys are a field's name (`loss`, `activation`, `learning_rate`, `seed`), a dotted
`section.field` (`train.loss`) or a short alias (`lr`, `hidden`, `latent`, `dataset`). The
sweep folder holds:

    sweep.yaml      the base config and the grid, so the folder describes itself (a sweep
                    extended with another grid lists that one under `extended`)
    NAME/           one run folder per grid point, NAME built from the grid values
    results.csv     one row per run: the grid values, the run's state, every metric
    results.json    the same rows as JSON
    report.html     the report on the same runs (aelab.report)

`run_sweep(spec, out)` trains only what is missing: a finished run folder whose config
matches is kept, a run killed mid-way is resumed (or restarted where this aelab cannot
resume), and a finished folder is never overwritten. A sweep folder made with another
grid or base config is refused unless `extend` adds the new grid's runs to the sweep; the
results and the report then cover every run of every grid. Runtime settings
(`aelab.config.RUNTIME_KEYS`: train.device, threads, engine) are recorded with each run but
are not part of what it is: a rerun with others keeps the finished runs, trains the missing
ones with them, and resumes a killed run as its folder recorded.

The package: `grid` (the grid language, folder names, sweep.yaml), `plan` (for a sweep
folder: the fresh, unfinished and done points, the stacked groups), `backends` (where runs
train: `BACKENDS`, "local" today), `results` (results.csv, results.json) and
`run` (`run_sweep`).
"""

from aelab.runs import RESULTS_CSV, RESULTS_JSON, STATUS_FILE, SWEEP_FILE
from aelab.sweep.backends import BACKENDS, Backend, LocalBackend, get_backend, train_runs
from aelab.sweep.grid import (
    ALIASES,
    DEFAULT_BASE,
    DEFAULT_GRID,
    EXTENDED_KEY,
    SECTIONS,
    GridPoint,
    Sweep,
    SweepSpec,
    check_names,
    check_sweep_file,
    grid_text,
    load_sweep_file,
    parse_grid,
    parse_value,
    read_sweep,
    resolve_key,
    short_key,
    split_values,
)
from aelab.sweep.plan import DONE_STATES, SweepPlan, plan_sweep
from aelab.sweep.results import write_results
from aelab.sweep.run import SweepResult, run_sweep

__all__ = [
    "ALIASES",
    "BACKENDS",
    "DEFAULT_BASE",
    "DEFAULT_GRID",
    "DONE_STATES",
    "EXTENDED_KEY",
    "RESULTS_CSV",
    "RESULTS_JSON",
    "SECTIONS",
    "STATUS_FILE",
    "SWEEP_FILE",
    "Backend",
    "GridPoint",
    "LocalBackend",
    "Sweep",
    "SweepPlan",
    "SweepResult",
    "SweepSpec",
    "check_names",
    "check_sweep_file",
    "get_backend",
    "grid_text",
    "load_sweep_file",
    "parse_grid",
    "parse_value",
    "plan_sweep",
    "read_sweep",
    "resolve_key",
    "run_sweep",
    "short_key",
    "split_values",
    "train_runs",
    "write_results",
]
