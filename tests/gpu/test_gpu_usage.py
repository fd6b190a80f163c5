"""Per-kernel VRAM and utilisation on a real GPU, against nvidia-smi and torch's own counters, and
what `%vgpu` and the Watch stream show.

Each test leases soft slices on the session's NVML worker and releases them. Kernels run torch.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from google.protobuf import text_format
from gpu_support import (
    GiB,
    MiB,
    kernel_in_slice,
    lease_now,
    recording_watch,
    requires_module,
    settled_vram,
    smi_process_memory,
    smi_utilization,
)

from tf_remoting.pytest_plugin import WorkerProcess
from tf_remoting.quantities import format_bytes

pytestmark = pytest.mark.gpu

CUDA_READY = "import torch\ntorch.zeros(1, device='cuda').item()"
UNAVAILABLE = "per-kernel VRAM unavailable here"


def close_to(measured_mib: float, expected_mib: float) -> bool:
    """Two readings of one process's VRAM agree: within 2 % or 32 MiB (nvidia-smi rounds to MiB)."""
    return abs(measured_mib - expected_mib) <= max(32.0, 0.02 * expected_mib)


async def test_per_kernel_vram_of_two_kernels_in_two_slices_at_once(nvml_worker: WorkerProcess) -> None:
    requires_module("torch")
    sizes = (1 * GiB, 3 * GiB)
    async with nvml_worker.client() as client, \
            kernel_in_slice(client, 4 * GiB, 25) as a, kernel_in_slice(client, 8 * GiB, 25) as b:
        assert a.lease.slices[0].device_uuid == b.lease.slices[0].device_uuid, "two slices of one GPU"
        kernels = (a, b)
        # What each kernel pays before it allocates anything: the CUDA context and torch's first block.
        for k in kernels:
            await k.value(CUDA_READY)
        baseline = {k.lease.id: await settled_vram(client, k.lease.id) for k in kernels}
        for k in kernels:
            assert baseline[k.lease.id] > 0, (
                f"lease {k.lease.id} shows 0 B with a CUDA context in its kernel (pid {k.pid}); "
                f"nvidia-smi lists {smi_process_memory()} (pid: MiB)")
        for k, n in zip(kernels, sizes, strict=True):
            reserved = await k.value(f"x = torch.empty({n}, dtype=torch.uint8, device='cuda')\n"
                                     "torch.cuda.synchronize()\ntorch.cuda.memory_reserved()")
            assert n <= reserved <= n + 64 * MiB, f"torch reserved {reserved} B for {n} B"
        # Both kernels hold their memory now: one reading of each, side by side.
        used = {k.lease.id: await settled_vram(client, k.lease.id) for k in kernels}
        smi = smi_process_memory()
        for k, n in zip(kernels, sizes, strict=True):
            grown = used[k.lease.id] - baseline[k.lease.id]
            assert abs(grown - n) <= 0.05 * n, (
                f"lease {k.lease.id} grew by {format_bytes(grown)} for a {format_bytes(n)} tensor "
                f"(baseline {format_bytes(baseline[k.lease.id])}, now {format_bytes(used[k.lease.id])})")
            if k.pid in smi:
                assert close_to(used[k.lease.id] / MiB, smi[k.pid]), (used[k.lease.id] / MiB, smi[k.pid])
        # The device's total counts both (and whatever else runs there).
        inv = await client.inventory()
        device = next(d for d in inv.devices if d.uuid == a.lease.slices[0].device_uuid)
        assert device.vram_used >= sum(used.values())


async def test_utilization_rises_during_a_matmul_loop_and_falls_after(nvml_worker: WorkerProcess) -> None:
    requires_module("torch")
    async with nvml_worker.client() as client, kernel_in_slice(client, 8 * GiB, 50) as k, \
            recording_watch(client) as watch:
        uuid = k.lease.slices[0].device_uuid
        await k.value("import torch, time\na = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
                      "b = a.clone()\n(a @ b).float().sum().item()")  # cuBLAS initialised before timing
        started = time.monotonic()
        await k.remote.send_execute(
            "t_end = time.time() + 10\nwhile time.time() < t_end:\n"
            "    for _ in range(20):\n        c = a @ b\n    torch.cuda.synchronize()\n")
        smi_during: list[float] = []
        while time.monotonic() < started + 9:
            smi_during.append(await asyncio.to_thread(smi_utilization, uuid))
            await asyncio.sleep(0.5)
        await k.run("1", timeout=60)  # queued behind the loop: answers once the loop has ended
        stopped = time.monotonic()
        await asyncio.sleep(4)
        smi_after = await asyncio.to_thread(smi_utilization, uuid)
        lease_during = [s.utilization for _, s in watch.lease_samples(k.lease.id, started + 2, stopped)]
        device_during = [d.utilization for _, d in watch.device_samples(uuid, started + 2, stopped)]
        lease_after = [s.utilization for _, s in watch.lease_samples(k.lease.id, stopped + 2.5)]
        device_after = [d.utilization for _, d in watch.device_samples(uuid, stopped + 2.5)]
    readings = (f"nvidia-smi during {smi_during}, after {smi_after}; lease during {lease_during}, after "
                f"{lease_after}; device during {device_during}, after {device_after}")
    assert max(smi_during) >= 50, "the loop did not load the GPU: " + readings
    assert device_during and max(device_during) >= 50, readings
    assert lease_during and max(lease_during) >= 30, "per-process utilisation did not rise: " + readings
    assert lease_after and max(lease_after) <= 10, readings
    assert device_after and max(device_after) <= 10, readings
    assert smi_after <= 10, readings


async def test_vgpu_status_and_watch_agree_with_nvidia_smi(nvml_worker: WorkerProcess) -> None:
    requires_module("torch")
    async with nvml_worker.client() as client, kernel_in_slice(client, 4 * GiB, 25) as k, \
            recording_watch(client) as watch:
        interval = (await client.inventory()).sample_interval_ms / 1000
        await k.value(CUDA_READY + "\nx = torch.empty(2 * 2**30, dtype=torch.uint8, device='cuda')\n"
                      "torch.cuda.synchronize()\nx.numel()")
        await settled_vram(client, k.lease.id)
        before = time.monotonic()
        used, text = await k.value("from tf_remoting.kernel.magic import status\ns = status()\n"
                                   "(s.vram_used, repr(s))")
        after = time.monotonic()
        smi = await asyncio.to_thread(smi_process_memory)
        shown = await k.run("%vgpu")
        await asyncio.sleep(2 * interval)
        around = [s.vram_used for _, s in watch.lease_samples(k.lease.id, before - interval, after + interval)]
    assert around, "no Watch sample of the lease around the %vgpu reading"
    assert min(around) <= used <= max(around), f"%vgpu {used} B, Watch {around}"
    assert k.pid in smi, f"nvidia-smi does not list the kernel (pid {k.pid}): {smi}"
    assert close_to(used / MiB, smi[k.pid]), f"%vgpu {used / MiB:.0f} MiB, nvidia-smi {smi[k.pid]} MiB"
    assert format_bytes(used) in text
    assert shown.status == "ok" and format_bytes(used) in (shown.data() or ""), shown.outputs


async def test_nvml_pids_of_another_namespace_are_said_not_shown_as_zero(
        tf_worker_factory: type[WorkerProcess]) -> None:
    """A worker in its own PID namespace (as in a container): NVML reports the kernels' host pids.

    The worker cannot match them, so it must say so in the inventory ("per-kernel VRAM unavailable
    here: ...") instead of showing 0 B for a kernel that holds 1 GiB.
    """
    requires_module("torch")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: cannot start a worker in its own PID namespace")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"this machine refuses a new PID namespace: {probe.stderr.strip()}")

    class NamespacedWorker(tf_worker_factory):  # type: ignore[valid-type,misc]
        def args(self) -> list[str]:
            # --kill-child: stopping unshare kills the worker, pid 1 of the namespace, and so every
            # process in it (nannies and kernels included).
            return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *super().args()]

        def cleanup(self) -> None:
            # The pids in its state files are the namespace's: never signal them from out here.
            self.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    worker = NamespacedWorker(["--backend", "nvml", "--watchdog-action", "warn"]).start()
    async with worker.client() as client, kernel_in_slice(client, 4 * GiB, 25) as k:
        await k.value(CUDA_READY + "\nx = torch.empty(2**30, dtype=torch.uint8, device='cuda')\n"
                      "torch.cuda.synchronize()\nx.numel()")
        smi = await asyncio.to_thread(smi_process_memory)
        await asyncio.sleep(2)
        lease = await lease_now(client, k.lease.id)
        inv = await client.inventory()
    used = sum(s.vram_used for s in lease.slices)
    described = text_format.MessageToString(inv)
    if used < GiB:
        assert UNAVAILABLE in described, (
            f"the lease shows {format_bytes(used)} for a kernel holding 1 GiB (NVML lists {smi}, pid: MiB; "
            f"the kernel is pid {k.pid} in its namespace), and the inventory does not say "
            f"{UNAVAILABLE!r}:\n{described}")
