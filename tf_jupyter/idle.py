"""Idle release: warn, then shut down vGPU kernels idle for a while: no utilization of the slice and
no cell running (KernelSlice.last_active, tf_jupyter.pool.kernels).

Two reasons, each its own class: `IdleRelease` (idle for `idle_release` seconds, whoever waits) and
`QosRelease` (the kernel's worker marked its lease: idle while a request of a higher QoS waits there
for the room it holds; QoS that holds, planned by the worker, tf_remoting.worker.preemption).
Plain asyncio over the pool's kernels and events; the server extension runs `check` every few
seconds with a function that shuts a kernel down through Jupyter's kernel manager. Both say each
step on the event stream the panel shows (kinds idle_warning, idle_release, idle_release_failed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from tf_jupyter.pool.events import Events
from tf_jupyter.pool.kernels import Kernels
from tf_jupyter.qos import HIGHEST_QOS, qos_name
from tf_remoting.proto import pb

__all__ = ["IdleRelease", "QosRelease", "qos_wanted"]


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


def qos_wanted(kernels: Kernels, inventories: Mapping[str, pb.Inventory]) -> dict[str, tuple[str, str]]:
    """This server's kernels whose lease its worker marked for QoS release (`Lease.release_for`,
    worker/preemption.py), from each worker's last inventory (address -> Inventory): kernel id ->
    (the QoS of the waiting request that needs its room, the worker's address)."""
    marked = {(address, lease.id): qos_name(lease.release_for) for address, inv in inventories.items()
              for lease in inv.leases if lease.release_for != pb.QOS_UNSPECIFIED}
    return {k.kernel_id: (marked[(k.worker, k.lease_id)], k.worker) for k in kernels.values()
            if (k.worker, k.lease_id) in marked}


class QosRelease:
    """QoS that holds, this server's part. The worker plans (worker/preemption.py): it marks the idle
    leases, any principal's, whose room a waiting request of a higher QoS needs. This server warns
    its kernels so marked, and shuts each down `grace` seconds later if its worker still marks it
    then. A kernel that becomes active again, or that the waiting request no longer needs (it
    started, gave up, or found room elsewhere), is unmarked and keeps running (event
    idle_warning_cleared). Critical kernels never go: the worker never marks them."""

    def __init__(self, kernels: Kernels, events: Events, shutdown: Callable[[str], Awaitable[None]],
                 grace: float) -> None:
        self.kernels = kernels
        self.events = events
        self.shutdown = shutdown
        self.grace = grace
        self.warned: dict[str, float] = {}  # kernel id -> monotonic time of its warning

    async def check(self, wanted: Mapping[str, tuple[str, str]], now: float | None = None) -> None:
        """`wanted`: this server's kernels that their workers marked (kernel id -> (QoS of the
        waiting request, worker)), as `qos_wanted` reads them from the inventories."""
        now = time.monotonic() if now is None else now
        needed = {kid: w for kid, w in wanted.items() if kid in self.kernels}  # the worker never marks critical
        for kernel_id in [kid for kid in self.warned if kid not in needed]:
            del self.warned[kernel_id]
            if kernel_id in self.kernels:
                self.events.emit("idle_warning_cleared", "the waiting request no longer needs this kernel's slice "
                                 "(it started, left, or the kernel became active): the kernel keeps running",
                                 kernel_id=kernel_id)
        for kernel_id, (qos, worker) in needed.items():
            if kernel_id not in self.warned:
                self.warned[kernel_id] = now
                self.events.emit("idle_warning", f"a QoS {qos} request waits on {worker} for the room this "
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
                                     f"{qos} request ({reason}); it still holds its slice, trying again",
                                     kernel_id=kernel_id, reason="qos")
                    continue
                del self.warned[kernel_id]
                self.kernels.forget(kernel_id)
                self.events.emit("idle_release", f"idle kernel shut down to make room for a waiting QoS {qos} "
                                 f"request on {worker}; its slice is free", kernel_id=kernel_id, reason="qos")
