"""Which Jupyter kernel holds which lease, and when it was last active (for idle release): its slice
busy, or its worker saying the lease was active (a running cell counts)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tf_remoting.proto import BUSY_UTILIZATION, pb

__all__ = ["KERNEL_LABEL", "SERVER_LABEL", "KernelSlice", "Kernels"]

KERNEL_LABEL = "jupyter_kernel_id"  # a kernel's lease names its Jupyter kernel
SERVER_LABEL = "jupyter_server_id"  # ... and the server that placed it (Pool.server_id)


@dataclass
class KernelSlice:
    """A Jupyter kernel's slice, as the server knows it."""

    kernel_id: str           # Jupyter's kernel id
    worker: str
    lease_id: str
    profile: str
    qos: str
    started: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    idle_warned: bool = False
    warned_at: float = 0.0   # monotonic time of the idle warning
    worker_active: float = 0.0  # the lease's last_active as its worker last said it (worker's clock)


class Kernels(dict[str, KernelSlice]):
    """kernel id -> KernelSlice."""

    def register(self, kernel: KernelSlice) -> None:
        self[kernel.kernel_id] = kernel

    def forget(self, kernel_id: str) -> KernelSlice | None:
        return self.pop(kernel_id, None)

    def holding(self, worker: str, lease_id: str) -> KernelSlice | None:
        """The kernel whose slice is this lease, if it is one of ours."""
        return next((k for k in self.values() if k.worker == worker and k.lease_id == lease_id), None)

    def orphans(self, worker: str, leases: Iterable[pb.Lease], server_id: str, placing: set[str]) -> list[pb.Lease]:
        """Leases this server placed (labelled with its id) that none of its kernels holds, and none
        being placed now may still take: left by a reply that never came back (the worker granted,
        the call failed, the kernel went elsewhere or failed to start), a restart that took a new
        lease, or a release that failed. Nobody renews them; they would hold their slice until their TTL."""
        return [lease for lease in leases
                if lease.labels.get(SERVER_LABEL) == server_id and lease.labels.get(KERNEL_LABEL, "") not in placing
                and self.holding(worker, lease.id) is None]

    def kernel_id_of(self, worker: str, lease_id: str) -> str:
        k = self.holding(worker, lease_id)
        return k.kernel_id if k is not None else ""

    def note_utilization(self, worker: str, lease_id: str, utilization: float) -> None:
        """A sample of the lease: a busy slice makes its kernel active again."""
        if utilization > BUSY_UTILIZATION:
            k = self.holding(worker, lease_id)
            if k is not None:
                k.last_active = time.monotonic()
                k.idle_warned = False

    def note_activity(self, worker: str, leases: Iterable[pb.Lease]) -> None:
        """The worker's leases: one whose last_active moved on since we last looked was active
        meanwhile (a busy slice, or a cell running on the CPU or waiting, which no utilization
        sample shows), so its kernel is active again, as the admin view says. Only a change counts,
        never the time itself, so the worker's clock need not agree with ours."""
        for lease in leases:
            k = self.holding(worker, lease.id)
            if k is not None and lease.last_active > k.worker_active:
                k.worker_active = lease.last_active
                k.last_active = time.monotonic()
                k.idle_warned = False
