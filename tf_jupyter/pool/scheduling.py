"""Allocate, wait, release and resize slices over the worker cache.

Which worker to ask comes from tf_jupyter.placement; who is served first is the workers' business
(each worker holds one waiting line, remoting/README.md "The waiting line"). This module does the
asking: it tries the workers that have room now (a refusal means our cache was stale or the
worker's line has someone ahead), then waits in the line of every worker that could ever take the
request, all at once under one request id, and keeps the first grant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tf_jupyter.placement import DeviceView, Request, explain, place
from tf_jupyter.pool.events import Events
from tf_jupyter.pool.workers import Workers, WorkerState
from tf_jupyter.qos import DEFAULT_QOS, qos_value
from tf_remoting.client import NotFound, OverQuota, PermissionDenied, RemotingError, ResourceExhausted, Unavailable
from tf_remoting.client.runtime import DeadlineExceeded
from tf_remoting.proto import pb

__all__ = ["LeaseGone", "Placed", "QueueTimeout", "Scheduler", "Waiting", "WaitingAt", "device_views"]

log = logging.getLogger("tf_jupyter.pool")


class QueueTimeout(Exception):
    """No slice became free in time; the message says what was asked and what the pool had."""


@dataclass(frozen=True)
class Placed:
    worker: str
    lease: pb.Lease


@dataclass(frozen=True)
class Waiting:
    """One of this server's requests while it waits in workers' lines (the lines hold the order)."""

    request_id: str
    request: Request
    qos: str
    profile: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class WaitingAt:
    """What a worker's line says of one waiting request: its place and why it waits."""

    worker: str
    position: int
    reason: str  # tf_remoting.proto WAIT_NO_ROOM, WAIT_QUOTA or WAIT_BEHIND
    message: str


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
    """Leases on the pool's workers; this server's requests while they wait in the workers' lines."""

    def __init__(self, workers: Workers, events: Events, policy: str = "binpack", queue_timeout: float = 300.0,
                 lease_ttl: int = 60) -> None:
        self.workers = workers
        self.events = events
        self.policy = policy
        self.queue_timeout = queue_timeout
        self.lease_ttl = lease_ttl
        self.waiting: dict[str, Waiting] = {}  # request_id -> request, while it waits
        self.on_queue_change: Callable[[], None] = lambda: None

    def waiting_at(self, request_id: str) -> list[WaitingAt]:
        """Where a request waits, as the workers' inventories last said: best position first."""
        out = []
        for w in self.workers.values():
            for e in w.inventory.waiting if w.inventory is not None and w.up else []:
                if e.own and e.request_id == request_id:
                    out.append(WaitingAt(w.address, e.position, e.reason, e.message))
        return sorted(out, key=lambda at: (at.position, at.worker))

    async def allocate(self, request: Request, qos: str = DEFAULT_QOS, profile: str = "",
                       labels: dict[str, str] | None = None, timeout: float | None = None,
                       on_queued: Callable[[WaitingAt], None] | None = None) -> Placed:
        """Place and lease a slice; when nothing can start now, wait in the lines of every worker
        that could ever take it (all at once, one request id) and keep exactly one grant."""
        limit = self.queue_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        placed = await self._try_place(request, qos, profile, labels)
        if placed is not None:
            return placed
        waiting = Waiting(uuid.uuid4().hex, request, qos, profile, dict(labels or {}))
        self.waiting[waiting.request_id] = waiting
        self.on_queue_change()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(f"no slice became free within {limit:.0f} s: "
                                       + explain(request, device_views(self.workers), self.workers.down_addresses()))
                candidates = self._could_ever_take(request)
                if candidates:
                    placed = await self._wait_at(candidates, waiting, deadline, on_queued)
                    if placed is not None:
                        return placed
                    remaining = deadline - time.monotonic()
                # No worker could take it, or each said it never can: look again after a while.
                await asyncio.sleep(max(0.0, min(remaining, self.workers.refresh_interval)))
                await self.workers.refresh()
        finally:
            self.waiting.pop(waiting.request_id, None)
            self.on_queue_change()

    def _could_ever_take(self, request: Request) -> list[WorkerState]:
        """Up workers with devices that could take the request once empty, best first."""
        empty = [dataclasses.replace(v, vram_free=v.vram_total, compute_free=v.compute_capacity)
                 for v in device_views(self.workers) if v.up]
        return [self.workers[c.worker] for c in place(request, empty, self.policy)]

    async def _wait_at(self, candidates: list[WorkerState], waiting: Waiting, deadline: float,
                       on_queued: Callable[[WaitingAt], None] | None) -> Placed | None:
        """Wait in each candidate's line at once; the first grant wins, the other waits are
        cancelled (which takes them out of those lines) and a lease granted meanwhile is released.
        None when every wait ended without a lease (deadline, worker gone, never fits there)."""
        tasks = [asyncio.create_task(self._wait_one(w, waiting, deadline)) for w in candidates]
        reporter = asyncio.create_task(self._report(candidates, waiting, on_queued))
        granted: list[Placed] = []
        failures: list[BaseException] = []
        pending = set(tasks)
        completed = False  # False: we were cancelled, and keep no lease
        try:
            while pending and not granted:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        granted.append(task.result())
                    elif not isinstance(exc, (DeadlineExceeded, ResourceExhausted, Unavailable)):
                        failures.append(exc)  # e.g. OverQuota: the worker's own sentence
            completed = True
        finally:
            reporter.cancel()
            for task in pending:
                task.cancel()
            for result in await asyncio.gather(reporter, *pending, return_exceptions=True):
                if isinstance(result, Placed):
                    granted.append(result)
            keep = granted[0] if granted and completed else None
            for extra in granted:
                if extra is not keep:  # granted at two workers at once (or we were cancelled): one lease only
                    await self.release(extra.worker, extra.lease.id)
        if keep is not None:
            await self.workers.refresh_one(self.workers[keep.worker])
            return keep
        if failures:
            raise failures[0]
        return None

    async def _wait_one(self, w: WorkerState, waiting: Waiting, deadline: float) -> Placed:
        vram, compute, mode = wire_request(waiting.request, w)
        try:
            lease = await w.client.allocate(vram=vram, compute=compute, count=waiting.request.count,
                                            qos=qos_value(waiting.qos), model=waiting.request.model, mode=mode,
                                            ttl_seconds=self.lease_ttl, profile=waiting.profile,
                                            labels=waiting.labels, wait=max(deadline - time.monotonic(), 0.001),
                                            request_id=waiting.request_id)
        except Unavailable as exc:
            self.workers.mark_down(w, exc.message)
            raise
        return Placed(w.address, lease)

    async def _report(self, candidates: list[WorkerState], waiting: Waiting,
                      on_queued: Callable[[WaitingAt], None] | None) -> None:
        """Follow the request's place in the lines: tell on_queued and the queue's listeners when it changes."""
        last: WaitingAt | None = None
        delay = 0.2  # the first look soon after joining the lines
        while True:
            await asyncio.sleep(delay)
            delay = self.workers.refresh_interval
            for w in candidates:
                await self.workers.refresh_one(w)
            where = self.waiting_at(waiting.request_id)
            if where and where[0] != last:
                last = where[0]
                if on_queued is not None:
                    on_queued(last)
                self.on_queue_change()

    async def _try_place(self, request: Request, qos: str, profile: str,
                         labels: dict[str, str] | None) -> Placed | None:
        """A lease from the first candidate whose line lets the request start now, without waiting.
        A worker where this server's principal is over its quota is passed over like a full one (quotas
        hold per worker: another worker may take it); if no worker can, the request waits in the lines,
        where a worker whose quota it can never meet says so (OverQuota) and the others keep it."""
        for candidate in place(request, [v for v in device_views(self.workers) if v.up], self.policy):
            w = self.workers[candidate.worker]
            vram, compute, mode = wire_request(request, w)
            try:
                lease = await w.client.allocate(vram=vram, compute=compute, count=request.count, qos=qos_value(qos),
                                                model=request.model, mode=mode, ttl_seconds=self.lease_ttl,
                                                profile=profile, labels=labels or {})
            except (ResourceExhausted, OverQuota):
                await self.workers.refresh_one(w)  # stale view, others wait ahead, or our quota there: next worker
                continue
            except Unavailable as exc:
                self.workers.mark_down(w, exc.message)
                continue
            await self.workers.refresh_one(w)
            return Placed(w.address, lease)
        return None

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

    async def resize(self, worker: str, lease_id: str, vram: int | None, compute: int | None) -> pb.Lease:
        """Resize a lease to `vram` and/or `compute` (None keeps what it has)."""
        lease = self.workers.lease(worker, lease_id)
        if lease is None:
            raise LeaseGone(worker, lease_id)
        # Only the dimensions asked: the worker keeps the other as it is then (never our cached value,
        # which would undo a concurrent resize of it, e.g. from the kernel's %vgpu resize).
        result: pb.Lease = await self.workers[worker].client.resize(lease_id, vram=vram, compute=compute)
        await self.workers.refresh_one(self.workers[worker])
        return result


class LeaseGone(NotFound):
    """The lease is not in the worker's inventory any more (expired, released behind our back)."""

    def __init__(self, worker: str, lease_id: str) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, f"lease {lease_id} is not on {worker} any more")
