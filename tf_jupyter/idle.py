"""Idle release: warn, then shut down vGPU kernels whose slice showed no utilization for a while.

Plain asyncio over the pool's kernels and events; the server extension runs `IdleRelease.check`
every few seconds with a function that shuts a kernel down through Jupyter's kernel manager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from tf_jupyter.pool.events import Events
from tf_jupyter.pool.kernels import Kernels
from tf_jupyter.qos import HIGHEST_QOS

__all__ = ["IdleRelease"]

log = logging.getLogger("tf_jupyter.idle")


class IdleRelease:
    """After `idle_release` seconds without utilization a kernel is warned; `idle_warning` seconds
    later it is shut down and its slice announced free. A shutdown that fails is logged and
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
                self.events.emit("idle_release", f"kernel shut down after {idle:.0f} s without utilization; "
                                 "its slice is free", kernel_id=k.kernel_id)
