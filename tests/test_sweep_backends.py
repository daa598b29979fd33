"""The sweep's seam: a plan (fresh / unfinished / done points, stacked groups) carried out by
a backend chosen by name."""

import subprocess
import sys

import pytest

from aelab import RunConfig
from aelab.cli import main
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
    with pytest.raises(ConfigError, match="unknown sweep backend 'slurm'; valid: local, ray"):
        run_sweep(SweepSpec(TINY_BASE, {"loss": ("bce",)}), tmp_path / "sweep", backend="slurm")
    assert not (tmp_path / "sweep").exists()
    assert not (tmp_path / "sweep" / SWEEP_FILE).exists()


def test_without_ray_the_ray_backend_says_how_to_install_it_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code = main(["compare", "--backend", "ray", "--out", str(tmp_path / "sweep"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == (
        'aelab: error: the ray backend needs Ray, which is not installed; install it with pip install "aelab[ray]"\n'
    )
    assert not (tmp_path / "sweep").exists()


def test_an_address_without_the_ray_backend_is_refused(tmp_path, capsys):
    assert main(["compare", "--address", "auto", "--out", str(tmp_path / "sweep"), "--quiet"]) == 2
    assert "--address names a Ray cluster; add --backend ray, or drop it" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_importing_aelab_and_its_ray_backend_does_not_import_ray():
    code = "import sys, aelab, aelab.cli, aelab.sweep, aelab.sweep.ray_backend; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_ray_task_sends_a_run_folder_at_the_start_then_at_most_every_send_every_seconds_and_at_the_end(tmp_path):
    from aelab import train
    from aelab.runs import CHECKPOINT_FILE, METRICS_FILE, STATUS_FILE
    from aelab.sweep.ray_backend import _Outbox, _Sender

    now = [0.0]

    class Ticking(_Sender):  # each epoch takes 2 "seconds" of the outbox's clock
        def log_epoch(self, trainer, row, run_dir):
            now[0] += 2.0
            super().log_epoch(trainer, row, run_dir)

    outbox = _Outbox(send_every=5.0, clock=lambda: now[0])
    config = TINY_BASE.replace(train={"epochs": 7})
    train(config, tmp_path / "run", callbacks=[Ticking(outbox)], doctor=False, report=False)
    messages = []
    while not outbox.messages.empty():
        messages.append(outbox.messages.get())
    # start (t=0), after epoch 3 (t=6), after epoch 6 (t=12), the end: never two sends within 5 s.
    epochs = [len(m["files"][METRICS_FILE].splitlines()) if METRICS_FILE in m["files"] else 0 for m in messages]
    assert epochs == [0, 3, 6, 7]
    assert all(CHECKPOINT_FILE in m["files"] and STATUS_FILE in m["files"] for m in messages[1:])
    assert b'"finished"' in messages[-1]["files"][STATUS_FILE]
