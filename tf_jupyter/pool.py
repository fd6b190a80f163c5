"""The pool view: every configured worker, its live inventory and usage, placement and the queue.

Workers are the only state holders; this is a cache of what they report (GetInventory every
`refresh_interval`, Watch streams in between) plus the decisions that need the whole pool:
which worker to ask (tf_jupyter.placement), who waits (tf_jupyter.queue). A worker that stops
answering is marked down and retried with backoff, not on every kernel start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tf_jupyter.placement import DeviceView, Request, explain, place
from tf_jupyter.queue import WaitQueue
from tf_remoting.client import (
    NotFound,
    PermissionDenied,
    RemotingError,
    ResourceExhausted,
    RuntimeClient,
    Unavailable,
)
from tf_remoting.proto import pb
from tf_remoting.quantities import format_bytes

log = logging.getLogger("tf_jupyter.pool")

QOS = {"low": pb.QOS_LOW, "medium": pb.QOS_MEDIUM, "high": pb.QOS_HIGH, "critical": pb.QOS_CRITICAL}
QOS_NAME = {v: k for k, v in QOS.items()}
MODE_NAME = {pb.ISOLATION_MODE_SOFT: "soft", pb.ISOLATION_MODE_MPS: "mps", pb.ISOLATION_MODE_EXCLUSIVE: "exclusive",
             pb.ISOLATION_MODE_HOST: "host"}
FREEING_EVENTS = {pb.EVENT_KIND_LEASE_RELEASED, pb.EVENT_KIND_LEASE_EXPIRED, pb.EVENT_KIND_LEASE_RESIZED,
                  pb.EVENT_KIND_WATCHDOG_KILL}


class QueueTimeout(Exception):
    """No slice became free in time; the message says what was asked and what the pool had."""


@dataclass
class WorkerState:
    address: str
    client: RuntimeClient
    inventory: pb.Inventory | None = None
    up: bool = False
    error: str = ""
    failures: int = 0
    retry_at: float = 0.0
    watch_task: asyncio.Task[None] | None = None
    lease_usage: dict[str, pb.LeaseSample] = field(default_factory=dict)  # "<lease>/<device>"
    device_usage: dict[str, pb.DeviceSample] = field(default_factory=dict)


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


@dataclass(frozen=True)
class Placed:
    worker: str
    lease: pb.Lease


class Pool:
    _current: Pool | None = None

    def __init__(self, addresses: list[str], token: str, dns: str = "", tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", tls_server_name: str = "", policy: str = "binpack", refresh_interval: float = 5.0,
                 queue_timeout: float = 300.0, lease_ttl: int = 60) -> None:
        self.token = token
        self.token_file = ""  # when set, re-read on every refresh: tokens rotate without a restart
        self._token_stat: tuple[int, int, int] | None = None  # (mtime_ns, inode, size) last read
        self.dns = dns
        self.tls = {"tls_ca": tls_ca or None, "client_cert": tls_cert or None, "client_key": tls_key or None,
                    "server_name": tls_server_name or None}
        self.policy = policy
        self.default_qos = "medium"  # for profiles that leave QoS at its default (TfVgpu.default_qos)
        self.refresh_interval = refresh_interval
        self.queue_timeout = queue_timeout
        self.lease_ttl = lease_ttl
        self.workers: dict[str, WorkerState] = {}
        for address in addresses:
            self._add_worker(address)
        self.queue = WaitQueue()
        self._queue_events: dict[str, asyncio.Event] = {}
        self._queue_info: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self.kernels: dict[str, KernelSlice] = {}
        self.subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def current(cls) -> Pool | None:
        """The pool of the Jupyter server in this process, if there is one."""
        return cls._current

    def qos_for(self, profile_qos: str) -> str:
        """The QoS a kernel of a profile runs with: the profile's, or default_qos where it left the default."""
        return profile_qos if profile_qos != "medium" else self.default_qos

    def _add_worker(self, address: str) -> WorkerState:
        state = WorkerState(address, RuntimeClient(address, self.token, timeout=10.0, **self.tls))  # type: ignore[arg-type]
        self.workers[address] = state
        return state

    # ------------------------------------------------------------------ lifecycle

    async def start(self, watch: bool = True) -> None:
        await self.refresh()
        if watch:
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        tasks = [self._refresher] + [w.watch_task for w in self.workers.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for w in self.workers.values():
            await w.client.close()
        if Pool._current is self:
            Pool._current = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("pool refresh failed")

    def _resolve_dns(self) -> None:
        if not self.dns:
            return
        name, _, port = self.dns.rpartition(":")
        try:
            infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            log.warning("cannot resolve workers_dns %s: %s", self.dns, exc)
            return
        for info in infos:
            host = info[4][0]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if address not in self.workers:
                log.info("worker %s found by DNS %s", address, self.dns)
                self._add_worker(address)

    def follow_token_file(self, path: str) -> None:
        self.token_file = path
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self._token_stat = (st.st_mtime_ns, st.st_ino, st.st_size)

    def _check_token(self) -> None:
        if not self.token_file:
            return
        try:
            # mtime alone misses a same-second replace on coarse-timestamp filesystems; a kubelet
            # Secret update swaps the file (new inode), an in-place rewrite usually changes the size.
            st = os.stat(self.token_file)
            key = (st.st_mtime_ns, st.st_ino, st.st_size)
            if key == self._token_stat:
                return
            from tf_jupyter.launcher import read_token

            token = read_token(self.token_file)
        except (OSError, ValueError) as exc:
            log.warning("cannot re-read token file %s: %s (keeping the current token)", self.token_file, exc)
            return
        self._token_stat = key
        if token != self.token:
            log.info("token file %s changed: using the new token", self.token_file)
            self.token = token
            for w in self.workers.values():
                w.client.set_token(token)

    async def refresh(self, force: bool = False) -> None:
        """GetInventory from every worker that is up or due for a retry."""
        self._check_token()
        self._resolve_dns()
        now = time.monotonic()
        due = [w for w in self.workers.values() if force or w.up or now >= w.retry_at]
        await asyncio.gather(*(self._refresh_one(w) for w in due))
        self._wake_queue()

    async def _refresh_one(self, w: WorkerState) -> None:
        try:
            inventory = await w.client._call(w.client.stub.GetInventory, pb.GetInventoryRequest(), timeout=3.0)
        except RemotingError as exc:
            self._mark_down(w, exc.message)
            return
        was_up = w.up
        w.inventory, w.up, w.error, w.failures = inventory, True, "", 0
        if not was_up:
            log.info("worker %s is up (%s, %d device(s))", w.address, inventory.backend, len(inventory.devices))
            self._broadcast({"type": "worker", "worker": w.address, "up": True})
        if w.watch_task is None or w.watch_task.done():
            w.watch_task = asyncio.create_task(self._watch(w))

    def _mark_down(self, w: WorkerState, error: str) -> None:
        w.failures += 1
        w.retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(w.failures, 6))
        if w.up or w.failures == 1:
            log.warning("worker %s is down: %s", w.address, error)
            self._broadcast({"type": "worker", "worker": w.address, "up": False, "error": error})
        w.up, w.error = False, error

    async def _watch(self, w: WorkerState) -> None:
        """Follow one worker's samples and events until it fails; refresh brings it back."""
        try:
            async for update in w.client.watch(include_devices=True, all_leases=False):
                for d in update.devices:
                    w.device_usage[d.device_uuid] = d
                freed = False
                for s in update.leases:
                    w.lease_usage[f"{s.lease_id}/{s.device_uuid}"] = s
                    self._note_activity(w.address, s)
                if update.leases or update.devices:
                    self._broadcast({"type": "sample", "time": update.time, "worker": w.address,
                                     "devices": [_device_sample(d) for d in update.devices],
                                     "leases": [self._lease_sample(w.address, s) for s in update.leases]})
                for e in update.events:
                    freed |= e.kind in FREEING_EVENTS
                    self._broadcast(self._event_json(w.address, e))
                if freed:
                    await self._refresh_one(w)
                    self._wake_queue()
        except RemotingError as exc:
            self._mark_down(w, exc.message)
        except asyncio.CancelledError:
            raise

    # ------------------------------------------------------------------ views

    def device_views(self) -> list[DeviceView]:
        views = []
        for w in self.workers.values():
            if w.inventory is None:
                continue
            for d in w.inventory.devices:
                views.append(DeviceView(worker=w.address, uuid=d.uuid, name=d.name, vram_total=d.vram_total,
                                        vram_free=max(0, d.vram_total - d.vram_leased),
                                        compute_capacity=d.compute_capacity,
                                        compute_free=max(0, d.compute_capacity - d.compute_leased), up=w.up))
        return views

    def _wire_request(self, request: Request, worker: WorkerState) -> tuple[int, int, int]:
        """(vram, compute, mode) to ask a worker for; whole devices become the device's size."""
        if not request.whole_device:
            return request.vram, request.compute, pb.ISOLATION_MODE_UNSPECIFIED
        assert worker.inventory is not None
        sizes = [d.vram_total for d in worker.inventory.devices if d.vram_leased == 0]
        vram = max(sizes) if sizes else max((d.vram_total for d in worker.inventory.devices), default=0)
        mode = (pb.ISOLATION_MODE_UNSPECIFIED if worker.inventory.backend == "host"
                else pb.ISOLATION_MODE_EXCLUSIVE)
        return vram, 100, mode

    # ------------------------------------------------------------------ allocation and queue

    async def allocate(self, request: Request, qos: str = "medium", profile: str = "",
                       labels: dict[str, str] | None = None, timeout: float | None = None,
                       on_queued: Callable[[int], None] | None = None) -> Placed:
        """Place and lease a slice, waiting in the queue when nothing fits now."""
        deadline = time.monotonic() + (self.queue_timeout if timeout is None else timeout)
        placed = await self._try_place(request, qos, profile, labels)
        if placed is not None:
            return placed
        entry_id = f"q{next(self._ids)}"
        self.queue.push(entry_id, request, qos=qos, labels=labels or {})
        event = self._queue_events[entry_id] = asyncio.Event()
        self._queue_info[entry_id] = {"profile": profile, "since": time.time(), "labels": dict(labels or {})}
        self._broadcast({"type": "queue", "queue": self.queue_json()})
        try:
            while True:
                if on_queued is not None:
                    on_queued(self.queue.position(entry_id))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(
                        f"no slice became free within {timeout if timeout is not None else self.queue_timeout:.0f} s: "
                        + explain(request, self.device_views(), [w.address for w in self.workers.values() if not w.up]))
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self.refresh_interval))
                if not event.is_set():
                    await self.refresh()
                    if not event.is_set():
                        continue
                placed = await self._try_place(request, qos, profile, labels)
                if placed is not None:
                    return placed
        finally:
            self.queue.remove(entry_id)
            self._queue_events.pop(entry_id, None)
            self._queue_info.pop(entry_id, None)
            self._broadcast({"type": "queue", "queue": self.queue_json()})
            self._wake_queue()

    async def _try_place(self, request: Request, qos: str, profile: str,
                         labels: dict[str, str] | None) -> Placed | None:
        for candidate in place(request, [v for v in self.device_views() if v.up], self.policy):
            w = self.workers[candidate.worker]
            vram, compute, mode = self._wire_request(request, w)
            try:
                lease = await w.client.allocate(vram=vram, compute=compute, count=request.count, qos=QOS[qos],
                                                model=request.model, mode=mode, ttl_seconds=self.lease_ttl,
                                                profile=profile, labels=labels or {})
            except ResourceExhausted:
                await self._refresh_one(w)  # our view was stale: look again, try the next worker
                continue
            except Unavailable as exc:
                self._mark_down(w, exc.message)
                continue
            await self._refresh_one(w)
            return Placed(w.address, lease)
        return None

    def _wake_queue(self) -> None:
        """Wake queued entries that fit the pool now, in queue order (QoS, then arrival)."""
        if not len(self.queue):
            return
        from tf_jupyter.placement import PoolState

        state = PoolState([v for v in self.device_views() if v.up])
        for entry in self.queue.ready(lambda r: state.place_and_commit(r, self.policy) is not None):
            event = self._queue_events.get(entry.id)
            if event is not None:
                event.set()

    def queue_json(self) -> list[dict[str, Any]]:
        out = []
        for position, entry in enumerate(self.queue.entries(), 1):
            info = self._queue_info.get(entry.id, {})
            out.append({"id": entry.id, "position": position, "qos": entry.qos, "profile": info.get("profile", ""),
                        "since": info.get("since", 0.0), "labels": info.get("labels", {}),
                        "request": {"vram": entry.request.vram, "compute": entry.request.compute,
                                    "count": entry.request.count, "whole_device": entry.request.whole_device},
                        "description": entry.request.describe()})
        return out

    def queue_position(self, labels_key: str, value: str) -> int | None:
        for item in self.queue_json():
            if item["labels"].get(labels_key) == value:
                return int(item["position"])
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
        await self._refresh_one(w)
        self._wake_queue()

    async def resize(self, kernel_id: str, vram: int | None, compute: int | None) -> pb.Lease:
        k = self.kernels[kernel_id]
        lease = self.lease(k.worker, k.lease_id)
        if lease is None:
            raise NotFound(grpc_not_found(), f"lease {k.lease_id} is not on {k.worker} any more")
        s = lease.slices[0]
        result = await self.workers[k.worker].client.resize(k.lease_id, vram if vram is not None else s.vram,
                                                            compute if compute is not None else s.compute)
        await self._refresh_one(self.workers[k.worker])
        self._wake_queue()
        return result

    # ------------------------------------------------------------------ kernels

    def register_kernel(self, kernel: KernelSlice) -> None:
        self.kernels[kernel.kernel_id] = kernel

    def forget_kernel(self, kernel_id: str) -> KernelSlice | None:
        return self.kernels.pop(kernel_id, None)

    def lease(self, worker: str, lease_id: str) -> pb.Lease | None:
        w = self.workers.get(worker)
        if w is None or w.inventory is None:
            return None
        for lease in w.inventory.leases:
            if lease.id == lease_id:
                return lease
        return None

    def _note_activity(self, worker: str, sample: pb.LeaseSample) -> None:
        if sample.utilization > 1.0:
            for k in self.kernels.values():
                if k.worker == worker and k.lease_id == sample.lease_id:
                    k.last_active = time.monotonic()
                    k.idle_warned = False

    def kernel_json(self, kernel_id: str) -> dict[str, Any]:
        k = self.kernels[kernel_id]
        lease = self.lease(k.worker, k.lease_id)
        w = self.workers.get(k.worker)
        out: dict[str, Any] = {"kernel_id": k.kernel_id, "worker": k.worker, "lease_id": k.lease_id,
                               "profile": k.profile, "qos": k.qos, "started": k.started,
                               "worker_up": bool(w and w.up)}
        if lease is not None and lease.slices:
            s = lease.slices[0]
            device = next((d for d in (w.inventory.devices if w and w.inventory else []) if d.uuid == s.device_uuid),
                          None)
            sample = w.lease_usage.get(f"{lease.id}/{s.device_uuid}") if w else None
            out.update({
                "device": {"uuid": s.device_uuid, "name": device.name if device else "",
                           "kind": "host" if device is not None and device.kind == pb.DEVICE_KIND_HOST else "gpu"},
                "slice": {"vram": s.vram, "compute": s.compute, "count": len(lease.slices)},
                "mode": MODE_NAME.get(lease.mode, "unknown"),
                "memory_enforcement": pb.MemoryEnforcement.Name(lease.memory_enforcement)
                .removeprefix("MEMORY_ENFORCEMENT_").lower(),
                "usage": {"vram_used": sample.vram_used if sample else s.vram_used,
                          "utilization": sample.utilization if sample else s.utilization},
                "shares_filesystem": w.inventory.shares_filesystem if w and w.inventory else False,
            })
        return out

    def pool_json(self) -> dict[str, Any]:
        workers = []
        for w in self.workers.values():
            inv = w.inventory
            devices = []
            for d in inv.devices if inv else []:
                sample = w.device_usage.get(d.uuid)
                devices.append({
                    "uuid": d.uuid, "name": d.name, "index": d.index,
                    "kind": "host" if d.kind == pb.DEVICE_KIND_HOST else "gpu",
                    "vram_total": d.vram_total, "vram_leased": d.vram_leased,
                    "vram_used": sample.vram_used if sample else d.vram_used,
                    "compute_capacity": d.compute_capacity, "compute_leased": d.compute_leased,
                    "utilization": sample.utilization if sample else d.utilization,
                    "modes": [MODE_NAME.get(m, "?") for m in d.modes],
                    "memory_enforcement": pb.MemoryEnforcement.Name(d.memory_enforcement)
                    .removeprefix("MEMORY_ENFORCEMENT_").lower()})
            workers.append({"address": w.address, "up": w.up, "error": w.error,
                            "worker_id": inv.worker_id if inv else "", "version": inv.version if inv else "",
                            "backend": inv.backend if inv else "", "devices": devices,
                            "leases": len(inv.leases) if inv else 0})
        return {"workers": workers, "policy": self.policy, "queue_length": len(self.queue)}

    # ------------------------------------------------------------------ events

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self.subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(queue)

    def _broadcast(self, message: dict[str, Any]) -> None:
        for queue in self.subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    def emit(self, kind: str, message: str, kernel_id: str = "", **extra: Any) -> None:
        """An event of the Jupyter side (queued, idle release...) on the same stream as workers'."""
        self._broadcast({"type": "event", "kind": kind, "message": message, "kernel_id": kernel_id,
                         "time": time.time(), "source": "server", **extra})

    def _kernel_for_lease(self, worker: str, lease_id: str) -> str:
        for k in self.kernels.values():
            if k.worker == worker and k.lease_id == lease_id:
                return k.kernel_id
        return ""

    def _lease_sample(self, worker: str, s: pb.LeaseSample) -> dict[str, Any]:
        return {"lease_id": s.lease_id, "kernel_id": self._kernel_for_lease(worker, s.lease_id),
                "device_uuid": s.device_uuid, "vram_used": s.vram_used, "vram_limit": s.vram_limit,
                "utilization": s.utilization, "compute_limit": s.compute_limit,
                "mode": MODE_NAME.get(s.mode, "unknown")}

    def _event_json(self, worker: str, e: pb.Event) -> dict[str, Any]:
        return {"type": "event", "kind": pb.EventKind.Name(e.kind).removeprefix("EVENT_KIND_").lower(),
                "message": e.message, "lease_id": e.lease_id, "worker": worker, "time": e.time,
                "kernel_id": self._kernel_for_lease(worker, e.lease_id), "source": "worker"}


def _device_sample(d: pb.DeviceSample) -> dict[str, Any]:
    return {"uuid": d.device_uuid, "vram_used": d.vram_used, "vram_total": d.vram_total,
            "vram_leased": d.vram_leased, "compute_leased": d.compute_leased, "utilization": d.utilization}


def grpc_not_found() -> Any:
    import grpc

    return grpc.StatusCode.NOT_FOUND


def describe_lease(lease: pb.Lease) -> str:
    s = lease.slices[0]
    return f"{format_bytes(s.vram)} / {s.compute} % on {s.device_uuid}"
