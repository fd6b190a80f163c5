"""The pool: every configured worker, its live inventory and usage, placement and the queue.

One piece per job, put together by `Pool`:
- workers.py: the worker cache (DNS discovery, token following, health and refresh, Watch streams);
- scheduling.py: allocate / queue / release / resize;
- kernels.py: which Jupyter kernel holds which lease;
- events.py: fan-out to WebSocket subscribers;
- views.py: the JSON of the REST API.

A Jupyter server's pool belongs to its extension app (`TfVgpuApp.pool`); handlers reach it through
the tornado settings, the provisioner through the server's extension (tf_jupyter.provisioner).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from tf_jupyter.history import History, Point
from tf_jupyter.placement import DeviceView, Request
from tf_jupyter.pool import views
from tf_jupyter.pool.events import Events
from tf_jupyter.pool.kernels import KERNEL_LABEL, SERVER_LABEL, Kernels, KernelSlice
from tf_jupyter.pool.scheduling import Placed, QueueTimeout, Scheduler, WaitingAt, device_views
from tf_jupyter.pool.workers import ClientFactory, Tls, Workers, WorkerState, default_client
from tf_jupyter.qos import DEFAULT_QOS
from tf_remoting.proto import pb

__all__ = ["KernelSlice", "Placed", "Pool", "QueueTimeout", "Tls", "WaitingAt", "WorkerState"]

log = logging.getLogger("tf_jupyter.pool")


class Pool:
    """The pieces of one pool, wired together: a Watch update feeds the kernels' activity and the
    event stream, a change of this server's waiting requests is broadcast."""

    def __init__(self, addresses: list[str], token: str, dns: str = "", tls: Tls | None = None,
                 policy: str = "binpack", refresh_interval: float = 5.0, queue_timeout: float = 300.0,
                 lease_ttl: int = 60, client_factory: ClientFactory = default_client) -> None:
        self.events = Events()
        self.workers = Workers(addresses, token, dns=dns, tls=tls, refresh_interval=refresh_interval,
                               events=self.events, client_factory=client_factory)
        self.kernels = Kernels()
        self.history = History()  # each of our kernels' last 10 minutes of samples, for the panel's charts
        self.ended: collections.deque[str] = collections.deque(maxlen=1000)  # kernels forgotten lately
        self.scheduler = Scheduler(self.workers, self.events, policy=policy, queue_timeout=queue_timeout,
                                   lease_ttl=lease_ttl)
        self.default_qos = DEFAULT_QOS  # for profiles that leave QoS at its default (TfVgpu.default_qos)
        # Labels every lease placed for one of our kernels: ours to release when no kernel holds it.
        self.server_id = uuid.uuid4().hex
        self.placing: set[str] = set()  # kernels whose slice is being placed now
        self._releasing: dict[str, asyncio.Task[None]] = {}  # lease id -> release of an orphan
        self.workers.on_update = self._on_update
        self.workers.on_inventory = self._on_inventory
        self.scheduler.on_queue_change = lambda: self.events.broadcast({"type": "queue", "queue": self.queue_json()})
        # Told (kernel id, admin principal) when an admin released one of our kernels' leases at its worker.
        self.on_released_by_admin: Callable[[str, str], None] = lambda kernel_id, by: None

    # ------------------------------------------------------------------ settings a kernel launcher needs

    @property
    def token(self) -> str:
        return self.workers.token

    @property
    def token_file(self) -> str:
        return self.workers.token_file

    @property
    def tls(self) -> Tls:
        return self.workers.tls

    @property
    def lease_ttl(self) -> int:
        return self.scheduler.lease_ttl

    @property
    def policy(self) -> str:
        return self.scheduler.policy

    def qos_for(self, profile_qos: str) -> str:
        """The QoS a kernel of a profile runs with: the profile's, or default_qos where it left the default."""
        return profile_qos if profile_qos != DEFAULT_QOS else self.default_qos

    # ------------------------------------------------------------------ lifecycle

    def follow_token_file(self, path: str) -> None:
        self.workers.follow_token_file(path)

    async def start(self, watch: bool = True) -> None:
        await self.workers.start(watch)

    async def stop(self) -> None:
        await asyncio.gather(*self._releasing.values(), return_exceptions=True)
        await self.workers.stop()

    async def refresh(self, force: bool = False) -> None:
        await self.workers.refresh(force)

    # ------------------------------------------------------------------ slices

    async def allocate(self, request: Request, qos: str = DEFAULT_QOS, profile: str = "",
                       labels: dict[str, str] | None = None, timeout: float | None = None,
                       on_queued: Callable[[WaitingAt], None] | None = None) -> Placed:
        """Place and lease a slice, waiting in the workers' lines when nothing can start now
        (see Scheduler.allocate); on_queued hears the request's place and reason when they change."""
        return await self.scheduler.allocate(request, qos, profile, labels, timeout, on_queued)

    async def release(self, worker: str, lease_id: str) -> None:
        await self.scheduler.release(worker, lease_id)

    async def resize(self, kernel_id: str, vram: int | None, compute: int | None) -> pb.Lease:
        k = self.kernels[kernel_id]
        return await self.scheduler.resize(k.worker, k.lease_id, vram, compute)

    async def place_kernel(self, kernel_id: str, request: Request, qos: str, profile: str,
                           labels: dict[str, str], on_queued: Callable[[WaitingAt], None] | None = None) -> Placed:
        """Allocate (see `allocate`) the slice of one of our kernels and register it, as one step:
        its lease names the kernel and this server, and is never an orphan while it is placed."""
        self.placing.add(kernel_id)
        try:
            placed = await self.allocate(request, qos=qos, profile=profile, on_queued=on_queued,
                                         labels={**labels, KERNEL_LABEL: kernel_id, SERVER_LABEL: self.server_id})
            self.register_kernel(KernelSlice(kernel_id, placed.worker, placed.lease.id, profile, qos))
            return placed
        finally:
            self.placing.discard(kernel_id)

    def _on_inventory(self, w: WorkerState) -> None:
        leases = w.inventory.leases if w.inventory is not None else ()
        self.kernels.note_activity(w.address, leases)
        for lease in self.kernels.orphans(w.address, leases, self.server_id, self.placing):
            if lease.id not in self._releasing:
                self._releasing[lease.id] = asyncio.create_task(self._release_orphan(w.address, lease))

    async def _release_orphan(self, worker: str, lease: pb.Lease) -> None:
        try:
            log.warning("tf-vgpu: releasing lease %s on %s: it was placed for kernel %s, which does not hold it",
                        lease.id, worker, lease.labels.get(KERNEL_LABEL, "?"))
            await self.scheduler.release(worker, lease.id)
        finally:
            self._releasing.pop(lease.id, None)

    def lease(self, worker: str, lease_id: str) -> pb.Lease | None:
        return self.workers.lease(worker, lease_id)

    def device_views(self) -> list[DeviceView]:
        return device_views(self.workers)

    # ------------------------------------------------------------------ kernels and events

    def register_kernel(self, kernel: KernelSlice) -> None:
        self.kernels.register(kernel)

    def forget_kernel(self, kernel_id: str) -> KernelSlice | None:
        self.history.forget(kernel_id)
        if kernel_id in self.kernels:
            self.ended.append(kernel_id)
        return self.kernels.forget(kernel_id)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        return self.events.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.events.unsubscribe(queue)

    def emit(self, kind: str, message: str, kernel_id: str = "", **extra: Any) -> None:
        """An event of the Jupyter side (queued, idle release...) on the same stream as workers'."""
        self.events.emit(kind, message, kernel_id, **extra)

    def _on_update(self, w: WorkerState, update: pb.WatchResponse) -> None:
        by_lease: dict[str, list[pb.LeaseSample]] = {}
        for s in update.leases:
            self.kernels.note_utilization(w.address, s.lease_id, s.utilization)
            by_lease.setdefault(s.lease_id, []).append(s)
        for lease_id, samples in by_lease.items():
            kernel_id = self.kernels.kernel_id_of(w.address, lease_id)
            if kernel_id:
                self.history.add(kernel_id, Point(update.time, sum(s.vram_used for s in samples),
                                                  sum(s.vram_limit for s in samples),
                                                  max(s.utilization for s in samples)))
        if update.leases or update.devices:
            self.events.broadcast({
                "type": "sample", "time": update.time, "worker": w.address,
                "devices": [views.device_sample_json(d) for d in update.devices],
                "leases": [views.lease_sample_json(s, self.kernels.kernel_id_of(w.address, s.lease_id))
                           for s in update.leases]})
        for e in update.events:
            kernel_id = self.kernels.kernel_id_of(w.address, e.lease_id)
            self.events.broadcast(views.event_json(w.address, e, kernel_id))
            if e.kind == pb.EVENT_KIND_LEASE_RELEASED and e.by and kernel_id:
                self.on_released_by_admin(kernel_id, e.by)

    # ------------------------------------------------------------------ JSON of the REST API

    def pool_json(self) -> dict[str, Any]:
        return views.pool_json(self.workers, self.scheduler.policy, self.kernels)

    def history_json(self, kernel_id: str) -> dict[str, Any]:
        return {"kernel_id": kernel_id, "window_s": self.history.window,
                "samples": [p.to_json() for p in self.history.points(kernel_id)]}

    def admin_json(self) -> dict[str, Any] | None:
        """The admin view (views.admin_json); None when no worker up shows us everyone's leases."""
        if not any(views.is_admin(w) for w in self.workers.values()):
            return None
        return views.admin_json(self.workers, self.kernels, time.time())

    async def release_as_admin(self, worker: str, lease_id: str) -> bool:
        """Release any principal's lease on `worker` (the worker checks that we are an admin there and
        ends its kernels); False when it was gone already. KeyError for a worker not in the pool."""
        w = self.workers[worker]
        released = await w.client.release(lease_id)
        await self.workers.refresh_one(w)
        return bool(released)

    def kernel_json(self, kernel_id: str) -> dict[str, Any]:
        return views.kernel_json(self.kernels[kernel_id], self.workers)

    def queue_json(self) -> list[dict[str, Any]]:
        return views.queue_json(self.workers, self.scheduler.waiting)
