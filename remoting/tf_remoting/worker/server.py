"""The worker: a gRPC server that leases slices, runs kernels in them and reports usage.

The servicer methods are thin: authentication, translation between protobuf and the plain
objects of `leases`, `kernels`, `telemetry` and `watchdog`, and error mapping. The worker is the
single source of truth for its devices; everything it knows survives a restart in the state
directory (the SQLite ledger and one directory per kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import signal
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import tf_remoting
from tf_remoting import paths
from tf_remoting.devices import open_backend
from tf_remoting.devices.base import DeviceBackend, DeviceInfo, DeviceSample, Usage
from tf_remoting.devices.cgroup import CgroupSlice, cgroup_v2_memory_root
from tf_remoting.framing import GRPC_MAX_MESSAGE
from tf_remoting.proto import SERVICE_NAME, pb
from tf_remoting.quantities import format_bytes, parse_bytes
from tf_remoting.worker import leases as ledger_mod
from tf_remoting.worker import nanny_link
from tf_remoting.worker.auth import AuthError, Caller, TokenTable, ensure_token_file, token_digest_hex
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.kernels import KernelStartError, KernelSupervisor
from tf_remoting.worker.leases import DeviceCapacity, KernelRecord, LeaseRecord, Ledger
from tf_remoting.worker.metrics import Metrics
from tf_remoting.worker.telemetry import Sampler
from tf_remoting.worker.watchdog import Watchdog, WatchdogPolicy

log = logging.getLogger("tf_remoting.worker")

MODE_NAMES = {pb.ISOLATION_MODE_SOFT: "soft", pb.ISOLATION_MODE_MPS: "mps",
              pb.ISOLATION_MODE_EXCLUSIVE: "exclusive", pb.ISOLATION_MODE_HOST: "host"}
MODE_BY_NAME = {v: k for k, v in MODE_NAMES.items()}
ENFORCEMENT = {"watchdog": pb.MEMORY_ENFORCEMENT_WATCHDOG, "cgroup": pb.MEMORY_ENFORCEMENT_CGROUP,
               "framework": pb.MEMORY_ENFORCEMENT_FRAMEWORK, "mps": pb.MEMORY_ENFORCEMENT_MPS}
KERNEL_STATUS = {"starting": pb.KERNEL_STATUS_STARTING, "running": pb.KERNEL_STATUS_RUNNING,
                 "exited": pb.KERNEL_STATUS_EXITED}
# Calls a kernel's own token (scoped to its lease) may make.
KERNEL_TOKEN_METHODS = {"GetInventory", "ListLeases", "Resize", "KernelState", "Watch", "Renew",
                        "RequestTransfer"}
TRANSFER_TIMEOUT = 300.0  # seconds a kernel waits for its Jupyter side to move a file, by default
MAX_FILE = 2 << 30
MAX_ENV = 256


class RpcError(Exception):
    """An error for the caller: a gRPC status and a sentence a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status(code_name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code_name, grpc.StatusCode.INTERNAL)


def rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Authenticate, then run the method; map every known error to a status with a message."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: RuntimeServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            caller = self.worker.authenticate(context, name)
            return await method(self, request, context, caller)
        except RpcError as exc:
            self.worker.metrics.rpc_error(name, exc.code.name)
            await context.abort(exc.code, exc.message)
        except ledger_mod.LedgerError as exc:
            self.worker.metrics.rpc_error(name, exc.code)
            await context.abort(_status(exc.code), str(exc))

    return wrapper


def rpc_stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """`rpc` for server-streaming methods."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: RuntimeServicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            caller = self.worker.authenticate(context, name)
            async for item in method(self, request, context, caller):
                yield item
        except RpcError as exc:
            self.worker.metrics.rpc_error(name, exc.code.name)
            await context.abort(exc.code, exc.message)
        except ledger_mod.LedgerError as exc:
            self.worker.metrics.rpc_error(name, exc.code)
            await context.abort(_status(exc.code), str(exc))

    return wrapper


class Worker:
    """Everything the servicer needs: devices, ledger, kernels, telemetry, events."""

    def __init__(self, config: WorkerConfig, backend: DeviceBackend | None = None) -> None:
        config.validate()
        self.config = config
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.worker_id = self._worker_id()
        if ensure_token_file(config.token_path):
            log.info("created token file %s with a new random token", config.token_path)
        self.tokens = TokenTable(config.token_path)
        self.backend = backend or open_backend(config.backend)
        self.devices: list[DeviceInfo] = self._offered_devices()
        self.device_by_uuid = {d.uuid: d for d in self.devices}
        self.ledger = Ledger(self.state_dir / "ledger.sqlite3", self._capacities())
        self.supervisor = KernelSupervisor(self.state_dir, config.kernel_environments,
                                           replay_messages=config.replay_messages,
                                           replay_bytes=parse_bytes(config.replay_bytes))
        self.sampler = Sampler(self.backend)
        self.watchdog = Watchdog(WatchdogPolicy(warn_ratio=config.watchdog_warn_ratio,
                                                grace_seconds=config.watchdog_grace,
                                                action=config.watchdog_action))
        self.cgroup_root = cgroup_v2_memory_root() if self.backend.name == "host" else None
        self.metrics = Metrics(version=tf_remoting.__version__, backend=self.backend.name)
        self.address = ""
        self.kernel_address = ""
        self.device_samples: dict[str, DeviceSample] = {}
        self.usage: dict[str, Usage] = {}  # "<lease>/<device>" -> usage
        self.subscribers: list[tuple[asyncio.Queue[pb.WatchResponse], Caller, bool]] = []
        # The newest Channels stream of each kernel (its Jupyter side), and transfers it was asked
        # for: transfer id -> (principal, kernel id, stream, answer).
        self.attached: dict[str, nanny_link.NannyLink] = {}
        self.transfers: dict[str, tuple[str, str, nanny_link.NannyLink, asyncio.Future[pb.TransferResult]]] = {}
        self.pending_events: list[pb.Event] = []
        # This process's WORKER_STARTED: it is sent before anyone can be watching, so every Watch
        # opened later (a client reconnecting after a restart) begins with it.
        self.started_event: pb.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stop_event = asyncio.Event()
        self._idle_since = time.monotonic()

    # ------------------------------------------------------------------ setup

    def _worker_id(self) -> str:
        path = self.state_dir / "worker_id"
        if not path.exists():
            path.write_text(f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        return path.read_text().strip()

    def _offered_devices(self) -> list[DeviceInfo]:
        devices = self.backend.devices()
        if self.config.host_vram and self.backend.name == "host":
            limit = parse_bytes(self.config.host_vram)
            devices = [_replace(d, vram_total=min(d.vram_total, limit)) for d in devices]
        return devices

    def _capacities(self) -> list[DeviceCapacity]:
        compute = int(round(100 * self.config.oversubscription))
        return [DeviceCapacity(uuid=d.uuid, index=d.index, name=d.name, vram_total=d.vram_total,
                               compute_capacity=compute) for d in self.devices]

    def adopt(self) -> int:
        """Re-adopt kernels left running by an earlier worker process; returns how many."""
        adopted = 0
        for rec in self.ledger.kernels():
            state = self.supervisor.state(rec.id)
            if state.status == "running":
                adopted += 1
                scope = self.supervisor.directory(rec.id) / "scope"
                with contextlib.suppress(OSError):
                    self.tokens.add_kernel_digest(scope.read_text().strip(), rec.principal, rec.lease_id)
                if rec.status != "running":
                    self.ledger.update_kernel(rec.id, status="running", pid=state.kernel_pid,
                                              nanny_pid=state.nanny_pid)
            else:
                self.ledger.update_kernel(rec.id, status="exited", exit_code=state.exit_code)
        # Give clients one full TTL to reconnect and renew after the worker was away.
        for lease in self.ledger.leases():
            with contextlib.suppress(ledger_mod.LedgerError):
                self.ledger.renew(lease.principal, lease.id)
        return adopted

    # ------------------------------------------------------------------ auth

    def authenticate(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        try:
            caller = self.tokens.authenticate(metadata.get("authorization"))
        except AuthError as exc:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        if caller.lease_scope and method not in KERNEL_TOKEN_METHODS:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"a kernel's own token cannot call {method}; use the principal's token")
        return caller

    def check_scope(self, caller: Caller, lease_id: str) -> None:
        if not caller.may_use(lease_id):
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"lease {lease_id} is not the lease this kernel token belongs to")

    # ------------------------------------------------------------------ events

    def emit(self, kind: int, message: str, lease_id: str = "", kernel_id: str = "",
             principal: str = "") -> pb.Event:
        event = pb.Event(kind=kind, time=time.time(), lease_id=lease_id, kernel_id=kernel_id,
                         principal=principal, message=message)
        self.metrics.event(pb.EventKind.Name(kind).removeprefix("EVENT_KIND_").lower())
        log.info("event %s: %s", pb.EventKind.Name(kind), message)
        for queue, caller, all_leases in self.subscribers:
            if all_leases or not principal or principal == caller.principal:
                if caller.lease_scope and lease_id and lease_id != caller.lease_scope:
                    continue
                _offer(queue, pb.WatchResponse(time=event.time, events=[event]))
        return event

    # ------------------------------------------------------------------ conversions

    def lease_proto(self, rec: LeaseRecord, with_kernels: bool = True) -> pb.Lease:
        slices = []
        for s in rec.slices:
            usage = self.usage.get(f"{rec.id}/{s.device_uuid}")
            slices.append(pb.Slice(device_uuid=s.device_uuid, device_index=s.device_index, vram=s.vram,
                                   compute=s.compute, vram_used=usage.vram_used if usage else 0,
                                   utilization=usage.utilization if usage else 0.0))
        device = self.device_by_uuid.get(rec.slices[0].device_uuid) if rec.slices else None
        kernels = [self.kernel_proto(k) for k in self.ledger.kernels(rec.id)] if with_kernels else []
        return pb.Lease(id=rec.id, principal=rec.principal, slices=slices, qos=rec.qos, mode=rec.mode,
                        memory_enforcement=self.enforcement(rec.mode, device), created_at=rec.created_at,
                        expires_at=rec.expires_at, ttl_seconds=rec.ttl_seconds, profile=rec.profile,
                        labels=rec.labels, kernels=kernels)

    def enforcement(self, mode: int, device: DeviceInfo | None) -> int:
        if mode == pb.ISOLATION_MODE_MPS:
            return pb.MEMORY_ENFORCEMENT_MPS
        if device is None:
            return pb.MEMORY_ENFORCEMENT_WATCHDOG
        return ENFORCEMENT.get(device.memory_enforcement, pb.MEMORY_ENFORCEMENT_WATCHDOG)

    def kernel_proto(self, rec: KernelRecord) -> pb.Kernel:
        return pb.Kernel(id=rec.id, lease_id=rec.lease_id, status=KERNEL_STATUS.get(rec.status, 0),
                         pid=rec.pid, exit_code=rec.exit_code or 0, cwd=rec.cwd,
                         shares_filesystem=self.config.shares_filesystem, started_at=rec.started_at,
                         environment=rec.environment)

    def device_proto(self, d: DeviceInfo, leased: dict[str, tuple[int, int]]) -> pb.Device:
        sample = self.device_samples.get(d.uuid)
        vram_leased, compute_leased = leased.get(d.uuid, (0, 0))
        return pb.Device(
            uuid=d.uuid, name=d.name, kind=pb.DEVICE_KIND_HOST if d.kind == "host" else pb.DEVICE_KIND_GPU,
            index=d.index, vram_total=d.vram_total, multiprocessors=d.multiprocessors,
            compute_capacity=int(round(100 * self.config.oversubscription)),
            modes=[MODE_BY_NAME[m] for m in d.modes if m in MODE_BY_NAME],
            memory_enforcement=ENFORCEMENT.get(d.memory_enforcement, pb.MEMORY_ENFORCEMENT_WATCHDOG),
            vram_leased=vram_leased, compute_leased=compute_leased,
            vram_used=sample.vram_used if sample else 0, utilization=sample.utilization if sample else 0.0)

    def resolve_mode(self, requested: int) -> int:
        """The isolation mode a new lease really gets; never one the devices cannot give."""
        if requested and requested not in MODE_NAMES:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown isolation mode {requested}; use soft, mps, exclusive or host")
        if self.backend.name == "host":
            if requested in (pb.ISOLATION_MODE_MPS, pb.ISOLATION_MODE_EXCLUSIVE):
                raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"isolation mode {MODE_NAMES[requested]} needs an NVIDIA GPU; this worker "
                               "serves the host device (CPU/RAM), whose only mode is 'host'")
            return pb.ISOLATION_MODE_HOST
        mode = requested or MODE_BY_NAME[self.config.isolation]
        if mode == pb.ISOLATION_MODE_HOST:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "isolation mode 'host' is for host devices only")
        if mode not in MODE_NAMES:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown isolation mode {mode}")
        if not any(MODE_NAMES[mode] in d.modes for d in self.devices):
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"isolation mode {MODE_NAMES[mode]} is not available on this worker "
                           "(for mps, start the MPS control daemon on the host)")
        return mode

    # ------------------------------------------------------------------ slice environment

    def slice_env(self, lease: LeaseRecord, kernel_id: str, kernel_token: str) -> dict[str, str]:
        """The variables that put a kernel inside its slice and tell it how to reach us."""
        first = lease.slices[0]
        device = self.device_by_uuid[first.device_uuid]
        env = {
            "TF_VGPU_LEASE_ID": lease.id,
            "TF_VGPU_KERNEL_ID": kernel_id,
            "TF_VGPU_PRINCIPAL": lease.principal,
            "TF_VGPU_DEVICE_UUIDS": ",".join(s.device_uuid for s in lease.slices),
            "TF_VGPU_DEVICE_NAME": device.name,
            "TF_VGPU_DEVICE_KIND": device.kind,
            "TF_VGPU_VRAM_LIMIT": str(first.vram),
            "TF_VGPU_VRAM_TOTAL": str(device.vram_total),
            "TF_VGPU_COMPUTE_LIMIT": str(first.compute),
            "TF_VGPU_MODE": MODE_NAMES.get(lease.mode, "soft"),
            "TF_VGPU_MEMORY_ENFORCEMENT": pb.MemoryEnforcement.Name(self.enforcement(lease.mode, device))
            .removeprefix("MEMORY_ENFORCEMENT_").lower(),
            "TF_VGPU_WORKER": self.kernel_address or self.address,
            "TF_VGPU_TOKEN": kernel_token,
            "TF_VGPU_SHARES_FILESYSTEM": "1" if self.config.shares_filesystem else "0",
        }
        if device.kind == "host":
            env["CUDA_VISIBLE_DEVICES"] = ""  # the host device is no GPU: hide any that exist
        else:
            env["CUDA_VISIBLE_DEVICES"] = env["TF_VGPU_DEVICE_UUIDS"]
            if lease.mode == pb.ISOLATION_MODE_SOFT:
                env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{first.vram / device.vram_total:.4f}"
                env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            elif lease.mode == pb.ISOLATION_MODE_MPS:
                mib = first.vram >> 20
                env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
                    f"{i}={mib}M" for i in range(len(lease.slices)))
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(min(100, first.compute))
        return env

    # ------------------------------------------------------------------ background work

    def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._sample_loop()))

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample_loop(self) -> None:
        interval = self.config.sample_interval
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:  # one bad sample must not stop telemetry
                log.exception("telemetry sample failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def tick(self) -> None:
        """One sample: kernel exits, expiries, usage, watchdog, metrics, Watch subscribers."""
        cpu_began = time.thread_time()  # this tick's CPU time, counted in tf_vgpu_sampling_cpu_seconds
        self.supervisor.reap()
        all_kernels = self.ledger.live().kernels  # the ledger's own records (no copies): read only
        states = self.supervisor.states([rec.id for rec in all_kernels])  # one poll() for all nannies
        for rec in all_kernels:
            state = states[rec.id]
            if state.status == "exited" and rec.status != "exited":
                self.remove_cgroup(rec.id)
                with contextlib.suppress(ledger_mod.LedgerError):
                    self.ledger.update_kernel(rec.id, status="exited", exit_code=state.exit_code)
                self.emit(pb.EVENT_KIND_KERNEL_EXITED, f"kernel {rec.id} exited with code {state.exit_code}",
                          rec.lease_id, rec.id, rec.principal)
        for lease in self.ledger.expired():
            self.reclaim(lease, pb.EVENT_KIND_LEASE_EXPIRED,
                         f"lease {lease.id} of {lease.principal} expired (no heartbeat for "
                         f"{lease.ttl_seconds} s): slice reclaimed and its kernels stopped")

        active = self.ledger.live().leases
        if active:
            self._idle_since = time.monotonic()
        elif self.config.idle_exit and time.monotonic() - self._idle_since > self.config.idle_exit:
            log.info("no leases for %.0f s: stopping (idle_exit)", self.config.idle_exit)
            self.stop_event.set()
        kernels_by_lease: dict[str, list[KernelRecord]] = {}
        for k in all_kernels:
            kernels_by_lease.setdefault(k.lease_id, []).append(k)
        kernel_ids = {lease_id: [k.id for k in ks if k.status != "exited"] for lease_id, ks in kernels_by_lease.items()}
        query = []
        for lease in active:
            pids = {k.pid for k in kernels_by_lease.get(lease.id, []) if k.pid}
            for s in lease.slices:
                query.append((f"{lease.id}/{s.device_uuid}", s.device_uuid, pids))
        cpu = time.thread_time() - cpu_began
        device_samples, usage, sampling_cpu = await asyncio.to_thread(self._sample_timed, query)
        cpu_began = time.thread_time()
        self.device_samples = {s.uuid: s for s in device_samples}
        self.usage = usage
        leased = self.ledger.live().device_usage

        lease_samples = []
        observed_at = time.monotonic()
        for lease in active:
            used_total = 0
            for s in lease.slices:
                u = usage.get(f"{lease.id}/{s.device_uuid}", Usage(0, 0.0))
                used_total += u.vram_used
                lease_samples.append(pb.LeaseSample(
                    lease_id=lease.id, principal=lease.principal, device_uuid=s.device_uuid,
                    vram_used=u.vram_used, vram_limit=s.vram, utilization=u.utilization,
                    compute_limit=s.compute, mode=lease.mode, kernel_ids=kernel_ids.get(lease.id, [])))
            limit = sum(s.vram for s in lease.slices)
            for action in self.watchdog.observe(lease.id, used_total, limit, observed_at):
                self.watchdog_act(lease, action.kind, action.message, kernels_by_lease.get(lease.id, []))

        self.metrics.update(self.devices, device_samples, leased, [
            {"lease": s.lease_id, "principal": s.principal, "device": s.device_uuid,
             "vram_used": s.vram_used, "vram_limit": s.vram_limit, "utilization": s.utilization,
             "compute_limit": s.compute_limit} for s in lease_samples],
            kernels=sum(1 for ks in kernels_by_lease.values() for k in ks if k.status != "exited"))

        now = time.time()
        devices = [pb.DeviceSample(device_uuid=s.uuid, vram_used=s.vram_used,
                                   vram_total=self.device_by_uuid[s.uuid].vram_total if s.uuid in
                                   self.device_by_uuid else 0, utilization=s.utilization,
                                   vram_leased=leased.get(s.uuid, (0, 0))[0],
                                   compute_leased=leased.get(s.uuid, (0, 0))[1]) for s in device_samples]
        for queue, caller, all_leases in self.subscribers:
            mine = [s for s in lease_samples
                    if (all_leases or s.principal == caller.principal) and caller.may_use(s.lease_id)]
            _offer(queue, pb.WatchResponse(time=now, devices=devices if not caller.lease_scope else [],
                                           leases=mine))
        self.metrics.sampling_cpu.inc(cpu + sampling_cpu + time.thread_time() - cpu_began)

    def _sample_timed(self, query: list[tuple[str, str, set[int]]]) -> tuple[Any, Any, float]:
        began = time.thread_time()
        device_samples, usage = self.sampler.sample(query)
        return device_samples, usage, time.thread_time() - began

    def watchdog_act(self, lease: LeaseRecord, kind: str, message: str, kernels: list[KernelRecord]) -> None:
        live = [k for k in kernels if k.status != "exited"]
        if kind in ("near_limit", "over_limit"):
            self.emit(pb.EVENT_KIND_LIMIT_WARNING, message, lease.id, principal=lease.principal)
        elif kind == "interrupt":
            for k in live:
                self.supervisor.signal(k.id, signal.SIGINT)
            self.emit(pb.EVENT_KIND_WATCHDOG_INTERRUPT, message, lease.id, principal=lease.principal)
        elif kind == "kill":
            for k in live:
                self.supervisor.kill(k.id)
            self.emit(pb.EVENT_KIND_WATCHDOG_KILL, message, lease.id, principal=lease.principal)

    def confine_host_kernel(self, lease: LeaseRecord, kernel_id: str, pid: int) -> None:
        """Host device with a writable cgroup v2: memory.max (and cpu.max) for the kernel's tree.

        The kernel is moved in right after it starts, before user code runs; its children
        inherit the cgroup. Where cgroups are not writable the watchdog enforces (and the
        inventory says so).
        """
        device = self.device_by_uuid[lease.slices[0].device_uuid]
        if self.cgroup_root is None or device.memory_enforcement != "cgroup":
            return
        group = CgroupSlice(self.cgroup_root, f"tf-vgpu-{kernel_id}")
        try:
            group.create()
            group.set_memory_max(lease.slices[0].vram)
            with contextlib.suppress(OSError):  # cpu controller may not be delegated
                group.set_cpu_max(lease.slices[0].compute)
            group.add_pid(pid)
        except OSError as exc:
            log.warning("kernel %s: cgroup limits not applied (%s); the watchdog enforces", kernel_id, exc)

    def remove_cgroup(self, kernel_id: str) -> None:
        if self.cgroup_root is not None:
            with contextlib.suppress(OSError):
                CgroupSlice(self.cgroup_root, f"tf-vgpu-{kernel_id}").remove()

    def reclaim(self, lease: LeaseRecord, kind: int, message: str) -> None:
        for k in self.ledger.kernels(lease.id):
            self.supervisor.stop(k.id)
        self.ledger.reclaim(lease.id)
        self.tokens.remove_lease_tokens(lease.id)
        self.watchdog.forget(lease.id)
        self.emit(kind, message, lease.id, principal=lease.principal)


def _offer(queue: asyncio.Queue[pb.WatchResponse], item: pb.WatchResponse) -> None:
    """Queue for a Watch subscriber; a slow one loses its oldest samples, not the worker's time."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def _replace(d: DeviceInfo, **changes: Any) -> DeviceInfo:
    import dataclasses

    return dataclasses.replace(d, **changes)


def _checked_kernel_args(args: list[str]) -> list[str]:
    """StartKernelRequest.kernel_args, refused with a sentence when they would do more than pass options."""
    if len(args) > 64 or any(len(a) > 4096 or "\x00" in a for a in args):
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                       "kernel_args: at most 64 arguments of 4096 characters each, without NUL bytes")
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in ("-f", "--f", "--existing") or name.endswith("connection_file"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"kernel argument {arg!r} would replace the connection file the worker writes; "
                           "remove it from the kernelspec's argv or the client's extra arguments")
    return args


def _file_error(relative: str, exc: OSError) -> RpcError:
    """A file-system error as a status; names the path the caller gave, never the worker's."""
    if isinstance(exc, FileNotFoundError):
        return RpcError(grpc.StatusCode.NOT_FOUND, f"no file {relative!r} in the kernel's directory")
    if isinstance(exc, (NotADirectoryError, FileExistsError, IsADirectoryError)):
        return RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{relative!r}: a part of the path is a file where a directory is needed, or the reverse")
    if exc.errno == errno.ENOSPC:
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{relative!r}: the worker's disk is full")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP):
        return RpcError(grpc.StatusCode.PERMISSION_DENIED, f"{relative!r}: {exc.strerror}")
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{relative!r}: {exc.strerror}")


def _confined(root: str, relative: str) -> Path:
    """A path inside a kernel's directory, or the status that says why not."""
    try:
        return paths.confined(root, relative, "the kernel's working directory")
    except paths.BadPath as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    except paths.PathEscapes as exc:
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None


class RuntimeServicer:
    """The v1 Runtime service; see remoting/README.md for each RPC's contract."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    # ------------------------------------------------------------------ inventory and leases

    @rpc
    async def GetInventory(self, request: pb.GetInventoryRequest, context: Any, caller: Caller) -> pb.Inventory:
        w = self.worker
        leased = w.ledger.device_usage()
        leases = [w.lease_proto(rec) for rec in w.ledger.leases() if caller.may_use(rec.id)]
        return pb.Inventory(
            worker_id=w.worker_id, version=tf_remoting.__version__, backend=w.backend.name,
            default_mode=pb.ISOLATION_MODE_HOST if w.backend.name == "host" else MODE_BY_NAME[w.config.isolation],
            oversubscription=w.config.oversubscription,
            devices=[w.device_proto(d, leased) for d in w.devices], leases=leases,
            sample_interval_ms=int(w.config.sample_interval * 1000),
            shares_filesystem=w.config.shares_filesystem)

    @rpc
    async def Allocate(self, request: pb.AllocateRequest, context: Any, caller: Caller) -> pb.Lease:
        w = self.worker
        mode = w.resolve_mode(request.mode)
        if request.qos not in pb.Qos.values():
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown qos {request.qos}")
        if len(request.labels) > 64 or any(len(k) + len(v) > 4096 for k, v in request.labels.items()):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "at most 64 labels of at most 4 KiB each")
        vram, compute = request.slice.vram, request.slice.compute
        if mode == pb.ISOLATION_MODE_EXCLUSIVE:
            rec = self._allocate_whole(caller, request, mode)
        else:
            rec = w.ledger.allocate(
                caller.principal, vram=vram, compute=compute, count=request.count or 1,
                qos=request.qos or pb.QOS_MEDIUM, model=request.model, mode=mode,
                ttl_seconds=request.ttl_seconds or w.config.lease_ttl, profile=request.profile,
                labels=dict(request.labels))
        w.emit(pb.EVENT_KIND_LEASE_CREATED,
               f"lease {rec.id} for {rec.principal}: {format_bytes(rec.slices[0].vram)} / "
               f"{rec.slices[0].compute} % on {len(rec.slices)} device(s)", rec.id, principal=rec.principal)
        return w.lease_proto(rec)

    def _allocate_whole(self, caller: Caller, request: pb.AllocateRequest, mode: int) -> LeaseRecord:
        w = self.worker
        compute = min(100, int(round(100 * w.config.oversubscription)))
        last: ledger_mod.LedgerError | None = None
        for total in sorted({d.vram_total for d in w.devices}):
            if total < request.slice.vram:
                continue
            try:
                return w.ledger.allocate(caller.principal, vram=total, compute=compute,
                                         count=request.count or 1, qos=request.qos or pb.QOS_MEDIUM,
                                         model=request.model, mode=mode,
                                         ttl_seconds=request.ttl_seconds or w.config.lease_ttl,
                                         profile=request.profile, labels=dict(request.labels))
            except ledger_mod.ResourceExhausted as exc:
                last = exc
        raise last or ledger_mod.ResourceExhausted("no device is large enough for an exclusive lease")

    @rpc
    async def Renew(self, request: pb.RenewRequest, context: Any, caller: Caller) -> pb.Lease:
        self.worker.check_scope(caller, request.lease_id)
        return self.worker.lease_proto(self.worker.ledger.renew(caller.principal, request.lease_id))

    @rpc
    async def Release(self, request: pb.ReleaseRequest, context: Any, caller: Caller) -> pb.ReleaseResponse:
        w = self.worker
        try:
            rec = w.ledger.get(caller.principal, request.lease_id)
        except ledger_mod.NotFound:
            # Idempotent: a lease that was released (or reclaimed) before is fine; unknown is not.
            return pb.ReleaseResponse(released=w.ledger.release(caller.principal, request.lease_id))
        for k in w.ledger.kernels(rec.id):
            w.supervisor.stop(k.id)
        released = w.ledger.release(caller.principal, rec.id)
        w.tokens.remove_lease_tokens(rec.id)
        w.watchdog.forget(rec.id)
        w.emit(pb.EVENT_KIND_LEASE_RELEASED, f"lease {rec.id} released by {caller.principal}",
               rec.id, principal=rec.principal)
        return pb.ReleaseResponse(released=released)

    @rpc
    async def Resize(self, request: pb.ResizeRequest, context: Any, caller: Caller) -> pb.Lease:
        w = self.worker
        w.check_scope(caller, request.lease_id)
        rec = w.ledger.resize(caller.principal, request.lease_id, request.slice.vram, request.slice.compute)
        w.emit(pb.EVENT_KIND_LEASE_RESIZED,
               f"lease {rec.id} resized to {format_bytes(rec.slices[0].vram)} / {rec.slices[0].compute} %",
               rec.id, principal=rec.principal)
        return w.lease_proto(rec)

    @rpc
    async def ListLeases(self, request: pb.ListLeasesRequest, context: Any, caller: Caller) -> pb.ListLeasesResponse:
        w = self.worker
        return pb.ListLeasesResponse(leases=[w.lease_proto(r) for r in w.ledger.leases(caller.principal)
                                             if caller.may_use(r.id)])

    # ------------------------------------------------------------------ kernels

    @rpc
    async def StartKernel(self, request: pb.StartKernelRequest, context: Any, caller: Caller) -> pb.Kernel:
        w = self.worker
        lease = w.ledger.get(caller.principal, request.lease_id)
        try:
            argv = w.supervisor.argv_for(request.environment, list(request.argv))
        except KeyError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown kernel environment {request.environment!r}; this worker has: "
                           f"{', '.join(sorted(w.supervisor.environments))}") from None
        argv += _checked_kernel_args(list(request.kernel_args))
        try:
            request.key.decode()
        except UnicodeDecodeError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the HMAC key must be UTF-8 text, as in "
                           "Jupyter connection files") from None
        if len(request.key) > 1024:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the HMAC key is longer than 1024 bytes")
        if request.signature_scheme and request.signature_scheme not in (
                "hmac-sha256", "hmac-sha1", "hmac-md5", "hmac-sha512"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unsupported signature scheme {request.signature_scheme!r}")
        if len(request.env) > MAX_ENV or any(not k or "=" in k or "\x00" in k + v for k, v in request.env.items()):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           "environment variables need non-empty names without '=' and no NUL bytes")
        kernel_id = uuid.uuid4().hex[:16]
        cwd = self._kernel_cwd(lease, request.cwd)
        kernel_token = secrets.token_urlsafe(32)
        env = {**request.env, **w.slice_env(lease, kernel_id, kernel_token)}
        rec = KernelRecord(id=kernel_id, lease_id=lease.id, principal=lease.principal, nanny_pid=0, pid=0,
                           status="starting", exit_code=None, cwd=cwd,
                           environment=request.environment or "python3", started_at=time.time(),
                           directory=str(w.supervisor.directory(kernel_id)), labels=dict(request.labels))
        w.ledger.add_kernel(rec)
        try:
            state = await w.supervisor.start(kernel_id, argv, env, cwd, request.key,
                                             request.signature_scheme)
        except (KernelStartError, OSError) as exc:
            w.ledger.update_kernel(kernel_id, status="exited", exit_code=-1)
            raise RpcError(grpc.StatusCode.INTERNAL, str(exc)) from None
        w.confine_host_kernel(lease, kernel_id, state.kernel_pid)
        (w.supervisor.directory(kernel_id) / "scope").write_text(token_digest_hex(kernel_token))
        w.tokens.add_kernel_token(kernel_token, lease.principal, lease.id)
        w.ledger.update_kernel(kernel_id, status="running", pid=state.kernel_pid, nanny_pid=state.nanny_pid)
        w.emit(pb.EVENT_KIND_KERNEL_STARTED, f"kernel {kernel_id} started in lease {lease.id}",
               lease.id, kernel_id, lease.principal)
        return w.kernel_proto(w.ledger.get_kernel(caller.principal, kernel_id))

    def _kernel_cwd(self, lease: LeaseRecord, requested: str) -> str:
        w = self.worker
        if w.config.shares_filesystem and requested:
            if not os.path.isdir(requested):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"working directory {requested!r} does not exist on the worker")
            return requested
        directory = w.state_dir / "work" / lease.id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(directory)

    @rpc
    async def Signal(self, request: pb.SignalRequest, context: Any, caller: Caller) -> pb.Kernel:
        w = self.worker
        rec = w.ledger.get_kernel(caller.principal, request.kernel_id)
        signum = {pb.SIGNAL_INTERRUPT: signal.SIGINT, pb.SIGNAL_TERMINATE: signal.SIGTERM,
                  pb.SIGNAL_KILL: signal.SIGKILL}.get(request.signal)
        if signum is None:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "signal must be INTERRUPT, TERMINATE or KILL")
        if not w.supervisor.signal(rec.id, signum):
            state = w.supervisor.state(rec.id)
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"kernel {rec.id} is not running (exit code {state.exit_code})")
        return w.kernel_proto(rec)

    @rpc
    async def KernelState(self, request: pb.KernelStateRequest, context: Any, caller: Caller) -> pb.Kernel:
        w = self.worker
        rec = w.ledger.get_kernel(caller.principal, request.kernel_id)
        w.check_scope(caller, rec.lease_id)
        state = w.supervisor.state(rec.id)
        msg = w.kernel_proto(rec)
        if state.status == "exited":
            msg.status = pb.KERNEL_STATUS_EXITED
            msg.exit_code = state.exit_code or 0
        return msg

    async def Channels(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[bytes]:
        """Raw pass-through between the client and the kernel's nanny: frames are never decoded
        here, except the first message, which names the kernel and is checked for ownership."""
        w = self.worker
        try:
            # Read the opening message first: refusing a stream mid-send can surface as INTERNAL.
            try:
                first = await anext(aiter(request_iterator))
            except StopAsyncIteration:
                return
            caller = w.authenticate(context, "Channels")
            try:
                opening = pb.ChannelsRequest.FromString(first)
            except Exception:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "malformed ChannelsRequest") from None
            if opening.WhichOneof("kind") != "open":
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               "the first message of a Channels stream must be 'open'")
            rec = w.ledger.get_kernel(caller.principal, opening.open.kernel_id)
            if caller.lease_scope:
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "a kernel token cannot open channels")
            try:
                link = await nanny_link.connect(str(w.supervisor.socket_path(rec.id)))
            except OSError:
                state = w.supervisor.state(rec.id)
                if state.status == "exited":
                    yield pb.ChannelsResponse(opened=pb.ChannelsOpened(kernel_id=rec.id)).SerializeToString()
                    yield pb.ChannelsResponse(exited=pb.KernelExited(exit_code=state.exit_code or 0)
                                              ).SerializeToString()
                    return
                raise RpcError(grpc.StatusCode.UNAVAILABLE,
                               f"kernel {rec.id} is starting or its nanny is not answering; retry") from None
        except RpcError as exc:
            w.metrics.rpc_error("Channels", exc.code.name)
            await context.abort(exc.code, exc.message)
            return
        except ledger_mod.LedgerError as exc:
            w.metrics.rpc_error("Channels", exc.code)
            await context.abort(_status(exc.code), str(exc))
            return

        link.send(first)
        w.attached[rec.id] = link

        async def upstream() -> None:
            async for raw in request_iterator:
                link.send(raw)
                if link.backlog() > (8 << 20):
                    await asyncio.sleep(0.01)  # let the nanny catch up

        pump = asyncio.create_task(upstream())
        try:
            while True:
                payload = await link.next()
                if payload is None:
                    break
                yield payload
            if w.supervisor.state(rec.id).status == "running":
                # The nanny dropped this stream (malformed input) while the kernel lives on.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "the kernel side closed this stream after a malformed message; reopen it")
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            link.close()
            if w.attached.get(rec.id) is link:
                del w.attached[rec.id]
            for _principal, _kernel, asked, answer in w.transfers.values():
                if asked is link and not answer.done():
                    answer.set_result(pb.TransferResult(
                        message="the Jupyter side's connection to this kernel closed before the transfer finished"))

    # ------------------------------------------------------------------ telemetry

    @rpc_stream
    async def Watch(self, request: pb.WatchRequest, context: Any, caller: Caller) -> AsyncIterator[pb.WatchResponse]:
        w = self.worker
        queue: asyncio.Queue[pb.WatchResponse] = asyncio.Queue(maxsize=64)
        entry = (queue, caller, bool(request.all_leases) and not caller.lease_scope)
        if w.started_event is not None and not caller.lease_scope:  # a kernel's own watch: its lease only
            queue.put_nowait(pb.WatchResponse(time=w.started_event.time, events=[w.started_event]))
        w.subscribers.append(entry)
        try:
            while True:
                item = await queue.get()
                if not request.include_devices:
                    del item.devices[:]
                yield item
        finally:
            w.subscribers.remove(entry)

    # ------------------------------------------------------------------ files

    @rpc
    async def PutFile(self, request_iterator: AsyncIterator[pb.PutFileRequest], context: Any,
                      caller: Caller) -> pb.FileInfo:
        w = self.worker
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "header":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the first PutFile message must be the header")
        rec = w.ledger.get_kernel(caller.principal, first.header.kernel_id)
        path = first.header.path
        target = _confined(rec.cwd, path)
        if target.is_dir():
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{path!r} is a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _file_error(path, exc) from None
        tmp = target.with_name(f".{target.name}.tf-upload-{uuid.uuid4().hex[:8]}")
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         (first.header.mode & 0o777) or 0o644)
            with os.fdopen(fd, "wb") as f:
                async for msg in request_iterator:
                    if msg.WhichOneof("kind") != "data":
                        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "only data may follow the header")
                    size += len(msg.data)
                    if size > MAX_FILE:
                        raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"file larger than {format_bytes(MAX_FILE)}")
                    f.write(msg.data)
            os.replace(tmp, target)
        except OSError as exc:
            raise _file_error(path, exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return pb.FileInfo(path=path, size=size)

    @rpc_stream
    async def GetFile(self, request: pb.GetFileRequest, context: Any, caller: Caller) -> AsyncIterator[pb.FileChunk]:
        w = self.worker
        rec = w.ledger.get_kernel(caller.principal, request.kernel_id)
        target = _confined(rec.cwd, request.path)
        try:
            # O_NONBLOCK: opening a FIFO must not block the worker's event loop.
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _file_error(request.path, exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{request.path!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            first = True
            while True:
                data = f.read(1 << 20)
                if not data and not first:
                    return
                yield pb.FileChunk(data=data, size=st.st_size if first else 0)
                first = False
                if not data:
                    return


    # ------------------------------------------------------------------ transfers (%vgpu push / pull)

    @rpc
    async def RequestTransfer(self, request: pb.TransferRequest, context: Any, caller: Caller) -> pb.TransferResult:
        w = self.worker
        rec = w.ledger.get_kernel(caller.principal, request.kernel_id)
        w.check_scope(caller, rec.lease_id)
        if request.direction not in (pb.TRANSFER_TO_KERNEL, pb.TRANSFER_FROM_KERNEL):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "direction must be TO_KERNEL or FROM_KERNEL")
        _confined(rec.cwd, request.kernel_path)
        client_path = request.client_path
        if not client_path or os.path.isabs(client_path) or "\x00" in client_path:
            # The client confines it to its own directory; the worker only refuses what is never valid.
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           "give the notebook-side path relative to the notebook's directory")
        link = w.attached.get(rec.id)
        if link is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"no Jupyter-side client is connected to kernel {rec.id}, so no file can move to or "
                           "from its notebook directory")
        transfer_id = uuid.uuid4().hex
        answer: asyncio.Future[pb.TransferResult] = asyncio.get_running_loop().create_future()
        w.transfers[transfer_id] = (rec.principal, rec.id, link, answer)
        link.inject(pb.ChannelsResponse(transfer=pb.TransferAsk(
            transfer_id=transfer_id, direction=request.direction, client_path=client_path,
            kernel_path=request.kernel_path)).SerializeToString())
        timeout = request.timeout_seconds or TRANSFER_TIMEOUT
        try:
            result = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the Jupyter side did not finish the transfer within {timeout:g} s") from None
        finally:
            del w.transfers[transfer_id]
        result.transfer_id = transfer_id
        return result

    @rpc
    async def CompleteTransfer(self, request: pb.TransferResult, context: Any,
                               caller: Caller) -> pb.CompleteTransferResponse:
        pending = self.worker.transfers.get(request.transfer_id)
        if pending is None or pending[0] != caller.principal:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no transfer {request.transfer_id!r} is waiting")
        if not pending[3].done():
            pending[3].set_result(request)
        return pb.CompleteTransferResponse()


def _handlers(servicer: RuntimeServicer) -> grpc.GenericRpcHandler:
    """The Runtime service's method table. Channels is registered with raw bytes in and out."""
    unary = {
        "GetInventory": (pb.GetInventoryRequest, pb.Inventory),
        "Allocate": (pb.AllocateRequest, pb.Lease),
        "Renew": (pb.RenewRequest, pb.Lease),
        "Release": (pb.ReleaseRequest, pb.ReleaseResponse),
        "Resize": (pb.ResizeRequest, pb.Lease),
        "ListLeases": (pb.ListLeasesRequest, pb.ListLeasesResponse),
        "StartKernel": (pb.StartKernelRequest, pb.Kernel),
        "Signal": (pb.SignalRequest, pb.Kernel),
        "KernelState": (pb.KernelStateRequest, pb.Kernel),
        "RequestTransfer": (pb.TransferRequest, pb.TransferResult),
        "CompleteTransfer": (pb.TransferResult, pb.CompleteTransferResponse),
    }
    table: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=req.FromString,
                                                  response_serializer=resp.SerializeToString)
        for name, (req, resp) in unary.items()
    }
    table["Channels"] = grpc.stream_stream_rpc_method_handler(servicer.Channels)
    table["Watch"] = grpc.unary_stream_rpc_method_handler(
        servicer.Watch, request_deserializer=pb.WatchRequest.FromString,
        response_serializer=pb.WatchResponse.SerializeToString)
    table["PutFile"] = grpc.stream_unary_rpc_method_handler(
        servicer.PutFile, request_deserializer=pb.PutFileRequest.FromString,
        response_serializer=pb.FileInfo.SerializeToString)
    table["GetFile"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetFile, request_deserializer=pb.GetFileRequest.FromString,
        response_serializer=pb.FileChunk.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, table)


def _credentials(config: WorkerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = Path(config.tls_key).read_bytes()
    chain = Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


async def serve(config: WorkerConfig, address_file: str = "", stop: asyncio.Event | None = None) -> None:
    """Run the worker until SIGTERM/SIGINT (or `stop` is set). Kernels keep running after it."""
    worker = Worker(config)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((_handlers(RuntimeServicer(worker)),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    creds = _credentials(config)
    listen = config.listen
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    # Kernels reach their own worker over a unix socket in the (0700) state directory: it works
    # whatever TLS/mTLS the network address demands, and never leaves the host.
    worker.kernel_address = f"unix:{worker.state_dir / 'kernels.sock'}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(worker.state_dir / "kernels.sock")
    server.add_insecure_port(worker.kernel_address)
    if listen.startswith("unix:"):
        worker.address = listen
    else:
        host = listen.rsplit(":", 1)[0]
        worker.address = f"{host}:{port}"
    adopted = worker.adopt()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = None
    if config.metrics_port >= 0:
        metrics_port = worker.metrics.start_http(config.metrics_port, config.metrics_addr)
    worker.start_background()
    for d in worker.devices:
        log.info("device %d: %s (%s, %s, modes %s, memory enforced by %s)", d.index, d.name, d.uuid,
                 format_bytes(d.vram_total), ",".join(d.modes), d.memory_enforcement)
    log.info("worker %s %s: backend %s, isolation %s, oversubscription %.2f, state %s",
             worker.worker_id, tf_remoting.__version__, worker.backend.name,
             "host" if worker.backend.name == "host" else config.isolation, config.oversubscription,
             worker.state_dir)
    log.info("listening on %s (%s)%s; re-adopted %d kernel(s)", worker.address,
             "TLS" + (" + client certificates" if config.tls_client_ca else "") if creds else "plaintext",
             f"; metrics on http://{config.metrics_addr}:{metrics_port}/metrics" if metrics_port else "",
             adopted)
    worker.started_event = worker.emit(pb.EVENT_KIND_WORKER_STARTED,
                                       f"worker {worker.worker_id} started; re-adopted {adopted} kernel(s)")
    if address_file:
        tmp = address_file + ".tmp"
        Path(tmp).write_text(worker.address)
        os.replace(tmp, address_file)

    stop = stop or worker.stop_event
    worker.stop_event = stop
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: kernels keep running and are re-adopted at the next start")
    await health_servicer.enter_graceful_shutdown()
    await worker.stop_background()
    await server.stop(grace=1.0)
    worker.backend.close()
