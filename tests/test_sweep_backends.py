"""The sweep's seam: a plan (fresh / unfinished / done points, stacked groups) carried out by
a backend chosen by name."""

import pytest

from aelab import RunConfig
from aelab.errors import ConfigError
from aelab.runs import SWEEP_FILE, write_status
from aelab.sweep import BACKENDS, LocalBackend, Sweep, SweepSpec, parse_grid, plan_sweep, run_sweep

from .conftest import TINY

TINY_BASE = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 1}})


def test_the_plan_sorts_points_by_what_the_folder_holds_and_groups_the_fresh_ones(tmp_path):
    # loss x activation stack (same layer sizes); the conv points train alone.
    spec = SweepSpec(TINY_BASE, parse_grid(["model=dense,conv", "loss=bce,mse"]))
    out = tmp_path / "sweep"
    run_sweep(SweepSpec(TINY_BASE, parse_grid(["model=dense", "loss=bce,mse"])), out)
    first, second = (out / name for name in ("kind-dense_loss-bce", "kind-dense_loss-mse"))
    write_status(second, "running", epochs_done=0)  # as if killed mid-run

    plan = plan_sweep(out, Sweep((spec,)))
    assert [p.name for p in plan.done] == [first.name]
    assert [p.name for p in plan.unfinished] == [second.name]
    assert [p.name for p in plan.fresh] == ["kind-conv_loss-bce", "kind-conv_loss-mse"]
    assert [[p.name for p in group] for group in plan.groups] == [["kind-conv_loss-bce"], ["kind-conv_loss-mse"]]
    assert not (out / "kind-conv_loss-bce").exists()  # planning writes nothing

    fresh = plan_sweep(tmp_path / "new", Sweep((spec,)))
    assert [[p.name for p in group] for group in fresh.groups] == [
        ["kind-dense_loss-bce", "kind-dense_loss-mse"],
        ["kind-conv_loss-bce"],
        ["kind-conv_loss-mse"],
    ]


def test_run_sweep_hands_its_plan_to_the_backend_named(tmp_path, monkeypatch):
    plans = []

    class Recording(LocalBackend):
        def run(self, plan, *, progress, say, **more):
            plans.append(plan)
            super().run(plan, progress=progress, say=say, **more)

    monkeypatch.setitem(BACKENDS, "recording", Recording)
    spec = SweepSpec(TINY_BASE, {"loss": ("bce", "mse")})
    result = run_sweep(spec, tmp_path / "sweep", backend="recording")
    (plan,) = plans
    assert [p.name for p in plan.fresh] == result.trained == ["loss-bce", "loss-mse"]
    assert all((tmp_path / "sweep" / name / "model.safetensors").exists() for name in result.trained)
    again = run_sweep(spec, tmp_path / "sweep", backend="recording")
    assert again.skipped == ["loss-bce", "loss-mse"] and not plans[1].fresh


def test_an_unknown_backend_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="unknown sweep backend 'ray'; valid: local"):
        run_sweep(SweepSpec(TINY_BASE, {"loss": ("bce",)}), tmp_path / "sweep", backend="ray")
    assert not (tmp_path / "sweep").exists()
    assert not (tmp_path / "sweep" / SWEEP_FILE).exists()
