"""Idle release: warn, then shut down vGPU kernels idle for a while: no utilization of the slice and
no cell running (KernelSlice.last_active, tf_jupyter.pool.kernels).

Two reasons, each its own class: `IdleRelease` (idle for `idle_release` seconds, whoever waits) and
`QosRelease` (idle for `idle_warning` seconds while a request of a higher QoS waits at the same
worker for the room the kernel holds: QoS that holds; which kernels is tf_jupyter.preemption's rule).
Plain asyncio over the pool's kernels and events; the server extension runs `check` every few
seconds with a function that shuts a kernel down through Jupyter's kernel manager. Both say each
step on the event stream the panel shows (kinds idle_warning, idle_release, idle_release_failed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from tf_jupyter.pool.events import Events
from tf_jupyter.pool.kernels import Kernels, KernelSlice
from tf_jupyter.preemption import Device, Held, Waiter, to_release
from tf_jupyter.qos import HIGHEST_QOS, qos_name
from tf_remoting.proto import WAIT_QUOTA, pb

__all__ = ["IdleRelease", "QosRelease", "qos_inputs"]


log = logging.getLogger("tf_jupyter.idle")


class IdleRelease:
    """After `idle_release` seconds idle (no utilization, no cell running) a kernel is warned;
    `idle_warning` seconds later it is shut down and its slice announced free. A shutdown that fails is logged and
    reported (kind idle_release_failed), and tried again at the next check. Kernels of the highest
    QoS are exempt."""

    def __init__(self, kernels: Kernels, events: Events, shutdown: Callable[[str], Awaitable[None]],
                 idle_release: float, idle_warning: float) -> None:
        self.kernels = kernels
        self.events = events
        self.shutdown = shutdown
        self.idle_release = idle_release
        self.idle_warning = idle_warning

    @property
    def interval(self) -> float:
        """How often to check."""
        return min(5.0, max(0.5, self.idle_release / 4))

    async def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for k in list(self.kernels.values()):
            if k.qos == HIGHEST_QOS:
                continue
            idle = now - k.last_active
            if idle > self.idle_release and not k.idle_warned:
                k.idle_warned, k.warned_at = True, now
                self.events.emit("idle_warning", f"kernel idle for {idle:.0f} s: it will be shut down in "
                                 f"{self.idle_warning:.0f} s to free its slice unless it becomes active",
                                 kernel_id=k.kernel_id)
            elif k.idle_warned and now - k.warned_at > self.idle_warning:
                try:
                    await self.shutdown(k.kernel_id)
                except Exception as exc:  # whatever the kernel manager raised: say it, keep the kernel, retry
                    reason = str(exc) or type(exc).__name__
                    log.warning("idle release of kernel %s failed: %s; trying again in %.0f s", k.kernel_id,
                                reason, self.interval)
                    self.events.emit("idle_release_failed", f"kernel idle for {idle:.0f} s could not be shut down "
                                     f"({reason}); it still holds its slice, trying again in {self.interval:.0f} s",
                                     kernel_id=k.kernel_id)
                    continue
                self.kernels.forget(k.kernel_id)
                self.events.emit("idle_release", f"kernel shut down after {idle:.0f} s idle; "
                                 "its slice is free", kernel_id=k.kernel_id)


def qos_inputs(inventories: Mapping[str, pb.Inventory]) -> tuple[
        list[Waiter], list[Device], Callable[[KernelSlice], tuple[tuple[str, int, int], ...]]]:
    """What `QosRelease.check` reads, from each worker's last inventory (address -> Inventory): every
    worker's waiting line in order (anyone's entries: QoS, size, count, whole device, model, whether it waits for room
    or on its quota), the devices with what is free (total minus leased, every principal counted),
    and a kernel's slices as its lease shows them (none when the inventory does not hold it)."""
    waiting = [Waiter(address, qos_name(e.qos), e.slice.vram, e.slice.compute, max(1, e.count),
                      whole_device=e.whole_device, for_room=e.reason != WAIT_QUOTA, model=e.model)
               for address, inv in inventories.items() for e in sorted(inv.waiting, key=lambda e: e.position)]
    devices = [Device(address, d.uuid, d.vram_total, max(0, d.vram_total - d.vram_leased), d.compute_capacity,
                      max(0, d.compute_capacity - d.compute_leased), d.name)
               for address, inv in inventories.items() for d in inv.devices]
    leases = {(address, lease.id): lease for address, inv in inventories.items() for lease in inv.leases}

    def slices_of(k: KernelSlice) -> tuple[tuple[str, int, int], ...]:
        lease = leases.get((k.worker, k.lease_id))
        return tuple((s.device_uuid, s.vram, s.compute) for s in lease.slices) if lease is not None else ()

    return waiting, devices, slices_of


class QosRelease:
    """When a request of a higher QoS waits at a worker and this server's kernels there of a lower
    QoS have been idle for `min_idle` seconds (c.TfVgpu.idle_warning), the ones whose release makes
    it fit (tf_jupyter.preemption.to_release) are warned, and shut down `grace` seconds later if
    they are still idle and still needed then. A kernel that becomes active again, or that the
    waiting request no longer needs (it started, gave up, or found room elsewhere), keeps running
    (event idle_warning_cleared). Critical kernels never go: nothing ranks above them."""

    def __init__(self, kernels: Kernels, events: Events, shutdown: Callable[[str], Awaitable[None]],
                 min_idle: float, grace: float) -> None:
        self.kernels = kernels
        self.events = events
        self.shutdown = shutdown
        self.min_idle = min_idle
        self.grace = grace
        self.warned: dict[str, float] = {}  # kernel id -> monotonic time of its warning

    async def check(self, waiting: Sequence[Waiter], devices: Sequence[Device],
                    slices_of: Callable[[KernelSlice], tuple[tuple[str, int, int], ...]],
                    now: float | None = None) -> None:
        """`waiting`: every worker's line in order; `devices`: the workers' devices; `slices_of`: a
        kernel's slices (device uuid, vram, compute) as its worker's inventory shows its lease."""
        now = time.monotonic() if now is None else now
        mine = [Held(k.kernel_id, k.worker, k.qos, now - k.last_active, slices_of(k))
                for k in self.kernels.values() if k.qos != HIGHEST_QOS]
        needed = {r.kernel_id: r for r in to_release(waiting, mine, devices, self.min_idle)}
        for kernel_id in [kid for kid in self.warned if kid not in needed]:
            del self.warned[kernel_id]
            if kernel_id in self.kernels:
                self.events.emit("idle_warning_cleared", "the waiting request no longer needs this kernel's slice "
                                 "(it started, left, or the kernel became active): the kernel keeps running",
                                 kernel_id=kernel_id)
        for kernel_id, release in needed.items():
            w = release.waiter
            if kernel_id not in self.warned:
                self.warned[kernel_id] = now
                self.events.emit("idle_warning", f"a QoS {w.qos} request waits on {w.worker} for the room this "
                                 f"idle {self.kernels[kernel_id].qos} kernel holds: it will be shut down in "
                                 f"{self.grace:.0f} s to make room unless it becomes active", kernel_id=kernel_id,
                                 reason="qos")
            elif now - self.warned[kernel_id] >= self.grace:
                try:
                    await self.shutdown(kernel_id)
                except Exception as exc:  # whatever the kernel manager raised: say it, keep the kernel, retry
                    reason = str(exc) or type(exc).__name__
                    log.warning("QoS release of kernel %s failed: %s", kernel_id, reason)
                    self.events.emit("idle_release_failed", f"kernel could not be shut down for a waiting QoS "
                                     f"{w.qos} request ({reason}); it still holds its slice, trying again",
                                     kernel_id=kernel_id, reason="qos")
                    continue
                del self.warned[kernel_id]
                self.kernels.forget(kernel_id)
                self.events.emit("idle_release", f"idle kernel shut down to make room for a waiting QoS {w.qos} "
                                 f"request on {w.worker}; its slice is free", kernel_id=kernel_id, reason="qos")
