"""What holds a kernel to its slice on a real GPU beyond the framework caps: the watchdog against an
allocation that bypasses them, exclusive mode, and MPS mode where the MPS daemon can be started.

Each test starts its own worker with the settings it needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpu_support import GiB, MiB, kernel_in_slice, nvidia_smi, recording_watch, requires_module, wait_until

from tf_remoting.client import RuntimeClient
from tf_remoting.client.runtime import NotFound, ResourceExhausted
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.gpu

GRACE = 3.0

# cuMemAlloc through ctypes and the driver API (libcuda ships with the driver): no framework sees it,
# so no soft cap applies. The pointer is never freed: only the watchdog can take the memory back.
RAW_ALLOCATE = """
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
assert cuda.cuInit(0) == 0
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
assert cuda.cuCtxSetCurrent(ctx) == 0
rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t({n}))
rc
"""


async def test_watchdog_warns_interrupts_then_kills_a_raw_allocation_over_the_slice(
        tf_worker_factory: type[WorkerProcess]) -> None:
    worker = tf_worker_factory(["--backend", "nvml", "--isolation", "soft", "--watchdog-action", "kill",
                                "--watchdog-grace", str(GRACE), "--sample-interval", "0.25"]).start()
    async with worker.client() as client, kernel_in_slice(client, 1 * GiB, 10) as k, \
            recording_watch(client) as watch:
        assert await k.value(RAW_ALLOCATE.format(n=2 * GiB)) == 0, "cuMemAlloc of 2 GiB failed"
        busy = await k.remote.send_execute("import time\ntime.sleep(120)")

        async def killed() -> list[pb.Event]:
            return [e for e in watch.events(k.lease.id) if e.kind == pb.EVENT_KIND_WATCHDOG_KILL]

        await wait_until("the watchdog's kill", killed, timeout=4 * GRACE + 15)
        await wait_until("the kernel's exit", lambda: _exited(client, k.kernel.id), timeout=30)
        interrupted = _reply_of(k.remote, busy)
        events = watch.events(k.lease.id)
    when = {kind: next((e.time for e in events if e.kind == kind), None) for kind in
            (pb.EVENT_KIND_LIMIT_WARNING, pb.EVENT_KIND_WATCHDOG_INTERRUPT, pb.EVENT_KIND_WATCHDOG_KILL)}
    story = "\n".join(f"{e.time:.2f} {pb.EventKind.Name(e.kind)}: {e.message}" for e in events)
    assert None not in when.values(), "warning, interrupt and kill are each an event:\n" + story
    warned, interrupt, kill = (float(when[kind] or 0) for kind in when)
    slack = 1.5  # sampling (0.25 s) and event delivery
    assert GRACE - 0.3 <= interrupt - warned <= GRACE + slack, story
    assert GRACE - 0.3 <= kill - interrupt <= GRACE + slack, story
    assert "over its 1 GiB VRAM limit" in story
    assert interrupted is None or interrupted["content"].get("ename") == "KeyboardInterrupt", interrupted


async def _exited(client: RuntimeClient, kernel_id: str) -> bool:
    try:
        return (await client.kernel_state(kernel_id)).status == pb.KERNEL_STATUS_EXITED
    except NotFound:  # reclaimed with its lease
        return True


def _reply_of(remote: RemoteKernel, msg_id: str) -> dict[str, Any] | None:
    """The error the interrupted cell reported on iopub, if it reached us before the kill."""
    while not remote.iopub.empty():
        msg = remote.iopub.get_nowait()
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "error":
            return msg
    return None


async def test_exclusive_lease_gets_the_whole_device_and_refuses_a_second(
        tf_worker_factory: type[WorkerProcess]) -> None:
    requires_module("torch")
    worker = tf_worker_factory(["--backend", "nvml", "--watchdog-action", "warn"]).start()
    async with worker.client() as client:
        device = (await client.inventory()).devices[0]
        async with kernel_in_slice(client, 1 * GiB, 10, mode=pb.ISOLATION_MODE_EXCLUSIVE) as k:
            lease_slice = k.lease.slices[0]
            assert k.lease.mode == pb.ISOLATION_MODE_EXCLUSIVE
            assert (lease_slice.vram, lease_slice.compute) == (device.vram_total, 100)
            with pytest.raises(ResourceExhausted) as refused:
                await client.allocate(vram=1 * GiB, compute=10)
            assert str(refused.value), "the refusal says why"
            with pytest.raises(ResourceExhausted):
                await client.allocate(vram=1 * GiB, compute=10, mode=pb.ISOLATION_MODE_EXCLUSIVE)
            total, applied = await k.value(
                "import torch\nfrom tf_remoting.kernel.caps import applied\n"
                "(torch.cuda.mem_get_info()[1], dict(applied))")
            assert abs(total - device.vram_total) <= 1 * MiB, "the kernel sees the whole GPU"
            assert applied == {}, f"no caps in exclusive mode, found {applied}"
            smi_total = int(nvidia_smi("--query-gpu=uuid,memory.total")[device.index][1])
            assert abs(total / MiB - smi_total) <= 1
            # More than any soft slice here would allow: 3/4 of the GPU.
            n = int(device.vram_total * 0.75) // GiB * GiB
            assert await k.value(f"y = torch.empty({n}, dtype=torch.uint8, device='cuda')\n"
                                 "torch.cuda.synchronize()\ny.numel()", timeout=240) == n


@contextlib.contextmanager
def mps_daemon(root: Path) -> Iterator[dict[str, str]]:
    """Start an MPS control daemon with its own pipe and log folders; the variables clients need.

    Skips with the reason when it cannot be started here; quits it afterwards.
    """
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        pytest.skip("nvidia-cuda-mps-control is not on PATH: MPS cannot be started on this machine")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
    for folder in env.values():
        Path(folder).mkdir(parents=True)
    full = {**os.environ, **env}
    started = subprocess.run([control, "-d"], env=full, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        pytest.skip(f"the MPS daemon did not start (exit {started.returncode}): {started.stderr.strip()}")
    try:
        # A client through it: where the runtime refuses MPS, this fails and says why.
        probe = subprocess.run([sys.executable, "-c", RAW_ALLOCATE.format(n=64 * MiB) + "\nassert rc == 0, rc"],
                               env=full, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            log = (root / "log" / "control.log")
            pytest.skip("the MPS daemon started but a CUDA client could not use it: "
                        f"{probe.stderr.strip()[-500:]} {log.read_text()[-500:] if log.exists() else ''}")
        yield env
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([control], input="quit\n", env=full, text=True, capture_output=True, timeout=30)


async def test_mps_mode_limits_the_kernel_where_the_daemon_runs(
        tf_worker_factory: type[WorkerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requires_module("torch")
    with mps_daemon(tmp_path / "mps") as env:
        for name, value in env.items():  # the worker, its nannies and kernels inherit them
            monkeypatch.setenv(name, value)
        worker = tf_worker_factory(["--backend", "nvml", "--watchdog-action", "warn"]).start()
        async with worker.client() as client:
            device = (await client.inventory()).devices[0]
            assert pb.ISOLATION_MODE_MPS in device.modes, "the worker did not notice the MPS daemon"
            async with kernel_in_slice(client, 2 * GiB, 30, mode=pb.ISOLATION_MODE_MPS) as k:
                assert k.lease.memory_enforcement == pb.MEMORY_ENFORCEMENT_MPS
                limits = await k.value("import os\n(os.environ.get('CUDA_MPS_PINNED_DEVICE_MEM_LIMIT'), "
                                       "os.environ.get('CUDA_MPS_ACTIVE_THREAD_PERCENTAGE'))")
                assert limits == ("0=2048M", "30"), limits
                assert await k.value("import torch\nx = torch.empty(2**30, dtype=torch.uint8, device='cuda')\n"
                                     "torch.cuda.synchronize()\nx.numel()", timeout=240) == 2**30
                past = await k.run("y = torch.empty(3 * 2**30, dtype=torch.uint8, device='cuda'); "
                                   "torch.cuda.synchronize()", timeout=240)
                assert past.status == "error", "MPS let the kernel past its 2 GiB limit"
                assert "out of memory" in past.reply["content"]["evalue"].lower(), past.reply["content"]
                assert await k.value("x.numel()") == 2**30, "the kernel did not survive"
                servers = [row for row in nvidia_smi("--query-compute-apps=pid,process_name")
                           if "mps-server" in row[-1]]
                assert servers, "nvidia-smi shows no MPS server: the kernel did not go through MPS"
        worker.cleanup()  # the worker and its kernels go before the daemon quits
