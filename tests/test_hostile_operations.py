"""Hostile operations (issue 10): what a user does to folders, not what they type. Overwrite of
a folder aelab did not write, overwrite of a run still training, two trains on one folder, a
compare into a sweep made with another grid, resume of a sweep folder, Ctrl-C, a kill while the
report is written. Each test asserts that nothing the user had is lost or mixed, and that one
line says what happened and what to do."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from aelab import load_run, train, train_ensemble
from aelab.cli import main
from aelab.errors import RunFolderError
from aelab.report import find_runs
from aelab.runs import LOCK_FILE, read_status, run_lock
from aelab.sweep import read_sweep
from aelab.train import loop as train_loop
from tests.conftest import TINY_FLAGS, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fcntl locks and SIGKILL")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: "), err
    return lines[0]


# --- overwrite of folders aelab did not write


def test_overwrite_never_deletes_files_aelab_did_not_write(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text("print('my script')\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    (project / "data" / "x.npy").write_bytes(b"\x93NUMPY")
    before = snapshot(project)
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(project), "--overwrite"]) == 2
    line = one_error_line(capsys)
    assert "holds data.csv, data/ and 1 more, which aelab did not write" in line
    assert "--overwrite only replaces a run folder's own files: choose another --out" in line
    assert snapshot(project) == before and sorted(p.name for p in project.iterdir()) == ["data", "data.csv", "train.py"]
    # Without --overwrite the line does not suggest a flag that would be refused.
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(project)]) == 2
    assert "--overwrite only replaces" in one_error_line(capsys)
    assert snapshot(project) == before


def test_overwrite_of_a_run_folder_holding_a_users_file_keeps_everything(tmp_path, capsys, tiny_config):
    run = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    (run / "notes.txt").write_text("epoch 2 looked odd\n")
    before = snapshot(run)
    assert main(["train", *TINY_FLAGS, "--lr", "0.05", "--out", str(run), "--overwrite"]) == 2
    assert f"run folder {run} holds notes.txt, which aelab did not write" in one_error_line(capsys)
    assert snapshot(run) == before
    with pytest.raises(RunFolderError, match=r"holds notes\.txt, which aelab did not write"):
        train(tiny_config, run, progress=False, overwrite=True)  # the Python API refuses as well
    assert snapshot(run) == before


def test_overwrite_replaces_an_earlier_runs_own_files_and_its_temporaries(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    assert {"findings.json", "report.html", "model.safetensors"} <= {p.name for p in run.iterdir()}
    (run / ".report.html.k2j3.tmp").write_text("<html>half")  # a report write killed half-way
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--lr", "0.05", "--out", str(run), "--overwrite"]) == 0
    assert load_run(run).config.train.learning_rate == 0.05 and len(load_run(run).history) == 1
    names = {p.name for p in run.iterdir()}
    assert ".report.html.k2j3.tmp" not in names and LOCK_FILE not in names


# --- a running run: overwrite, a second train, a resume


# Runs `aelab ARGS...` and, after the files of epoch 1 are written, writes PAUSED and waits until
# RELEASE exists: a run caught in the middle of training, its lock held.
PAUSE_AFTER_EPOCH_1 = textwrap.dedent(
    """
    import importlib, sys, time
    from pathlib import Path
    training = importlib.import_module("aelab.train.loop")  # the one training loop
    paused, release, *argv = sys.argv[1:]
    real_end_epoch = training.end_epoch

    def end_epoch(member, row, *args, **kwargs):
        real_end_epoch(member, row, *args, **kwargs)
        if row["epoch"] == 1:
            member.state.flush_writes()  # paused once epoch 1's files are on disk
            Path(paused).write_text("paused")
            deadline = time.monotonic() + 120
            while not Path(release).exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    training.end_epoch = end_epoch
    from aelab.cli import main
    sys.exit(main(argv))
    """
)


@pytest.fixture
def paused_run(tmp_path):
    """A `aelab train --epochs 3 --lr 0.01` paused after epoch 1 in another process; yields
    (run folder, release()) where release() lets it finish and returns its exit code."""
    run, paused, release = tmp_path / "run", tmp_path / "paused", tmp_path / "release"
    argv = ["train", *TINY_FLAGS, "--epochs", "3", "--lr", "0.01", "--out", str(run)]
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_EPOCH_1, str(paused), str(release), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def finish():
        release.write_text("go")
        code = process.wait(timeout=120)
        assert code == 0, process.stderr.read()
        return code

    try:
        wait_for(lambda: paused.exists() or process.poll() is not None)
        assert process.poll() is None, process.stderr.read()
        yield run, finish
    finally:
        release.write_text("go")
        if process.poll() is None:
            process.wait(timeout=120)
        process.stderr.close()


def assert_is_the_first_run(run):
    """The folder holds the paused run's files only: its config, 3 epochs, its weights."""
    finished = load_run(run)
    assert finished.finished and len(finished.history) == 3
    assert finished.config.train.learning_rate == 0.01 and finished.config.train.epochs == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 0.01
    assert [row["epoch"] for row in finished.history] == [1, 2, 3]
    assert LOCK_FILE not in {p.name for p in run.iterdir()}


def test_overwrite_of_a_running_run_is_refused_and_the_run_finishes_whole(paused_run, capsys):
    run, finish = paused_run
    before = snapshot(run)
    assert main(["train", *TINY_FLAGS, "--epochs", "5", "--lr", "0.05", "--out", str(run), "--overwrite"]) == 2
    line = one_error_line(capsys)
    assert f"run folder {run} is being trained by another process right now" in line
    assert snapshot(run) == before  # nothing deleted, nothing written
    finish()
    assert_is_the_first_run(run)


def test_a_second_train_or_resume_on_a_running_folder_is_refused(paused_run, capsys):
    run, finish = paused_run
    before = snapshot(run)
    assert main(["train", *TINY_FLAGS, "--out", str(run)]) == 2
    line = one_error_line(capsys)
    assert "being trained by another process right now; wait for it to end or choose another --out" in line
    assert "--overwrite" not in line and "--resume" not in line  # neither would be right here
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "being trained by another process" in one_error_line(capsys)
    assert snapshot(run) == before
    finish()
    assert_is_the_first_run(run)


def test_two_trains_started_at_once_on_one_folder_one_wins_whole(tmp_path):
    run = tmp_path / "run"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "aelab", "train", *TINY_FLAGS, "--lr", lr, "--out", str(run), "--no-report"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in ("0.01", "0.02")
    ]
    outcomes = []
    for process, lr in zip(processes, (0.01, 0.02), strict=True):
        code = process.wait(timeout=120)
        outcomes.append((code, process.stderr.read(), lr))
        process.stderr.close()
    assert sorted(code for code, _, _ in outcomes) == [0, 2], outcomes
    (_, _, winner), (_, loser_error, _) = sorted(outcomes, key=lambda outcome: outcome[0])
    lines = loser_error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: run folder"), loser_error
    finished = load_run(run)
    assert finished.finished and finished.config.train.learning_rate == winner and len(finished.history) == 2


def test_a_run_refused_before_it_starts_leaves_no_folder_and_keeps_the_users_own(tmp_path, capsys):
    # train.engine fast cannot train a conv model: refused when the run state is built, after
    # the folder was claimed. The folder aelab made for it goes; one the user made stays.
    refused = [*TINY_FLAGS, "--model", "conv", "--engine", "fast"]
    assert main(["train", *refused, "--out", str(tmp_path / "new" / "run")]) != 0
    assert "train.engine fast cannot train this model" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert main(["train", *refused, "--out", str(tmp_path / "mine")]) != 0
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


# --- the lock file


def test_a_finished_run_leaves_no_lock_file(tmp_path, tiny_config):
    train(tiny_config, tmp_path / "solo", progress=False)
    configs = [tiny_config, tiny_config.replace(train={"seed": 1})]
    train_ensemble(configs, [tmp_path / "a", tmp_path / "b"], progress=False)  # stacked members
    for name in ("solo", "a", "b"):
        assert load_run(tmp_path / name).finished
        assert not (tmp_path / name / LOCK_FILE).exists(), name


def test_the_lock_holds_when_its_file_is_removed_between_open_and_lock(tmp_path, monkeypatch):
    """A process that opens the lock file just before its holder removes it must not end up
    holding a lock on a file no longer in the folder while another process locks the new one."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    real_flock, calls = fcntl.flock, []

    def flock(descriptor, operation):
        calls.append(operation)
        if len(calls) == 1:  # the holder ends its run between our open and our lock
            (run / LOCK_FILE).unlink()
        return real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with run_lock(run):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        held = os.stat(run / LOCK_FILE)  # we hold the lock on the file that is at the path
        with pytest.raises(RunFolderError, match="being trained by another process"), run_lock(run):
            pass  # pragma: no cover - a second holder is refused
        assert os.stat(run / LOCK_FILE).st_ino == held.st_ino
    assert len(calls) == 2 and not (run / LOCK_FILE).exists()


# --- sweeps: resume, another grid, extend, foreign folders


# TINY_FLAGS without its --lr 0.01 (the default learning rate), so that a grid may have an lr axis.
_LR = TINY_FLAGS.index("--lr")
_NO_LR = TINY_FLAGS[:_LR] + TINY_FLAGS[_LR + 2 :]
SWEEP_FLAGS = [*_NO_LR, "--epochs", "1", "--activation", "relu", "--no-report"]


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "sweep"
    assert main(["compare", *SWEEP_FLAGS, "--grid", "loss=bce,mse", "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return out


def results_runs(out: Path) -> list[str]:
    return [row["run"] for row in json.loads((out / "results.json").read_text())]


def test_resume_of_a_sweep_folder_says_compare_resumes_it(sweep, capsys):
    before = snapshot(sweep)
    capsys.readouterr()
    assert main(["train", "--resume", str(sweep)]) == 2
    line = one_error_line(capsys)
    says_compare_resumes = f"is a sweep folder (it holds sweep.yaml), not a run folder; `aelab compare --out {sweep}`"
    assert says_compare_resumes + " resumes it" in line
    assert "--overwrite" not in line
    assert main(["train", *TINY_FLAGS, "--out", str(sweep), "--overwrite"]) == 2
    line = one_error_line(capsys)
    assert says_compare_resumes + " resumes it" in line
    assert snapshot(sweep) == before
    # ... and the command it names does resume it: nothing to train, the same runs reported.
    assert main(["compare", "--out", str(sweep), "--quiet", "--no-report"]) == 0
    assert "2 runs (2 done before, 0 to resume, 0 to train)" in capsys.readouterr().out
    assert results_runs(sweep) == ["loss-bce", "loss-mse"]
    assert (sweep / "sweep.yaml").read_bytes() == before["sweep.yaml"]


def test_compare_with_another_grid_is_refused_and_changes_nothing(sweep, capsys):
    before = snapshot(sweep)
    capsys.readouterr()
    assert main(["compare", *SWEEP_FLAGS, "--grid", "lr=0.02,0.05", "--out", str(sweep)]) == 2
    line = one_error_line(capsys)
    assert "was made with another grid (loss=bce,mse there, lr=0.02,0.05 here)" in line
    assert "another --out starts a new sweep, --extend adds this grid's runs to it" in line
    assert snapshot(sweep) == before


def test_compare_extend_adds_the_runs_and_results_and_report_cover_them_all(sweep, capsys):
    argv = ["compare", *SWEEP_FLAGS, "--grid", "lr=0.02,0.05", "--out", str(sweep), "--extend"]
    kept = (sweep / "loss-bce" / "model.safetensors").read_bytes()
    assert main(argv) == 0
    everything = ["loss-bce", "loss-mse", "lr-0.02", "lr-0.05"]
    assert results_runs(sweep) == everything
    rows = json.loads((sweep / "results.json").read_text())
    assert [(row["loss"], row["lr"]) for row in rows] == [("bce", 0.01), ("mse", 0.01), ("bce", 0.02), ("bce", 0.05)]
    assert [spec.grid for spec in read_sweep(sweep).specs] == [{"loss": ("bce", "mse")}, {"lr": (0.02, 0.05)}]
    assert (sweep / "loss-bce" / "model.safetensors").read_bytes() == kept  # finished runs are not retrained
    assert main(["report", str(sweep)]) == 0
    assert [run.name for run in find_runs(sweep)[0]] == everything  # the report lists results.json's runs
    assert "4 runs on" in (sweep / "report.html").read_text()
    # Rerunning either grid, or the folder alone, trains nothing and keeps describing all four.
    for again in (
        ["compare", *SWEEP_FLAGS, "--grid", "loss=bce,mse", "--out", str(sweep)],
        argv,
        ["compare", "--out", str(sweep), "--quiet", "--no-report"],
    ):
        capsys.readouterr()
        assert main(again) == 0
        assert "4 runs (4 done before, 0 to resume, 0 to train)" in capsys.readouterr().out
        assert results_runs(sweep) == everything


def test_compare_into_a_folder_that_is_not_a_sweep_is_refused(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "results.csv").write_text("my,own\n1,2\n")
    (project / "report.html").write_text("<p>my report</p>")
    before = snapshot(project)
    assert main(["compare", *SWEEP_FLAGS, "--grid", "loss=bce", "--out", str(project)]) == 2
    line = one_error_line(capsys)
    assert "holds report.html and results.csv and no sweep.yaml, so it is not a sweep folder" in line
    assert snapshot(project) == before


# --- Ctrl-C


def test_interrupted_train_prints_the_resume_command_and_it_works(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_train_epoch = train_loop.train_epoch

    def interrupt_in_epoch_2(stack, *args, **kwargs):
        if stack[0].state.epoch == 1:
            raise KeyboardInterrupt
        return real_train_epoch(stack, *args, **kwargs)

    monkeypatch.setattr(train_loop, "train_epoch", interrupt_in_epoch_2)
    assert main(["train", *TINY_FLAGS, "--epochs", "3", "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"aelab: interrupted; continue the run with `aelab train --resume {run}`"
    assert not (run / LOCK_FILE).exists() and read_status(run)["epochs_done"] == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet", "--no-report"]) == 0
    assert load_run(run).finished and len(load_run(run).history) == 3


def test_interrupted_compare_prints_the_command_that_finishes_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "train_epoch", interrupt)  # the one loop, stacked or not
    assert main(["compare", *SWEEP_FLAGS, "--grid", "loss=bce,mse", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == f"aelab: interrupted; finish the sweep with `aelab compare --out {out}`"
    monkeypatch.undo()
    assert main(["compare", "--out", str(out), "--quiet", "--no-report"]) == 0
    assert results_runs(out) == ["loss-bce", "loss-mse"]
    assert all(load_run(out / name).finished for name in results_runs(out))


# --- a kill while the report is written


# Runs `aelab ARGS...` with os.replace patched: when report.html is about to be replaced, its
# temporary file is cut to half (as a kill in the middle of the write leaves it), SIGNAL is
# written and the process hangs, to be killed.
HANG_AT_REPORT_WRITE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    signal_file, *argv = sys.argv[1:]
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if str(target).endswith("report.html"):
            os.truncate(source, os.path.getsize(source) // 2)
            Path(signal_file).write_text("writing")
            time.sleep(120)
        return real_replace(source, target, *args, **kwargs)

    os.replace = replace
    from aelab.cli import main
    sys.exit(main(argv))
    """
)


def test_a_kill_while_the_report_is_written_keeps_the_old_report_whole(tmp_path, capsys):
    run, signal_file = tmp_path / "run", tmp_path / "signal"
    assert main(["train", *TINY_FLAGS, "--out", str(run)]) == 0
    before = snapshot(run)
    assert before["report.html"].rstrip().endswith(b"</html>")
    process = subprocess.Popen(
        [sys.executable, "-c", HANG_AT_REPORT_WRITE, str(signal_file), "report", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: signal_file.exists() or process.poll() is not None)
        assert process.poll() is None, process.stderr.read()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".report.html.")]
    assert len(leftovers) == 1  # the torn temporary...
    after = snapshot(run)
    del after[leftovers[0]]
    assert after == before  # ...while report.html and every other file are as they were
    # The folder is still a plain run folder: reported again, and replaceable with --overwrite.
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_text().rstrip().endswith("</html>")
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
