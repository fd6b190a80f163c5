"""What the telemetry tick asks every second, answered from memory but never stale.

KernelSupervisor.state: state.json parsed and the nanny's command line checked once per version of
the file; a nanny that dies, turns zombie or whose pid changes hands is seen at once.
Sampler: process trees kept between samples, scanned again when stale, new, or a pid is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import tf_remoting.worker.kernels as kernels_module
from tf_remoting.devices.base import DeviceBackend, DeviceInfo, DeviceSample, Usage
from tf_remoting.devices.procfs import PidWatch
from tf_remoting.worker.kernels import KernelSupervisor
from tf_remoting.worker.telemetry import Sampler

KERNEL = "k" + "0" * 15


def write_state(supervisor: KernelSupervisor, kernel_id: str, **data: object) -> None:
    """Atomically, as the nanny writes it."""
    directory = supervisor.directory(kernel_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "state.json.tmp"
    tmp.write_text(json.dumps({"socket": "", "time": time.time(), "exit_code": None, **data}))
    os.replace(tmp, directory / "state.json")


def fake_nanny(directory: Path) -> subprocess.Popen[bytes]:
    """A process whose command line names the kernel's directory, as the real nanny's does."""
    return subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(600)", str(directory)])


@pytest.fixture(params=["pidfd", "proc"])
def supervisor(request: pytest.FixtureRequest, tmp_path: Path) -> KernelSupervisor:
    """Nannies watched through pidfds, or (where there are none) through /proc/<pid>/stat."""
    sup = KernelSupervisor(tmp_path / "st")
    if request.param == "proc":
        sup._pids.max_open = 0
    elif not PidWatch.supported():
        pytest.skip("no pidfds here")
    return sup


def both_ways(supervisor: KernelSupervisor, kernel_id: str) -> kernels_module.KernelProcess:
    """state() alone and in states() (one poll for all nannies) must agree."""
    one = supervisor.state(kernel_id)
    assert supervisor.states([kernel_id]) == {kernel_id: one}
    return one


def test_state_follows_the_file_and_the_nanny(supervisor: KernelSupervisor) -> None:
    assert supervisor.state(KERNEL).status == "starting"
    nanny = fake_nanny(supervisor.directory(KERNEL))
    try:
        write_state(supervisor, KERNEL, status="running", nanny_pid=nanny.pid, kernel_pid=4242)
        state = supervisor.state(KERNEL)
        assert (state.status, state.nanny_pid, state.kernel_pid) == ("running", nanny.pid, 4242)
        # The kernel restarted under the same nanny: a new state.json, a new kernel pid.
        write_state(supervisor, KERNEL, status="running", nanny_pid=nanny.pid, kernel_pid=4343)
        assert supervisor.state(KERNEL).kernel_pid == 4343
        # The nanny recorded the exit and lingers: exited with its code, though the nanny still runs.
        write_state(supervisor, KERNEL, status="exited", nanny_pid=nanny.pid, kernel_pid=4343, exit_code=3)
        assert supervisor.state(KERNEL) == kernels_module.KernelProcess("exited", nanny.pid, 4343, 3)
        write_state(supervisor, KERNEL, status="running", nanny_pid=nanny.pid, kernel_pid=4444)
        assert supervisor.state(KERNEL).status == "running"
        assert both_ways(supervisor, KERNEL).status == "running"
        nanny.kill()
        os.waitid(os.P_PID, nanny.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
        # Until reaped it is a zombie, which is no nanny either.
        assert both_ways(supervisor, KERNEL) == kernels_module.KernelProcess("exited", nanny.pid, 4444, -signal.SIGKILL)
        nanny.wait()
        assert both_ways(supervisor, KERNEL).exit_code == -signal.SIGKILL
    finally:
        nanny.kill()
        nanny.wait()


def test_states_sees_a_nanny_die_between_two_ticks(supervisor: KernelSupervisor) -> None:
    nannies = {f"k{i:015d}": fake_nanny(supervisor.directory(f"k{i:015d}")) for i in range(3)}
    try:
        for kernel_id, nanny in nannies.items():
            write_state(supervisor, kernel_id, status="running", nanny_pid=nanny.pid, kernel_pid=1)
        assert {k: s.status for k, s in supervisor.states(list(nannies)).items()} == dict.fromkeys(nannies, "running")
        victim = list(nannies)[1]
        nannies[victim].kill()
        nannies[victim].wait()
        states = supervisor.states(list(nannies))
        assert {k: s.status for k, s in states.items()} == {**dict.fromkeys(nannies, "running"), victim: "exited"}
        assert states[victim].exit_code == -signal.SIGKILL
    finally:
        for nanny in nannies.values():
            nanny.kill()
            nanny.wait()


def test_a_stranger_is_no_nanny(supervisor: KernelSupervisor) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_state(supervisor, KERNEL, status="running", nanny_pid=stranger.pid, kernel_pid=4242)
        assert supervisor.state(KERNEL).exit_code == -signal.SIGKILL
        assert supervisor.state(KERNEL).status == "exited"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_reused_pid_is_told_apart_by_its_start_time(supervisor: KernelSupervisor,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor._pids.max_open = 0  # without pidfds, which never follow a reused pid in the first place
    nanny = fake_nanny(supervisor.directory(KERNEL))
    try:
        write_state(supervisor, KERNEL, status="running", nanny_pid=nanny.pid, kernel_pid=4242)
        assert supervisor.state(KERNEL).status == "running"
        real = kernels_module._process_start
        monkeypatch.setattr(kernels_module, "_process_start",
                            lambda pid, *a: b"another" if pid == nanny.pid else real(pid, *a))
        assert supervisor.state(KERNEL).status == "exited"
    finally:
        nanny.kill()
        nanny.wait()


def test_steady_state_reads_no_file_and_no_command_line(supervisor: KernelSupervisor,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    nanny = fake_nanny(supervisor.directory(KERNEL))
    try:
        write_state(supervisor, KERNEL, status="running", nanny_pid=nanny.pid, kernel_pid=4242)
        assert supervisor.state(KERNEL).status == "running"
        calls = []
        monkeypatch.setattr(kernels_module, "_is_nanny", lambda *a: calls.append(a) or True)
        monkeypatch.setattr(kernels_module.json, "loads", lambda *a, **k: calls.append(a) or {})
        real_start = kernels_module._process_start
        starts = []
        monkeypatch.setattr(kernels_module, "_process_start", lambda *a: starts.append(a) or real_start(*a))
        for _ in range(5):
            assert supervisor.state(KERNEL).status == "running"
            assert supervisor.states([KERNEL])[KERNEL].status == "running"
        assert calls == []
        if supervisor._pids.watching(nanny.pid):
            assert starts == []  # one poll() instead
        else:  # without pidfds: one /proc read per look
            assert starts == [(nanny.pid, supervisor._stat)] * 10
    finally:
        nanny.kill()
        nanny.wait()


def test_a_half_written_or_odd_file_counts_as_starting(supervisor: KernelSupervisor) -> None:
    supervisor.directory(KERNEL).mkdir(parents=True)
    (supervisor.directory(KERNEL) / "state.json").write_text("{not json")
    assert supervisor.state(KERNEL).status == "starting"
    (supervisor.directory(KERNEL) / "state.json").write_text("{}")
    assert supervisor.state(KERNEL).status == "starting"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with /proc")
def test_portable_start_time_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    assert kernels_module._process_start(me) is not None
    assert kernels_module._process_start(me) == kernels_module._process_start(me)
    assert kernels_module._process_start(0) is None
    monkeypatch.setattr(kernels_module, "_LINUX", False)
    assert kernels_module._process_start(me) == psutil.Process(me).create_time()
    assert kernels_module._process_start(2**22 + 12345) is None


# ---------------------------------------------------------------- Sampler


class CountingBackend(DeviceBackend):
    """Records the pid sets it was asked about; every pid uses 1 byte."""

    name = "host"

    def __init__(self) -> None:
        self.asked: list[set[int]] = []

    def devices(self) -> list[DeviceInfo]:
        return []

    def sample_devices(self) -> list[DeviceSample]:
        return []

    def usage(self, device_uuid: str, pids: set[int]) -> Usage:
        self.asked.append(set(pids))
        return Usage(vram_used=len(pids), utilization=0.0)

    def close(self) -> None:
        pass


SPAWNER = (
    "import subprocess, sys, time\n"
    "kids = []\n"
    "for line in sys.stdin:\n"
    "    if line.strip() == 'reap':\n"
    "        for k in kids:\n"
    "            k.poll()\n"
    "        print(0, flush=True)\n"
    "        continue\n"
    "    kids.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']))\n"
    "    print(kids[-1].pid, flush=True)\n"
    "time.sleep(600)\n"
)


def spawn_child(parent: subprocess.Popen[str], command: str = "go") -> int:
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write(f"{command}\n")
    parent.stdin.flush()
    return int(parent.stdout.readline())


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the incremental scan is Linux only")
def test_sampler_reads_only_new_processes_between_full_scans() -> None:
    backend = CountingBackend()
    sampler = Sampler(backend, full_scan_seconds=3600)
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        first = spawn_child(parent)
        _, usage = sampler.sample([("a", "dev", {parent.pid})])
        assert backend.asked[-1] == {parent.pid, first} and sampler.full_scans == 1
        read = sampler.parents_read
        for _ in range(3):
            sampler.sample([("a", "dev", {parent.pid})])
        assert sampler.full_scans == 1 and backend.asked[-1] == {parent.pid, first}
        assert sampler.parents_read - read < 50  # only what else started on this machine meanwhile
        # A child started by a member of a tree is in it at the next sample, without a full scan.
        second = spawn_child(parent)
        sampler.sample([("a", "dev", {parent.pid})])
        assert backend.asked[-1] == {parent.pid, first, second} and sampler.full_scans == 1
        # One that exits leaves it.
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(first) and time.monotonic() < deadline:
            spawn_child(parent, "reap")  # until its parent reaped it
            time.sleep(0.02)
        assert not psutil.pid_exists(first)
        sampler.sample([("a", "dev", {parent.pid})])
        assert first not in backend.asked[-1] and second in backend.asked[-1]
        assert sampler.full_scans == 1
        # A new root is scanned in full (its descendants may be older than the last sample).
        sampler.sample([("a", "dev", {parent.pid}), ("b", "dev", {other.pid})])
        assert sampler.full_scans == 2 and backend.asked[-1] == {other.pid}
    finally:
        for p in (parent, other):
            p.kill()
            p.wait()
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()
    wait_gone(parent.pid)
    _, usage = sampler.sample([("a", "dev", {parent.pid})])
    assert usage["a"].vram_used == 0
    for pid in list(backend.asked[0]):  # the children the killed parent left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sampler_scans_in_full_after_full_scan_seconds() -> None:
    backend = CountingBackend()
    sampler = Sampler(backend, full_scan_seconds=0.2)
    me = os.getpid()
    sampler.sample([("a", "dev", {me})])
    sampler.sample([("a", "dev", {me})])
    assert sampler.full_scans == (2 if not sys.platform.startswith("linux") else 1)
    time.sleep(0.25)
    sampler.sample([("a", "dev", {me})])
    assert sampler.full_scans == (3 if not sys.platform.startswith("linux") else 2)
    sampler.sample([("a", "dev", set())])
    assert sampler.full_scans == (3 if not sys.platform.startswith("linux") else 2)  # nothing to scan for


def test_host_usages_measure_many_leases_in_one_call() -> None:
    from tf_remoting.devices import DeviceError, HostBackend

    host = HostBackend()
    try:
        uuid = host.devices()[0].uuid
        me = os.getpid()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        mine, empty, dead = host.usages([(uuid, {me}), (uuid, set()), (uuid, {gone.pid})])
        assert mine.vram_used > 0 and empty.vram_used == 0 and dead.vram_used == 0
        assert abs(host.usage(uuid, {me}).vram_used - mine.vram_used) < 64 << 20
        with pytest.raises(DeviceError):
            host.usages([(uuid, {me}), ("GPU-nope", {me})])
    finally:
        host.close()
