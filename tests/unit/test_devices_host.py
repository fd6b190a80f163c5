"""The host device backend, cgroup probing and per-lease telemetry, against real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tf_remoting.devices import DeviceError, HostBackend, open_backend
from tf_remoting.devices.cgroup import CgroupSlice, cgroup_v2_memory_root
from tf_remoting.worker.telemetry import Sampler, process_tree

MiB = 1024**2

ALLOCATE_200MB = "import sys; b = b'x' * (200 * 2**20); print('ready', flush=True); sys.stdin.read()"
BUSY = "import sys; print('ready', flush=True)\nwhile True: pass"
# A parent that does nothing itself; its child allocates. Usage must follow the whole tree.
PARENT_OF_ALLOCATOR = (
    "import subprocess, sys; "
    f"c = subprocess.Popen([sys.executable, '-c', {ALLOCATE_200MB!r}], stdin=sys.stdin); "
    "c.wait()"
)


@contextmanager
def child(code: str, ready: bool = True) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        if ready:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@pytest.fixture
def host() -> Iterator[HostBackend]:
    backend = HostBackend()
    yield backend
    backend.close()


def test_inventory_is_one_host_device_never_called_a_gpu(host: HostBackend) -> None:
    [d] = host.devices()
    assert d.kind == "host"
    assert d.uuid == f"host-{socket.gethostname()}"
    assert "gpu" not in d.name.lower() and d.name.startswith("host device (CPU/RAM")
    assert d.index == 0
    assert d.vram_total == psutil.virtual_memory().total
    assert d.multiprocessors == psutil.cpu_count(logical=True)
    assert d.modes == ("host",)
    expected = "cgroup" if cgroup_v2_memory_root() is not None else "watchdog"
    assert d.memory_enforcement == expected


def test_sample_devices_reports_ram_and_cpu(host: HostBackend) -> None:
    [s] = host.sample_devices()
    assert s.uuid == host.devices()[0].uuid
    assert 0 < s.vram_used <= host.devices()[0].vram_total
    assert 0.0 <= s.utilization <= 100.0


def test_child_allocating_200mb_shows_up_in_usage(host: HostBackend) -> None:
    uuid = host.devices()[0].uuid
    with child(ALLOCATE_200MB) as proc:
        seen: list[int] = []

        def big() -> bool:
            seen.append(host.usage(uuid, {proc.pid}).vram_used)
            return seen[-1] >= 200 * MiB

        assert eventually(big, timeout=10), f"usage never reached 200 MiB: {seen[-5:]}"
        assert seen[-1] < 400 * MiB


def test_cpu_busy_child_shows_utilization(host: HostBackend) -> None:
    uuid = host.devices()[0].uuid
    with child(BUSY) as proc:
        assert host.usage(uuid, {proc.pid}).utilization == 0.0  # first reading is the baseline
        utils: list[float] = []

        def busy() -> bool:
            utils.append(host.usage(uuid, {proc.pid}).utilization)
            return utils[-1] > 0.0

        assert eventually(busy, timeout=10, interval=0.3), utils
        # One spinning thread is at most one core of the host device.
        assert max(utils) <= 100.0 / host.devices()[0].multiprocessors + 5.0


def test_vanished_and_unknown_pids_count_as_nothing(host: HostBackend) -> None:
    uuid = host.devices()[0].uuid
    with child(ALLOCATE_200MB) as proc:
        pid = proc.pid
        assert host.usage(uuid, {pid}).vram_used > 0
    assert host.usage(uuid, {pid}).vram_used == 0
    assert host.usage(uuid, set()).vram_used == 0


def test_usage_of_another_device_is_an_error(host: HostBackend) -> None:
    with pytest.raises(DeviceError, match="no device"):
        host.usage("GPU-not-here", {os.getpid()})


def test_open_backend_kinds() -> None:
    backend = open_backend("host")
    try:
        assert backend.name == "host"
    finally:
        backend.close()
    with pytest.raises(ValueError, match="unknown device backend"):
        open_backend("cuda")


def test_auto_without_a_driver_is_the_host_device() -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver answers here")
    backend = open_backend("auto")
    try:
        assert backend.name == "host"
    finally:
        backend.close()
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        open_backend("nvml")


def test_process_tree_follows_descendants() -> None:
    with child(PARENT_OF_ALLOCATOR, ready=False) as proc:
        parent = psutil.Process(proc.pid)
        assert eventually(lambda: bool(parent.children()), timeout=10)
        kids = {c.pid for c in parent.children(recursive=True)}
        assert process_tree(proc.pid) == {proc.pid} | kids
        pid = proc.pid
    assert process_tree(pid) == set()


def test_sampler_sums_each_lease_over_its_kernel_trees(host: HostBackend) -> None:
    uuid = host.devices()[0].uuid
    sampler = Sampler(host)
    with child(PARENT_OF_ALLOCATOR, ready=False) as proc, child(ALLOCATE_200MB) as other:
        usages: list[int] = []

        def big() -> bool:
            devices, usage = sampler.sample([("lease-a", uuid, {proc.pid}), ("lease-b", uuid, set())])
            assert [d.uuid for d in devices] == [uuid]
            assert usage["lease-b"].vram_used == 0
            usages.append(usage["lease-a"].vram_used)
            return usages[-1] >= 200 * MiB

        assert eventually(big, timeout=10), usages[-5:]
        _, usage = sampler.sample([("both", uuid, {proc.pid, other.pid})])
        assert usage["both"].vram_used >= 400 * MiB


def test_cgroup_root_is_none_without_cgroup_v2(tmp_path: Path) -> None:
    assert cgroup_v2_memory_root(mount=tmp_path) is None
    (tmp_path / "cgroup.controllers").write_text("cpu io pids\n")
    assert cgroup_v2_memory_root(mount=tmp_path) is None


def test_cgroup_slice_writes_limits(tmp_path: Path) -> None:
    # A plain directory stands in for a cgroup here: this checks what is written, not enforcement.
    s = CgroupSlice(tmp_path, "lease-1")
    s.create()
    s.set_memory_max(512 * MiB)
    s.set_cpu_max(50.0, cpus=4)
    assert (s.path / "memory.max").read_text() == str(512 * MiB)
    assert (s.path / "cpu.max").read_text() == "200000 100000"
    s.set_memory_max(None)
    s.set_cpu_max(None)
    assert (s.path / "memory.max").read_text() == "max"
    assert (s.path / "cpu.max").read_text() == "max 100000"
    for f in s.path.iterdir():
        f.unlink()
    s.remove()
    s.remove()
    assert not s.path.exists()
    with pytest.raises(ValueError):
        CgroupSlice(tmp_path, "../escape")


def test_portable_psutil_path_measures_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where there is no /proc (macOS laptops) the backend reads through psutil instead.
    import tf_remoting.devices.host as host_module

    monkeypatch.setattr(host_module, "_LINUX", False)
    backend = HostBackend()
    uuid = backend.devices()[0].uuid
    try:
        with child(ALLOCATE_200MB) as big, child(BUSY) as busy:
            assert backend.usage(uuid, {busy.pid}).utilization == 0.0
            assert eventually(lambda: backend.usage(uuid, {big.pid}).vram_used >= 200 * MiB, timeout=10)
            assert eventually(lambda: backend.usage(uuid, {busy.pid}).utilization > 0.0,
                              timeout=10, interval=0.3)
            pid = big.pid
        assert backend.usage(uuid, {pid}).vram_used == 0
    finally:
        backend.close()


# 150 MiB, then 3 forked children that only wait; a line on stdin makes the parent allocate 60 MiB more.
FORKED_WORKERS = (
    "import os, sys, time\nb = bytearray(150 * 2**20)\nb[::4096] = b'x' * len(b[::4096])\n"
    "kids = []\nfor _ in range(3):\n    pid = os.fork()\n"
    "    if pid == 0:\n        time.sleep(120)\n        os._exit(0)\n"
    "    kids.append(pid)\nprint(*kids, flush=True)\nsys.stdin.readline()\n"
    "more = bytearray(60 * 2**20)\nmore[::4096] = b'x' * len(more[::4096])\n"
    "print('more', flush=True)\nsys.stdin.read()\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PSS comes from /proc/<pid>/smaps_rollup")
def test_forked_children_count_shared_memory_once_and_growth_at_once() -> None:
    backend = HostBackend()
    uuid = backend.devices()[0].uuid
    proc = subprocess.Popen([sys.executable, "-c", FORKED_WORKERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    kids = [int(p) for p in proc.stdout.readline().split()]
    try:
        pids = {proc.pid, *kids}
        parent_rss = psutil.Process(proc.pid).memory_info().rss
        summed_rss = sum(psutil.Process(p).memory_info().rss for p in pids)
        assert summed_rss > 3 * parent_rss  # what summing RSS says
        used = backend.usage(uuid, pids).vram_used
        assert 150 * MiB <= used < 1.5 * parent_rss, (used / MiB, parent_rss / MiB)
        alone = backend.usage(uuid, {proc.pid}).vram_used  # a lone process: its RSS
        assert abs(alone - psutil.Process(proc.pid).memory_info().rss) < 4 * MiB
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "more"
        grown = backend.usage(uuid, pids).vram_used  # within PSS_REFRESH_S: last PSS + RSS growth
        assert grown >= used + 55 * MiB, (used / MiB, grown / MiB)
    finally:
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()
        for pid in kids:  # reparented to init (or a subreaper), which reaps them
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(timeout=5)
        backend.close()
