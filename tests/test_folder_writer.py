"""The background writer of a run's own files: in order, whole, and a failure stops it."""

import threading

import pytest

import aelab.runs.files
from aelab import RunConfig
from aelab.errors import RunFolderError
from aelab.findings import read_findings
from aelab.runs import FolderWriter, read_metrics, read_status
from aelab.train import train

from .conftest import TINY


def test_writes_land_in_the_order_given_and_flush_waits_for_them(tmp_path, monkeypatch):
    landed = []
    real = aelab.runs.files.os.replace
    gate = threading.Event()

    def replace(source, target):
        gate.wait(10)  # the first write is held until the test has handed over all of them
        landed.append(target)
        return real(source, target)

    monkeypatch.setattr(aelab.runs.files.os, "replace", replace)
    paths = [tmp_path / name for name in ("checkpoint", "metrics", "status", "checkpoint")]
    with FolderWriter() as writer:
        for number, path in enumerate(paths):
            writer.write(path, str(number).encode())
        assert landed == []  # training goes on while they wait
        gate.set()
        writer.flush()
        assert [str(p) for p in landed] == [str(p) for p in paths]
    assert (tmp_path / "checkpoint").read_text() == "3"


def test_a_failed_write_drops_the_later_ones_and_is_raised_in_the_caller(tmp_path, monkeypatch):
    real = aelab.runs.files.os.replace

    def replace(source, target):
        if str(target).endswith("checkpoint"):
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(aelab.runs.files.os, "replace", replace)
    writer = FolderWriter()
    writer.write(tmp_path / "first", b"1")
    writer.write(tmp_path / "checkpoint", b"2")
    writer.write(tmp_path / "metrics", b"3")  # after the failed checkpoint: must not land
    with pytest.raises(RunFolderError, match="No space left on device"):
        writer.flush()
    with pytest.raises(RunFolderError):
        writer.write(tmp_path / "later", b"4")
    with pytest.raises(RunFolderError):
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first"]


def test_leaving_the_block_on_an_error_waits_for_the_writes_and_keeps_that_error(tmp_path):
    with pytest.raises(KeyboardInterrupt), FolderWriter() as writer:
        writer.write(tmp_path / "status.json", b"{}")
        raise KeyboardInterrupt
    assert (tmp_path / "status.json").read_bytes() == b"{}"
    assert threading.active_count() == 1 or all(t.name != "aelab-folder-writer" for t in threading.enumerate())


def test_a_run_leaves_no_writer_thread_and_its_files_are_whole(tmp_path):
    config = RunConfig.from_dict(TINY)
    result = train(config, tmp_path / "run", progress=False, doctor=False, report=False)
    assert all(t.name != "aelab-folder-writer" for t in threading.enumerate())
    assert read_metrics(tmp_path / "run") == result.history
    assert read_status(tmp_path / "run")["state"] == "finished"


def test_the_doctors_findings_are_written_off_the_training_thread_and_end_final(tmp_path, monkeypatch):
    # findings.json used to be read, merged and fsynced on the training thread every epoch
    written = []
    real = aelab.runs.files.os.replace

    def replace(source, target):
        if str(target).endswith("findings.json"):
            written.append(threading.current_thread() is threading.main_thread())
        return real(source, target)

    monkeypatch.setattr(aelab.runs.files.os, "replace", replace)
    config = RunConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 3}})
    result = train(config, tmp_path / "run", progress=False, report=False)
    assert written and not any(written)  # every write went through the run's writer thread
    saved = read_findings(tmp_path / "run")
    assert [f.to_dict() for f in saved] == [f.to_dict() for f in result.extras["findings"]]
