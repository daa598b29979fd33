"""Same command, same numbers: a run's weights do not depend on what else the machine is doing.

torch splits its reductions by thread count, so 1 and 2 threads give different weights from
the first epoch. The default thread count ("auto") therefore comes from the step's size and
the machine's cores only; a run records the count it used, and a resume reuses it whatever
the load or the default says then. Library calls give torch its previous count back."""

import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aelab import Callback, RunConfig, resume, train, train_ensemble
from aelab.cli import main
from aelab.errors import AelabError, RunFolderError
from aelab.runs import read_status, read_threads
from aelab.train import threads as threads_module
from aelab.train.threads import ONE_THREAD_BELOW, _cgroup_cpu_quota, choose_threads, usable_cores

from .conftest import NO_DOCTOR
from .cpu_load import cpu_burners
from .test_resume import Stop, StopAfter, assert_same_run, assert_same_tensors

# No train.threads: the default. Batch 64 of 28x28 images is 64 x 784 input values a step,
# above ONE_THREAD_BELOW, so the step-size rule gives every usable core (2 on this machine).
STEP = {
    "data": {"train_limit": 384, "val_limit": 64},
    "model": {"hidden_dims": [16], "latent_dim": 4},
    "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01},
}
STEP_VALUES = 64 * 784

needs_two_cores = pytest.mark.skipif(
    usable_cores() < 2, reason="on one usable core every rule picks one thread: nothing to tell apart"
)


def step_config(**train_values) -> RunConfig:
    return RunConfig.from_dict({**STEP, "train": {**STEP["train"], **train_values}})


def checkpoint_threads(run_dir):
    with safe_open(run_dir / "checkpoint.safetensors", "pt") as file:
        return file.metadata().get("threads")


class SeeThreads(Callback):
    """Records the torch thread count the run trains with."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_start(self, trainer, run_dir):
        self.seen.append(torch.get_num_threads())

    def on_epoch_end(self, trainer, row, run_dir):
        self.seen.append(torch.get_num_threads())


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@needs_two_cores
def test_the_same_config_beside_a_cpu_burner_and_without_gives_bit_identical_weights(tmp_path):
    assert STEP_VALUES >= ONE_THREAD_BELOW  # else the default is one thread and the test proves nothing
    cores = usable_cores()
    config = step_config()
    assert config.train.threads == "auto"
    train(config, tmp_path / "quiet", progress=False, **NO_DOCTOR)
    with cpu_burners():
        # the load-based choice (main's only one) would train this run on fewer threads
        assert choose_threads(STEP_VALUES, "load") < cores
        train(config, tmp_path / "busy", progress=False, **NO_DOCTOR)
    for run_dir in (tmp_path / "quiet", tmp_path / "busy"):
        assert read_status(run_dir)["threads"] == cores
        assert checkpoint_threads(run_dir) == str(cores)
    assert_same_run(tmp_path / "quiet", tmp_path / "busy")
    # Whether another thread count changes the numbers depends on the CPU's GEMM kernels (it did
    # on the Xeon this was written on; on an AMD EPYC, 1 and 2 threads give the same bits), so
    # what is checked is the count itself, recorded above in status.json and the checkpoint.
    train(step_config(threads=1), tmp_path / "one", progress=False, **NO_DOCTOR)
    assert read_status(tmp_path / "one")["threads"] == 1


@needs_two_cores
def test_resume_reuses_the_recorded_thread_count_under_other_load_and_another_default(tmp_path, monkeypatch):
    cores = usable_cores()
    config = step_config(epochs=3)
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    assert read_threads(tmp_path / "stopped") == cores
    # Now the default would say one thread (a machine with one core), and the machine is busy.
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 1)
    assert choose_threads(STEP_VALUES) == 1
    seen = SeeThreads()
    with cpu_burners(cores):
        result = resume(tmp_path / "stopped", progress=False, callbacks=[seen])
    assert result.extras["resumed_from_epoch"] == 1
    assert set(seen.seen) == {cores}
    assert read_status(tmp_path / "stopped")["threads"] == cores
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


@needs_two_cores
def test_a_load_chosen_count_is_recorded_and_reused_when_the_load_is_gone(tmp_path):
    config = step_config(threads="load", epochs=3)
    with cpu_burners(), pytest.raises(Stop):
        train(config, tmp_path / "run", progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    chosen = read_threads(tmp_path / "run")
    assert chosen is not None and chosen < usable_cores()
    seen = SeeThreads()
    resume(tmp_path / "run", progress=False, callbacks=[seen])
    assert set(seen.seen) == {chosen}
    assert read_status(tmp_path / "run")["threads"] == chosen
    train(step_config(threads=chosen, epochs=3), tmp_path / "whole", progress=False, **NO_DOCTOR)
    assert_same_run(tmp_path / "whole", tmp_path / "run")


@needs_two_cores
def test_a_stacked_run_resumed_alone_continues_on_the_groups_thread_count(tmp_path):
    # Two members of batch 16: 2 x 16 x 784 values a stacked step (every core), 16 x 784 alone (one thread).
    configs = [step_config(batch_size=16, seed=seed, epochs=3) for seed in (0, 1)]
    assert 16 * 784 < ONE_THREAD_BELOW <= 2 * 16 * 784

    class StopGroup(Callback):
        def on_epoch_end(self, trainer, row, run_dir):
            if trainer.epoch == 2:
                raise Stop

    outs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(Stop):
        train_ensemble(configs, outs, progress=False, make_callbacks=lambda: [StopGroup()])
    assert [read_threads(out) for out in outs] == [usable_cores()] * 2
    seen = SeeThreads()
    resume(outs[1], progress=False, callbacks=[seen])
    assert set(seen.seen) == {usable_cores()}
    assert read_status(outs[1])["threads"] == usable_cores()


@needs_two_cores
def test_a_sweep_resumes_its_killed_run_on_the_recorded_thread_count(tmp_path, monkeypatch):
    import shutil

    from aelab.sweep import SweepSpec, run_sweep

    cores = usable_cores()
    spec = SweepSpec(step_config(epochs=3), {"seed": (0,)})
    (point,) = spec.points()
    train(point.config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    out = tmp_path / "sweep"
    run_sweep(spec, out)
    shutil.rmtree(out / point.name)  # as if killed mid-run: trained to epoch 1 on every core
    with pytest.raises(Stop):
        train(point.config, out / point.name, progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 1)  # the default now says one thread
    with cpu_burners(cores):
        result = run_sweep(spec, out)
    assert result.resumed == [point.name]
    assert read_status(out / point.name)["threads"] == cores
    assert_same_tensors(tmp_path / "whole" / "model.safetensors", out / point.name / "model.safetensors")


def make_it_old(run_dir):
    """Turn a run folder into one written before aelab recorded threads: `threads: null` in
    config.yaml and in the checkpoint's config, no thread count in the checkpoint or status."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"]["threads"] = None
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    path = run_dir / "checkpoint.safetensors"
    with safe_open(path, "pt") as file:
        metadata = dict(file.metadata())
    tensors = load_file(path)
    del metadata["threads"]
    saved = json.loads(metadata["config"])
    saved["train"]["threads"] = None
    metadata["config"] = json.dumps(saved)
    save_file(tensors, path, metadata)
    status = json.loads((run_dir / "status.json").read_text())
    del status["threads"]
    (run_dir / "status.json").write_text(json.dumps(status))


def test_a_run_folder_from_before_threads_were_recorded_resumes_on_the_configs_choice(tmp_path):
    config = step_config(epochs=3)
    train(config, tmp_path / "whole", progress=False, **NO_DOCTOR)
    with pytest.raises(Stop):
        train(config, tmp_path / "old", progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    make_it_old(tmp_path / "old")
    assert read_threads(tmp_path / "old") is None
    result = resume(tmp_path / "old", progress=False)
    assert result.extras["resumed_from_epoch"] == 1
    assert read_status(tmp_path / "old")["threads"] == choose_threads(STEP_VALUES)
    assert_same_tensors(tmp_path / "whole" / "model.safetensors", tmp_path / "old" / "model.safetensors")


def test_a_damaged_recorded_thread_count_is_refused_by_name(tmp_path):
    with pytest.raises(Stop):
        train(step_config(threads=1), tmp_path / "run", progress=False, callbacks=[StopAfter(0)], **NO_DOCTOR)
    (tmp_path / "run" / "checkpoint.safetensors").unlink()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["threads"] == 1
    (tmp_path / "run" / "status.json").write_text(json.dumps({**status, "threads": "many"}))
    with pytest.raises(RunFolderError, match=r"status.json records 'many' threads, not a thread count"):
        resume(tmp_path / "run", progress=False)


class Boom(AelabError):
    pass


class RaiseAtStart(Callback):
    def on_train_start(self, trainer, run_dir):
        raise Boom("stop")


def test_library_calls_leave_torchs_thread_count_as_they_found_it(tmp_path, threads_restored):
    torch.set_num_threads(3)  # anything the user chose, not what aelab would pick
    train(step_config(threads=1, epochs=1), progress=False, **NO_DOCTOR)
    assert torch.get_num_threads() == 3
    train(step_config(epochs=1), tmp_path / "auto", progress=False, **NO_DOCTOR)
    assert torch.get_num_threads() == 3
    with pytest.raises(Boom):
        train(step_config(threads=1), tmp_path / "raised", progress=False, callbacks=[RaiseAtStart()], **NO_DOCTOR)
    assert torch.get_num_threads() == 3
    with pytest.raises(Stop):
        train(step_config(threads=1), tmp_path / "stopped", progress=False, callbacks=[StopAfter(1)], **NO_DOCTOR)
    assert torch.get_num_threads() == 3
    resume(tmp_path / "stopped", progress=False)
    assert torch.get_num_threads() == 3
    configs = [step_config(threads=1, epochs=1, seed=seed) for seed in (0, 1)]
    train_ensemble(configs, [tmp_path / "m0", tmp_path / "m1"], progress=False)
    assert torch.get_num_threads() == 3


def test_old_configs_with_threads_null_load_as_auto_and_every_form_round_trips():
    assert RunConfig.from_dict({"train": {"threads": None}}).train.threads == "auto"
    assert RunConfig().train.threads == "auto"
    for value in ("auto", "load", 1, 3):
        config = RunConfig.from_dict({"train": {"threads": value}})
        assert config.train.threads == value
        assert RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


@pytest.mark.parametrize("value", [0, -2, "many", "two", True, 1.5, [2]])
def test_a_bad_thread_count_is_refused_with_what_is_valid(value):
    with pytest.raises(AelabError, match=r"^train.threads must be a positive integer, auto or load, got "):
        RunConfig.from_dict({"train": {"threads": value}})


def test_cli_threads_takes_a_count_auto_or_load_and_records_the_count(tmp_path, capsys):
    flags = ["--train-limit", "64", "--val-limit", "16", "--hidden", "8", "--latent", "2", "--batch-size", "32",
             "--epochs", "1", "--quiet"]  # fmt: skip
    for given, in_config in (("1", 1), ("auto", "auto"), ("load", "load")):
        out = tmp_path / given
        assert main(["train", *flags, "--threads", given, "--out", str(out)]) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["train"]["threads"] == in_config
        recorded = read_status(out)["threads"]
        assert checkpoint_threads(out) == str(recorded)
        if given == "load":
            assert 1 <= recorded <= usable_cores()
        else:
            assert recorded == (1 if given == "1" else choose_threads(32 * 784))
    capsys.readouterr()
    assert main(["train", *flags, "--threads", "many", "--out", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["aelab: error: train.threads must be a positive integer, auto or load, got 'many'"]
    assert not (tmp_path / "bad" / "config.yaml").exists()


def test_usable_cores_follow_a_cgroup_cpu_quota(tmp_path):
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    (root / "job").mkdir(parents=True)
    membership.write_text("0::/job\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) is None  # no files: no quota
    (root / "job" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) is None
    (root / "job" / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) == 1  # 1.5 CPUs: a second thread would be throttled
    (root / "job" / "cpu.max").write_text("400000 100000\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) == 4
    (root / "job" / "cpu.max").unlink()
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")  # cgroup v1
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) == 2
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_quota(str(root), str(membership)) is None


def test_the_default_count_is_the_cores_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(threads_module, "_cgroup_cpu_quota", lambda: 1)
    assert usable_cores() == 1
    assert choose_threads(STEP_VALUES) == 1
    monkeypatch.setattr(threads_module, "_cgroup_cpu_quota", lambda: 10_000)
    assert usable_cores() == len(threads_module.os.sched_getaffinity(0))
