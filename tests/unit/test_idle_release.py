"""Idle release: a warned kernel is shut down after idle_warning; a failed shutdown is reported, not announced free."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyter_client.multikernelmanager import AsyncMultiKernelManager

from tf_jupyter.idle import IdleRelease
from tf_jupyter.pool.events import Events
from tf_jupyter.pool.kernels import Kernels, KernelSlice


def drain(queue: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def idle_kernel(kernels: Kernels, kernel_id: str, qos: str = "medium") -> KernelSlice:
    k = KernelSlice(kernel_id, "127.0.0.1:1", f"lease-{kernel_id}", "small", qos, last_active=0.0)
    kernels.register(k)
    return k


async def test_failed_shutdown_is_reported_and_retried_not_announced_free(caplog) -> None:
    kernels, events = Kernels(), Events()
    stream = events.subscribe()
    # A real kernel manager that does not know the kernel (it went away behind our back): its
    # shutdown_kernel raises, as any failed shutdown would.
    manager = AsyncMultiKernelManager()
    idle = IdleRelease(kernels, events, manager.shutdown_kernel, idle_release=10, idle_warning=5)
    idle_kernel(kernels, "k-failing")
    idle_kernel(kernels, "k-critical", qos="critical")

    await idle.check(now=20.0)
    assert [(e["kind"], e["kernel_id"]) for e in drain(stream)] == [("idle_warning", "k-failing")]

    with caplog.at_level(logging.WARNING, logger="tf_jupyter.idle"):
        await idle.check(now=30.0)
    messages = drain(stream)
    assert [(e["kind"], e["kernel_id"]) for e in messages] == [("idle_release_failed", "k-failing")], messages
    assert "could not be shut down" in messages[0]["message"] and "still holds its slice" in messages[0]["message"]
    assert "k-failing" in kernels  # still ours: the slice is not free
    assert any("k-failing" in r.getMessage() for r in caplog.records), caplog.records

    shut: list[str] = []

    async def shutdown(kernel_id: str) -> None:
        shut.append(kernel_id)

    idle.shutdown = shutdown
    await idle.check(now=35.0)  # the next round tries again
    assert shut == ["k-failing"]
    assert [(e["kind"], e["kernel_id"]) for e in drain(stream)] == [("idle_release", "k-failing")]
    assert "k-failing" not in kernels and "k-critical" in kernels


async def test_activity_after_the_warning_keeps_the_kernel() -> None:
    kernels, events = Kernels(), Events()
    shut: list[str] = []

    async def shutdown(kernel_id: str) -> None:
        shut.append(kernel_id)

    idle = IdleRelease(kernels, events, shutdown, idle_release=10, idle_warning=5)
    k = idle_kernel(kernels, "k-busy")
    await idle.check(now=20.0)
    assert k.idle_warned
    kernels.note_utilization(k.worker, k.lease_id, 50.0)
    await idle.check(now=30.0)
    assert shut == [] and not k.idle_warned


def test_a_lease_active_at_its_worker_makes_its_kernel_active_again() -> None:
    """The worker's Lease.last_active counts a cell running on the CPU, which no utilization sample
    shows: when it moves on, the kernel is active again (its warning withdrawn); when it stays, not."""
    import time

    from tf_remoting.proto import pb

    kernels = Kernels()
    busy, idle = idle_kernel(kernels, "k-busy"), idle_kernel(kernels, "k-idle")
    busy.idle_warned = idle.idle_warned = True
    leases = [pb.Lease(id="lease-k-busy", last_active=1000.0), pb.Lease(id="lease-k-idle", last_active=900.0),
              pb.Lease(id="lease-not-ours", last_active=5000.0)]
    kernels.note_activity("127.0.0.1:1", leases)
    assert busy.last_active > 0 and not busy.idle_warned  # first look: both had moved on from nothing
    busy.last_active = idle.last_active = 0.0
    busy.idle_warned = idle.idle_warned = True
    leases[0].last_active = 1010.0  # the busy one's cell still runs; the idle one's time stays
    kernels.note_activity("127.0.0.1:1", leases)
    assert time.monotonic() - busy.last_active < 5 and not busy.idle_warned
    assert idle.last_active == 0.0 and idle.idle_warned
    kernels.note_activity("127.0.0.1:2", [pb.Lease(id="lease-k-idle", last_active=99999.0)])  # another worker's
    assert idle.last_active == 0.0
