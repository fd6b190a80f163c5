"""Helpers of the gpu suite: independent readings (nvidia-smi, torch in a child process), kernels in
slices, and the Watch stream recorded in the background. Every wait is bounded."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tf_remoting.client import RuntimeClient
from tf_remoting.client.session import ExecuteResult, RemoteKernel
from tf_remoting.proto import pb

MiB = 1 << 20
GiB = 1 << 30


# ---------------------------------------------------------------------------- independent readings


def nvidia_smi(*args: str) -> list[list[str]]:
    """`nvidia-smi ARGS --format=csv,noheader,nounits` as rows of stripped fields."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH: no independent reading to compare with")
    out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]


def smi_process_memory() -> dict[int, int]:
    """{pid: MiB} of every compute process nvidia-smi lists ("[N/A]" rows left out)."""
    return {int(pid): int(mem) for pid, mem in nvidia_smi("--query-compute-apps=pid,used_memory")
            if pid.isdigit() and mem.isdigit()}


def smi_utilization(uuid: str) -> float:
    for row in nvidia_smi("--query-gpu=uuid,utilization.gpu"):
        if row[0] == uuid:
            return float(row[1])
    raise AssertionError(f"nvidia-smi does not list {uuid}")


def torch_reading(code: str, timeout: float = 120) -> Any:
    """Run `code` (its last line an expression) in a child Python with torch; the expression's value."""
    script = "import torch\n" + "\n".join(code.strip().splitlines()[:-1]) + \
        f"\nprint(repr({code.strip().splitlines()[-1]}))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    if proc.returncode != 0:
        if "No module named 'torch'" in proc.stderr:
            pytest.skip("torch is not installed: no independent reading from torch")
        raise AssertionError(f"the torch child failed: {proc.stderr[-2000:]}")
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def requires_module(name: str) -> None:
    """Skip unless the kernels (which run this Python) can import `name`."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed in {sys.executable}, the kernels' Python")


# ---------------------------------------------------------------------------- kernels in slices


@dataclass
class SliceKernel:
    lease: pb.Lease
    kernel: pb.Kernel
    remote: RemoteKernel
    pid: int = 0  # the kernel process's pid as the kernel sees it (os.getpid())

    async def run(self, code: str, timeout: float = 180) -> ExecuteResult:
        return await self.remote.execute(code, timeout=timeout)

    async def value(self, code: str, timeout: float = 180) -> Any:
        """Execute code whose last line is an expression; its value (a Python literal)."""
        result = await self.run(code, timeout)
        if result.status != "ok":
            content = result.reply["content"]
            raise AssertionError(f"the kernel failed: {content.get('ename')}: {content.get('evalue')}\n"
                                 f"{''.join(content.get('traceback', []))[-3000:]}")
        text = result.data()
        if text is None:
            raise AssertionError(f"the kernel returned no value for {code!r}; outputs: {result.outputs}")
        return ast.literal_eval(text)


@contextlib.asynccontextmanager
async def kernel_in_slice(client: RuntimeClient, vram: int, compute: int,
                          mode: int = pb.ISOLATION_MODE_SOFT) -> AsyncIterator[SliceKernel]:
    """Lease a slice, start a kernel in it, wait until it answers; release the lease afterwards."""
    lease = await client.allocate(vram=vram, compute=compute, mode=mode)
    remote: RemoteKernel | None = None
    try:
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, kernel.id, key)
        await remote.connect()
        await remote.wait_ready(timeout=120)
        handle = SliceKernel(lease, kernel, remote)
        handle.pid = int(await handle.value("import os\nos.getpid()"))
        yield handle
    finally:
        if remote is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(remote.close(), 10)
        with contextlib.suppress(Exception):
            await client.release(lease.id)


async def lease_now(client: RuntimeClient, lease_id: str) -> pb.Lease:
    for lease in await client.list_leases():
        if lease.id == lease_id:
            return lease
    raise AssertionError(f"lease {lease_id} is not listed by the worker")


async def settled_vram(client: RuntimeClient, lease_id: str, timeout: float = 30.0) -> int:
    """The lease's VRAM once three readings in a row agree (the sampler has caught up)."""
    readings: list[int] = []

    async def probe() -> bool:
        readings.append(sum(s.vram_used for s in (await lease_now(client, lease_id)).slices))
        return len(readings) >= 3 and readings[-1] == readings[-2] == readings[-3]

    await wait_until(f"lease {lease_id}'s VRAM to settle", probe, timeout, interval=0.3)
    return readings[-1]


async def wait_until(what: str, probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Await probe() until it returns something true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s (last reading: {last!r})")


# ---------------------------------------------------------------------------- Watch, recorded


@dataclass
class WatchRecord:
    """Every WatchResponse received, with the monotonic time it arrived."""

    items: list[tuple[float, pb.WatchResponse]] = field(default_factory=list)

    def lease_samples(self, lease_id: str, since: float = 0.0,
                      until: float = float("inf")) -> list[tuple[float, pb.LeaseSample]]:
        return [(t, s) for t, item in self.items if since <= t <= until
                for s in item.leases if s.lease_id == lease_id]

    def device_samples(self, uuid: str, since: float = 0.0,
                       until: float = float("inf")) -> list[tuple[float, pb.DeviceSample]]:
        return [(t, d) for t, item in self.items if since <= t <= until
                for d in item.devices if d.device_uuid == uuid]

    def events(self, lease_id: str) -> list[pb.Event]:
        return [e for _, item in self.items for e in item.events if e.lease_id == lease_id]


@contextlib.asynccontextmanager
async def recording_watch(client: RuntimeClient) -> AsyncIterator[WatchRecord]:
    record = WatchRecord()

    async def consume() -> None:
        async for item in client.watch(include_devices=True):
            record.items.append((time.monotonic(), item))

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.5)  # the stream is open before the caller acts
        yield record
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)
