"""The "ray" sweep backend on a real Ray started by the tests: a local Ray with 2 CPUs (one run
forced to fail, one worker killed mid-run, a Ctrl-C), and a two-node cluster on this machine
whose runs land on the node that is not the driver's. Each sweep folder is compared, run for
run, with the same grid run by the local backend."""

import json
import math
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from aelab import Callback, RunConfig
from aelab.cli import main
from aelab.runs import CHECKPOINT_FILE, LOCK_FILE, MODEL_FILE, SWEEP_FILE, read_metrics, read_status
from aelab.sweep import SweepSpec, run_sweep

from .conftest import TINY, wait_for

ray = pytest.importorskip("ray", reason='the ray tests need the extra: pip install -e ".[ray]"')

from aelab.sweep.ray_backend import RayBackend  # noqa: E402 - needs ray

BASE = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 3}})
# Two stacked groups of two (the hidden sizes differ between the groups), every run on 1 thread.
GRID = {"hidden": ([16], [8]), "loss": ("bce", "mse")}
FAILS = "hidden-8_loss-mse"
KILLED = "hidden-16_loss-bce"
TOLERANCE = 1e-5
COMPARED = ("val_loss", "mse", "ssim", "blob_score", "train_loss")


@pytest.fixture(autouse=True)
def no_stray_ray(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    if ray.is_initialized():  # a failed test must not hand its Ray to the next one
        ray.shutdown()


class Instruments:
    """The tests' callbacks for the runs of a Ray sweep, made afresh per run in its task: each
    run's start is recorded (pid, node, the epochs it had done, its folder), FAILS raises, and
    KILLED writes its worker's pid and waits (to be killed) at the end of its second epoch."""

    def __init__(self, folder: Path, fail: str | None = None, kill: str | None = None) -> None:
        self.folder, self.fail, self.kill = str(folder), fail, kill

    def __call__(self) -> list[Callback]:
        return [Instrument(Path(self.folder), self.fail, self.kill)]


class Instrument(Callback):
    def __init__(self, folder: Path, fail: str | None, kill: str | None) -> None:
        self.folder, self.fail, self.kill = folder, fail, kill

    def on_train_start(self, trainer, run_dir):
        self.name = run_dir.name
        start = {
            "run": self.name,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "epochs_before": len(trainer.history),
            "run_dir": str(run_dir),
            "torch_threads": torch.get_num_threads(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        (self.folder / f"start-{self.name}-{os.getpid()}.json").write_text(json.dumps(start))
        if self.name == self.fail:
            raise RuntimeError(f"{self.name} is made to fail")

    def on_epoch_end(self, trainer, row, run_dir):
        pid_file = self.folder / "killed.pid"
        if self.name == self.kill and trainer.epoch >= 2 and not pid_file.exists():
            pid_file.write_text(str(os.getpid()))
            # Killed here; the test fails should it go on. Longer than the killer waits (120 s), so
            # that on a loaded machine the group does not give up first and resume this run itself.
            wait_for(lambda: False, timeout=240)


def starts(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("start-*.json"))]


def local_sweep(out: Path, grid: dict = GRID):
    return run_sweep(SweepSpec(BASE, grid), out)


def assert_runs_match(ray_out: Path, local_out: Path, names) -> None:
    """Each run of `names` holds the same files as the local backend's and equal numbers."""
    rows = {row["run"]: row for row in json.loads((ray_out / "results.json").read_text())}
    local_rows = {row["run"]: row for row in json.loads((local_out / "results.json").read_text())}
    for name in names:
        assert rows[name]["state"] == local_rows[name]["state"] == "finished", name
        assert rows[name]["epochs_done"] == local_rows[name]["epochs_done"]
        for key in COMPARED:
            assert math.isclose(rows[name][key], local_rows[name][key], rel_tol=TOLERANCE, abs_tol=TOLERANCE), (
                name,
                key,
                rows[name][key],
                local_rows[name][key],
            )
        ours, theirs = read_metrics(ray_out / name), read_metrics(local_out / name)
        assert [row["epoch"] for row in ours] == [row["epoch"] for row in theirs]
        for mine, local in zip(ours, theirs, strict=True):
            assert math.isclose(mine["val_loss"], local["val_loss"], rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        files = {path.name for path in (ray_out / name).iterdir()}
        assert files == {path.name for path in (local_out / name).iterdir()}, name
        assert LOCK_FILE not in files and not [f for f in files if f.endswith(".tmp")]


def test_a_ray_sweep_survives_a_failing_run_and_a_killed_worker_and_matches_the_local_one(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "ray"
    backend = RayBackend(num_cpus=2, send_every=0)  # every epoch: the killer waits for epoch 1 to arrive
    lines: list[str] = []

    def kill_the_worker() -> None:
        # Once its first checkpoint is in the sweep folder, the worker waiting at epoch 2 dies.
        wait_for(lambda: (marks / "killed.pid").exists() and len(read_metrics(out / KILLED)) >= 1, timeout=120)
        os.kill(int((marks / "killed.pid").read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    result = run_sweep(
        SweepSpec(BASE, GRID),
        out,
        backend=backend,
        echo=lines.append,
        make_callbacks=Instruments(marks, fail=FAILS, kill=KILLED),
    )
    killer.join(timeout=5)
    assert not ray.is_initialized()  # the Ray it started is stopped again
    assert "RAY_USAGE_STATS_ENABLED" in os.environ  # this test's own setting, left as it was

    # The failure is recorded in its folder and the results; the other runs finished.
    status = read_status(out / FAILS)
    assert status["state"] == "failed"
    assert "RuntimeError: hidden-8_loss-mse is made to fail" in status["message"]
    rows = {row["run"]: row for row in result.rows}
    assert rows[FAILS]["state"] == "failed"
    assert any(line.startswith(f"{FAILS}: failed: RuntimeError") for line in lines)
    others = [name for name in rows if name != FAILS]
    assert all(rows[name]["state"] == "finished" for name in others)

    # The killed run was retried and resumed from the checkpoint the driver had, not restarted.
    assert backend.records[KILLED].attempts == 2
    killed_starts = [start for start in starts(marks) if start["run"] == KILLED]
    assert len(killed_starts) == 2
    assert sorted(start["epochs_before"] for start in killed_starts)[0] == 0
    assert max(start["epochs_before"] for start in killed_starts) >= 1
    assert any("a Ray worker died" in line and f"{KILLED} after epoch" in line for line in lines)
    # Each task trained on the CPU Ray gave it, and aelab agreed with Ray's OMP_NUM_THREADS.
    assert all(start["torch_threads"] == 1 and start["omp_threads"] == "1" for start in starts(marks))

    # Run for run, the same folders and numbers as the local backend's.
    local_sweep(tmp_path / "local")
    assert_runs_match(out, tmp_path / "local", others)
    assert {p.name for p in out.iterdir()} == {p.name for p in (tmp_path / "local").iterdir()}

    # The report and the doctor work on the folder; a rerun with the local backend keeps the
    # finished runs and gives the failed one another go (without the callback that failed it).
    assert main(["report", str(out)]) == 0
    assert main(["doctor", str(out / KILLED)]) == 0
    again = run_sweep(SweepSpec(BASE, GRID), out, backend="local")
    assert sorted(again.skipped) == sorted(others) and again.resumed == [FAILS]
    assert read_status(out / FAILS)["state"] == "finished"


def test_ctrl_c_leaves_finished_runs_and_a_local_rerun_finishes_the_rest(tmp_path):
    out = tmp_path / "ray"
    grid = {"hidden": ([16], [8])}  # two tasks, running side by side
    spec = SweepSpec(BASE.replace(train={"epochs": 4}), grid)
    landed: list[str] = []

    def interrupt_on_first_finished(line: str) -> None:
        if ": finished" in line:
            landed.append(line.split(":")[0])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, backend=RayBackend(num_cpus=2), echo=interrupt_on_first_finished)
    assert not ray.is_initialized()
    (finished,) = landed
    assert read_status(out / finished)["state"] == "finished"
    assert (out / finished / MODEL_FILE).exists()
    assert not list(out.glob(f"*/{LOCK_FILE}"))  # no folder is left locked

    rerun = run_sweep(spec, out, backend="local")
    assert rerun.skipped == [finished]
    assert sorted(rerun.trained + rerun.resumed) == sorted({"hidden-16", "hidden-8"} - {finished})
    assert all(row["state"] == "finished" for row in rerun.rows)
    run_sweep(spec, tmp_path / "local")
    assert_runs_match(out, tmp_path / "local", ["hidden-16", "hidden-8"])


def test_on_a_two_node_cluster_runs_train_on_the_other_node_in_its_own_scratch_folders(tmp_path):
    from ray.cluster_utils import Cluster

    node_tmp = tmp_path / "node2-tmp"
    node_tmp.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    # The head (the driver's node) has no CPUs, so every task must go to the second node,
    # whose processes keep their temporary files apart (TMPDIR).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, env_vars={"TMPDIR": str(node_tmp)})
        ray.init(address=cluster.address)
        head = ray.get_runtime_context().get_node_id()
        backend = RayBackend()
        out = tmp_path / "ray"
        run_sweep(SweepSpec(BASE, {"hidden": ([16], [8])}), out, backend=backend, make_callbacks=Instruments(marks))
        assert ray.is_initialized()  # a Ray the caller joined is left connected
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert {record.node for record in backend.records.values()} == {worker.node_id} != {head}
    for start in starts(marks):
        assert start["node"] == worker.node_id
        run_dir = Path(start["run_dir"])
        assert run_dir.is_relative_to(node_tmp) and not run_dir.is_relative_to(out)
        assert not run_dir.exists()  # scratch folders go when their task ends
    assert not list(node_tmp.iterdir())
    local_sweep(tmp_path / "local", {"hidden": ([16], [8])})
    assert_runs_match(out, tmp_path / "local", ["hidden-16", "hidden-8"])
    assert (out / SWEEP_FILE).exists() and (out / "hidden-8" / CHECKPOINT_FILE).exists()


def test_the_cli_trains_on_ray_from_a_sweep_file(tmp_path, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(json.dumps({**json.loads(json.dumps(TINY)), "backend": "ray", "grid": {"loss": ["bce"]}}))
    out = tmp_path / "sweep"
    assert main(["compare", "--config", str(sweep_file), "--out", str(out), "--quiet", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "training 1 run as 1 Ray task on a local Ray" in printed and "loss-bce: finished, val loss" in printed
    assert read_status(out / "loss-bce")["state"] == "finished"
    assert len(read_metrics(out / "loss-bce")) == 2
