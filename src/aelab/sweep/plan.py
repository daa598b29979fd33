"""The plan of a sweep run into a folder: which of its points are fresh (nothing there yet),
unfinished (a run killed mid-way, to resume) or done (finished or diverged: kept as
results), and which fresh points train stacked together. A backend carries a plan out
(`aelab.sweep.backends`); making one trains and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aelab.config import same_run
from aelab.errors import AelabError, RunFolderError
from aelab.runs import (
    STATUS_FILE,
    SWEEP_FILE,
    describe_entries,
    foreign_entries,
    is_temporary_of,
    load_config,
    read_status,
)
from aelab.sweep.grid import GridPoint, Sweep, SweepSpec, _config_difference, grid_text, read_sweep

DONE_STATES = ("finished", "diverged")  # a diverged run would diverge again: keep it as a result


@dataclass(frozen=True)
class SweepPlan:
    """What running `sweep` into the folder `out` takes: every point in order, each in one of
    `fresh`, `unfinished` and `done`."""

    out: Path
    sweep: Sweep
    points: tuple[GridPoint, ...]
    fresh: tuple[GridPoint, ...]
    unfinished: tuple[GridPoint, ...]
    done: tuple[GridPoint, ...]

    def run_dir(self, point: GridPoint) -> Path:
        return self.out / point.name

    @property
    def groups(self) -> list[tuple[GridPoint, ...]]:
        """The fresh points by how they train: the points with equal
        `aelab.train.stacking.group_key` as one stacked group (in the order of their first point),
        then each point that trains alone, as `aelab.train.stacking.train_ensemble` trains them."""
        from aelab.train.stacking import group_key

        stacked: dict[str, list[GridPoint]] = {}
        alone: list[GridPoint] = []
        for point in self.fresh:
            key = group_key(point.config)
            if key is None:
                alone.append(point)
            else:
                stacked.setdefault(key, []).append(point)
        groups = [tuple(points) for points in stacked.values() if len(points) > 1]
        singles = {point.name for points in stacked.values() if len(points) == 1 for point in points}
        singles |= {point.name for point in alone}
        return groups + [(point,) for point in self.fresh if point.name in singles]


def plan_sweep(out: str | Path, sweep: Sweep) -> SweepPlan:
    """Sort `sweep`'s points by what `out` holds for each. Raises RunFolderError for a run
    folder holding another config than its point's."""
    out = Path(out)
    points = sweep.points()
    fresh, unfinished, done = [], [], []
    for point in points:
        run_dir = out / point.name
        if not run_dir.exists() or not any(run_dir.iterdir()):
            fresh.append(point)
            continue
        try:
            found = load_config(run_dir)
        except AelabError:
            found = None
        if found is not None and not same_run(found, point.config):
            raise RunFolderError(
                template="run folder {folder} holds another config ({difference}); choose another {out}",
                folder=run_dir,
                difference=_config_difference(point.config, found),
            )
        state = read_status(run_dir).get("state")
        (done if state in DONE_STATES else unfinished).append(point)
    return SweepPlan(out, sweep, tuple(points), tuple(fresh), tuple(unfinished), tuple(done))


def _check_sweep_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(template="{folder} exists and is not a folder; choose another {out}", folder=out)
    if (out / STATUS_FILE).exists():
        raise RunFolderError(template="{folder} is a run folder, not a sweep folder; choose another {out}", folder=out)
    if out.is_dir() and not (out / SWEEP_FILE).exists():
        # sweep.yaml is written first, so anything but an interrupted write of it is not aelab's
        foreign = [name for name in foreign_entries(out, (), {}) if not is_temporary_of(name, (SWEEP_FILE,))]
        if foreign:
            raise RunFolderError(
                template="{folder} holds {entries} and no {sweep_file}, so it is not a sweep folder; "
                "choose another {out} (a new or empty folder)",
                folder=out,
                entries=describe_entries(foreign),
                sweep_file=SWEEP_FILE,
            )


def sweep_for(out: Path, spec: SweepSpec, extend: bool) -> Sweep:
    """The sweep that `spec` run into `out` makes: a new one, the folder's own (when it holds
    `spec`), or with `extend` the folder's plus `spec`; another spec is refused."""
    _check_sweep_folder(out)
    recorded = read_sweep(out)
    if recorded is None:
        return Sweep((spec,))
    for index, known in enumerate(recorded.specs):
        if known.same_runs(spec):
            # The same runs, computed as `spec` says now (device, threads, engine) where any is still to train.
            return Sweep((*recorded.specs[:index], spec, *recorded.specs[index + 1 :]))
    if extend:
        return Sweep((*recorded.specs, spec))
    first = recorded.specs[0]
    if not same_run(spec.base, first.base):
        what = f"another base config ({_config_difference(spec.base, first.base)})"
    else:
        what = f"another grid ({grid_text(recorded.grid) or 'none'} there, {grid_text(spec.grid) or 'none'} here)"
    raise RunFolderError(
        template="sweep folder {folder} was made with {what}; {resume_sweep:{folder}} resumes it as it is, "
        "another {out} starts a new sweep, {extend} adds this grid's runs to it",
        folder=out,
        what=what,
    )
