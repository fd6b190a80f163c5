"""Allocate, queue, release and resize slices over the worker cache.

Which worker to ask comes from tf_jupyter.placement, who waits from tf_jupyter.queue; this module
does the asking: it tries the candidates in order (a refusal means our cache was stale), queues
what does not fit, and wakes queued requests when capacity frees.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tf_jupyter.placement import DeviceView, PoolState, Request, explain, place
from tf_jupyter.pool.events import Events
from tf_jupyter.pool.workers import Workers, WorkerState
from tf_jupyter.qos import DEFAULT_QOS, qos_value
from tf_jupyter.queue import WaitQueue
from tf_remoting.client import NotFound, PermissionDenied, RemotingError, ResourceExhausted, Unavailable
from tf_remoting.proto import pb

__all__ = ["LeaseGone", "Placed", "QueueTimeout", "QueuedInfo", "Scheduler", "device_views"]

log = logging.getLogger("tf_jupyter.pool")


class QueueTimeout(Exception):
    """No slice became free in time; the message says what was asked and what the pool had."""


@dataclass(frozen=True)
class Placed:
    worker: str
    lease: pb.Lease


@dataclass(frozen=True)
class QueuedInfo:
    """What the queue's JSON shows of a waiting request beyond the queue entry."""

    profile: str = ""
    since: float = field(default_factory=time.time)


def device_views(workers: Workers) -> list[DeviceView]:
    """Every device of the cache, as placement sees it."""
    views = []
    for w in workers.values():
        if w.inventory is None:
            continue
        for d in w.inventory.devices:
            views.append(DeviceView(worker=w.address, uuid=d.uuid, name=d.name, vram_total=d.vram_total,
                                    vram_free=max(0, d.vram_total - d.vram_leased),
                                    compute_capacity=d.compute_capacity,
                                    compute_free=max(0, d.compute_capacity - d.compute_leased), up=w.up))
    return views


def wire_request(request: Request, worker: WorkerState) -> tuple[int, int, int]:
    """(vram, compute, mode) to ask a worker for.

    A whole device on a GPU worker is an exclusive lease of at least ``request.vram`` (0: any
    size): the worker's line takes the smallest untouched device that fits. The host device has
    no exclusive mode: there it is a slice of the smallest untouched device's whole size (best fit
    lands it on that device).
    """
    if not request.whole_device:
        return request.vram, request.compute, pb.ISOLATION_MODE_UNSPECIFIED
    assert worker.inventory is not None
    if worker.inventory.backend != "host":
        return request.vram, 100, pb.ISOLATION_MODE_EXCLUSIVE
    devices = worker.inventory.devices
    sizes = [d.vram_total for d in devices if d.vram_leased == 0 and d.vram_total >= request.vram]
    return (min(sizes) if sizes else max((d.vram_total for d in devices), default=0)), 100, \
        pb.ISOLATION_MODE_UNSPECIFIED


class Scheduler:
    """Leases on the pool's workers, and the queue of requests that wait for one."""

    def __init__(self, workers: Workers, events: Events, policy: str = "binpack", queue_timeout: float = 300.0,
                 lease_ttl: int = 60) -> None:
        self.workers = workers
        self.events = events
        self.policy = policy
        self.queue_timeout = queue_timeout
        self.lease_ttl = lease_ttl
        self.queue = WaitQueue()
        self.queue_info: dict[str, QueuedInfo] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)
        self.on_queue_change: Callable[[], None] = lambda: None

    async def allocate(self, request: Request, qos: str = DEFAULT_QOS, profile: str = "",
                       labels: dict[str, str] | None = None, timeout: float | None = None,
                       on_queued: Callable[[int], None] | None = None) -> Placed:
        """Place and lease a slice, waiting in the queue when nothing fits now."""
        limit = self.queue_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        placed = await self._try_place(request, qos, profile, labels)
        if placed is not None:
            return placed
        entry_id = f"q{next(self._ids)}"
        self.queue.push(entry_id, request, qos=qos, labels=labels or {})
        wakeup = self._wakeups[entry_id] = asyncio.Event()
        self.queue_info[entry_id] = QueuedInfo(profile)
        self.on_queue_change()
        try:
            while True:
                if on_queued is not None:
                    on_queued(self.queue.position(entry_id))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(f"no slice became free within {limit:.0f} s: "
                                       + explain(request, device_views(self.workers), self.workers.down_addresses()))
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(remaining, self.workers.refresh_interval))
                if not wakeup.is_set():
                    await self.workers.refresh()
                    if not wakeup.is_set():
                        continue
                placed = await self._try_place(request, qos, profile, labels)
                if placed is not None:
                    return placed
        finally:
            self.queue.remove(entry_id)
            self._wakeups.pop(entry_id, None)
            self.queue_info.pop(entry_id, None)
            self.on_queue_change()
            self.wake_queue()

    async def _try_place(self, request: Request, qos: str, profile: str,
                         labels: dict[str, str] | None) -> Placed | None:
        for candidate in place(request, [v for v in device_views(self.workers) if v.up], self.policy):
            w = self.workers[candidate.worker]
            vram, compute, mode = wire_request(request, w)
            try:
                lease = await w.client.allocate(vram=vram, compute=compute, count=request.count, qos=qos_value(qos),
                                                model=request.model, mode=mode, ttl_seconds=self.lease_ttl,
                                                profile=profile, labels=labels or {})
            except ResourceExhausted:
                await self.workers.refresh_one(w)  # our view was stale: look again, try the next worker
                continue
            except Unavailable as exc:
                self.workers.mark_down(w, exc.message)
                continue
            await self.workers.refresh_one(w)
            return Placed(w.address, lease)
        return None

    def wake_queue(self) -> None:
        """Wake queued entries that fit the pool now, in queue order (QoS, then arrival)."""
        if not len(self.queue):
            return
        state = PoolState([v for v in device_views(self.workers) if v.up])
        for entry in self.queue.ready(lambda r: state.place_and_commit(r, self.policy) is not None):
            wakeup = self._wakeups.get(entry.id)
            if wakeup is not None:
                wakeup.set()

    async def release(self, worker: str, lease_id: str) -> None:
        w = self.workers.get(worker)
        if w is None:
            return
        try:
            await w.client.release(lease_id)
        except (NotFound, PermissionDenied):
            pass
        except RemotingError as exc:
            log.warning("could not release lease %s on %s: %s (it expires after its TTL)", lease_id, worker,
                        exc.message)
        await self.workers.refresh_one(w)
        self.wake_queue()

    async def resize(self, worker: str, lease_id: str, vram: int | None, compute: int | None) -> pb.Lease:
        """Resize a lease to `vram` and/or `compute` (None keeps what it has)."""
        lease = self.workers.lease(worker, lease_id)
        if lease is None:
            raise LeaseGone(worker, lease_id)
        # Only the dimensions asked: the worker keeps the other as it is then (never our cached value,
        # which would undo a concurrent resize of it, e.g. from the kernel's %vgpu resize).
        result: pb.Lease = await self.workers[worker].client.resize(lease_id, vram=vram, compute=compute)
        await self.workers.refresh_one(self.workers[worker])
        self.wake_queue()
        return result


class LeaseGone(NotFound):
    """The lease is not in the worker's inventory any more (expired, released behind our back)."""

    def __init__(self, worker: str, lease_id: str) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, f"lease {lease_id} is not on {worker} any more")
