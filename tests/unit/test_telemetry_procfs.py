"""ProcStatReader: stat files kept open between reads, bounded, and never following a reused pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tf_remoting.devices.procfs import PidWatch, ProcStatReader, default_max_open, stat_fields

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_reads_keep_the_file_open_and_fail_once_the_process_is_gone() -> None:
    reader = ProcStatReader(max_open=8)
    proc = sleeper()
    try:
        first = reader.read(proc.pid)
        assert first is not None and first.startswith(f"{proc.pid} (".encode())
        assert reader.open_files == 1
        again = reader.read(proc.pid)
        assert again is not None and stat_fields(again)[19] == stat_fields(first)[19]  # same start time
    finally:
        proc.kill()
        proc.wait()
    assert reader.read(proc.pid) is None  # gone: the kept file says so, whatever has the pid now
    assert reader.open_files == 0
    reader.close()


def test_a_kept_file_never_reads_another_process(tmp_path: Path) -> None:
    # A stand-in /proc whose "pid 7" is replaced by another process's directory: the open file
    # still reads the first one (as /proc's does until that process is gone), a fresh open the second.
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes(b"7 (a) S 1 " + b"0 " * 30)
    reader = ProcStatReader(max_open=4, proc=str(tmp_path))
    assert reader.read(7).startswith(b"7 (a)")
    (tmp_path / "7" / "stat").unlink()
    (tmp_path / "7" / "stat").write_bytes(b"7 (b) S 1 " + b"0 " * 30)
    assert reader.read(7).startswith(b"7 (a)")
    reader.forget(7)
    assert reader.read(7).startswith(b"7 (b)")
    reader.close()


def test_past_the_bound_files_are_opened_each_time() -> None:
    reader = ProcStatReader(max_open=1)
    me, parent = os.getpid(), os.getppid()
    assert reader.read(me) is not None and reader.read(parent) is not None
    assert reader.open_files == 1
    reader.keep_only(set())
    assert reader.open_files == 0
    unkept = ProcStatReader(max_open=0)
    assert unkept.read(me) is not None and unkept.open_files == 0
    assert unkept.read(2**22 + 12345) is None
    reader.close()


def test_fields_and_defaults() -> None:
    assert stat_fields(b"12 (a) b) c) R 1") is None  # cut short
    fields = stat_fields(b"12 (a) (b)) R " + b" ".join(str(i).encode() for i in range(4, 60)))
    assert fields is not None and fields[0] == b"R" and fields[1] == b"4" and fields[19] == b"22"
    assert 0 <= default_max_open() <= 1024


@pytest.mark.skipif(not PidWatch.supported(), reason="no pidfds here")
def test_pid_watch_polls_every_watched_process_at_once() -> None:
    watch = PidWatch(max_open=8)
    procs = [sleeper() for _ in range(3)]
    try:
        assert all(watch.watch(p.pid) for p in procs)
        assert watch.exited() == set() and all(watch.alive(p.pid) for p in procs)
        procs[1].kill()
        os.waitid(os.P_PID, procs[1].pid, os.WEXITED | os.WNOWAIT)  # a zombie has exited too
        assert watch.exited() == {procs[1].pid} and watch.alive(procs[1].pid) is False
        procs[1].wait()
        assert watch.exited() == {procs[1].pid}
        watch.unwatch(procs[1].pid)
        assert watch.exited() == set() and watch.alive(procs[1].pid) is None and watch.watched == 2
        watch.keep_only({procs[0].pid})
        assert watch.watched == 1 and watch.watching(procs[0].pid) and not watch.watching(procs[2].pid)
        assert not watch.watch(2**22 + 12345)  # no such process
    finally:
        for p in procs:
            p.kill()
            p.wait()
        watch.close()
    assert watch.watched == 0


def test_pid_watch_past_its_bound_declines() -> None:
    watch = PidWatch(max_open=0)
    assert not watch.watch(os.getpid()) and watch.alive(os.getpid()) is None and watch.exited() == set()
