"""What a sweep folder holds and may take: the folder checks, and the sweep that a spec
run into a folder makes (a new one, the folder's own, or extended)."""

from __future__ import annotations

from pathlib import Path

from aelab.errors import RunFolderError
from aelab.runs import STATUS_FILE, SWEEP_FILE, describe_entries, foreign_entries, is_temporary_of
from aelab.sweep.grid import Sweep, SweepSpec, _config_difference, grid_text, read_sweep

DONE_STATES = ("finished", "diverged")  # a diverged run would diverge again: keep it as a result


def _check_sweep_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a folder; choose another --out")
    if (out / STATUS_FILE).exists():
        raise RunFolderError(f"{out} is a run folder, not a sweep folder; choose another --out")
    if out.is_dir() and not (out / SWEEP_FILE).exists():
        # sweep.yaml is written first, so anything but an interrupted write of it is not aelab's
        foreign = [name for name in foreign_entries(out, ()) if not is_temporary_of(name, (SWEEP_FILE,))]
        if foreign:
            raise RunFolderError(
                f"{out} holds {describe_entries(foreign)} and no {SWEEP_FILE}, so it is not a sweep folder; "
                "choose another --out (a new or empty folder)"
            )


def _sweep_for(out: Path, spec: SweepSpec, extend: bool) -> Sweep:
    """The sweep that `spec` run into `out` makes: a new one, the folder's own (when it holds
    `spec`), or with `extend` the folder's plus `spec`; another spec is refused."""
    _check_sweep_folder(out)
    recorded = read_sweep(out)
    if recorded is None:
        return Sweep((spec,))
    if spec in recorded.specs:
        return recorded
    if extend:
        return Sweep((*recorded.specs, spec))
    first = recorded.specs[0]
    if spec.base != first.base:
        what = f"another base config ({_config_difference(spec.base, first.base)})"
    else:
        what = f"another grid ({grid_text(recorded.grid) or 'none'} there, {grid_text(spec.grid) or 'none'} here)"
    raise RunFolderError(
        f"sweep folder {out} was made with {what}; `aelab compare --out {out}` alone resumes it as it is, "
        "another --out starts a new sweep, --extend adds this grid's runs to it"
    )
