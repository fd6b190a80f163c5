"""The worker's state: its devices, ledger, kernels, telemetry and Watch subscribers, and the
background tick that keeps them current.

Everything here survives a restart in the state directory (the SQLite ledger and one directory per
kernel). Ledger calls block (SQLite, and another process may hold its lock), so they run on one
thread of their own (`Worker.db`), never on the event loop that relays kernels' channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import pwd
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import grpc

import tf_remoting
from tf_remoting.devices import open_backend
from tf_remoting.devices.base import DeviceBackend, DeviceInfo, DeviceSample, Usage
from tf_remoting.devices.cgroup import CgroupSlice, cgroup_v2_memory_root
from tf_remoting.proto import BUSY_UTILIZATION, WAIT_QUOTA, enum_name, pb
from tf_remoting.quantities import parse_bytes
from tf_remoting.slice_env import SliceEnv
from tf_remoting.worker import isolation, nanny_link, tenants
from tf_remoting.worker import leases as ledger_mod
from tf_remoting.worker.auth import Caller, TokenTable, ensure_token_file
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.kernels import KernelSupervisor
from tf_remoting.worker.leases import DeviceCapacity, KernelRecord, LeaseRecord, Ledger
from tf_remoting.worker.line_store import LineStore, Served
from tf_remoting.worker.metrics import Metrics
from tf_remoting.worker.preemption import Device, Held, Waiter, to_release
from tf_remoting.worker.quotas import Quota, Quotas
from tf_remoting.worker.telemetry import Sampler
from tf_remoting.worker.visibility import Visibility, sees_event, sees_lease
from tf_remoting.worker.watchdog import Watchdog, WatchdogPolicy

log = logging.getLogger("tf_remoting.worker")
STRAY_SWEEP_SECONDS = 2.0  # how often processes of tenant uids are checked against the live nannies

P = ParamSpec("P")
T = TypeVar("T")
Subscriber = tuple["asyncio.Queue[pb.WatchResponse]", Caller, bool]  # (queue, caller, sees every principal's)


class Worker:
    """Everything the servicer needs: devices, ledger, kernels, telemetry, events."""

    def __init__(self, config: WorkerConfig, backend: DeviceBackend | None = None) -> None:
        config.validate()
        self.config = config
        self.state_dir = config.state_path
        self.tenant_range = tenants.parse_uid_range(config.tenant_uids) if config.tenant_uids else None
        if self.tenant_range is not None:
            tenants.check_capabilities()
            os.umask(0o077)  # nothing the worker makes is readable by a kernel unless it is given
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.worker_id = self._worker_id()
        if ensure_token_file(config.token_path):
            log.info("created token file %s with a new random token", config.token_path)
        if self.tenant_range is not None:
            self._check_tenant_setup()
        self.tokens = TokenTable(config.token_path)
        self.visibility = Visibility.of(config.admin_principals, config.admin_groups)
        self.backend = backend or open_backend(config.backend)
        self.devices: list[DeviceInfo] = self._offered_devices()
        self.device_by_uuid = {d.uuid: d for d in self.devices}
        self.ledger = Ledger(self.state_dir / "ledger.sqlite3", self._capacities())
        # The waiting line, in the ledger; requests of the previous process keep their place for their TTL.
        self.quotas = Quotas.parse(config.quotas)
        # principal -> the groups its latest call carried: a pass of the line serves principals
        # that are not calling then (after a restart: those its waiting requests carried).
        self.groups_of: dict[str, frozenset[str]] = {}
        self.line = LineStore(self.ledger, self.quota_of if self.quotas.configured else None)
        self.line.detach_all()
        self.groups_of.update(self.line.groups_of_waiting())
        self._line_served = asyncio.Event()  # set (and replaced) after each pass that granted something
        # One thread for the ledger: its calls are serialised by its own lock anyway, and a ledger
        # waiting on another process's lock must hold neither the event loop nor the sampler's threads.
        self._ledger_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self.supervisor = KernelSupervisor(self.state_dir, config.kernel_environments,
                                           replay_messages=config.replay_messages,
                                           replay_bytes=parse_bytes(config.replay_bytes),
                                           tenants=self.tenant_range is not None)
        self.device_groups: tuple[int, ...] = ()
        self._tenants: dict[str, tenants.Tenant] = {}  # principal -> tenant, once its uid and home are ready
        self._next_stray_sweep = 0.0  # see _end_tenant_strays
        if self.tenant_range is not None:
            self._private_state()
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
        # lease id -> unix time a sample last found it busy (a slice above BUSY_UTILIZATION or a kernel
        # running a cell, nanny_state.ACTIVITY_FILE)
        self.last_active: dict[str, float] = {}
        # QoS that holds: lease id -> QoS of the waiting request that needs its room (plan_qos_release)
        self.release_for: dict[str, int] = {}
        self.subscribers: list[Subscriber] = []
        # The newest Channels stream of each kernel (its Jupyter side), and transfers it was asked
        # for: transfer id -> (principal, kernel id, stream, answer).
        self.attached: dict[str, nanny_link.NannyLink] = {}
        self.transfers: dict[str, tuple[str, str, nanny_link.NannyLink, asyncio.Future[pb.TransferResult]]] = {}
        # Kernels whose exit was announced but not yet written to the ledger (the write is retried).
        self._exits_announced: set[str] = set()
        # This process's WORKER_STARTED: it is sent before anyone can be watching, so every Watch
        # opened later (a client reconnecting after a restart) begins with it.
        self.started_event: pb.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stop_event = asyncio.Event()
        self._idle_since = time.monotonic()

    def quota_of(self, principal: str) -> Quota:
        """The principal's quota on this worker (worker/quotas.py), with the groups of its latest call."""
        return self.quotas.resolve(principal, self.groups_of.get(principal, frozenset()))

    def caller_quota(self, caller: Caller) -> Quota | None:
        """The caller's quota (remembering its groups for the line's passes); None when none is configured."""
        if not caller.lease_scope:  # a kernel token carries no groups: keep its principal's last ones
            self.groups_of[caller.principal] = caller.groups
        return self.quota_of(caller.principal) if self.quotas.configured else None

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking ledger call (or a function made of them) on the ledger's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ledger_thread, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._ledger_thread.shutdown(wait=True)
        self.ledger.close()

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
            devices = [dataclasses.replace(d, vram_total=min(d.vram_total, limit)) for d in devices]
        return devices

    def _capacities(self) -> list[DeviceCapacity]:
        compute = int(round(100 * self.config.oversubscription))
        return [DeviceCapacity(uuid=d.uuid, index=d.index, name=d.name, vram_total=d.vram_total,
                               compute_capacity=compute) for d in self.devices]

    # ------------------------------------------------------------------ tenant uids

    def _check_tenant_setup(self) -> None:
        """With tenant uids: refuse to start (ValueError, a sentence) where kernels running as other
        users could read the token file or could not start at all."""
        if tenants.readable_by_others(self.config.token_path):
            raise ValueError(f"the token file {self.config.token_path} is readable by other users; with "
                             f"--tenant-uids kernels run as other users and could read it: "
                             f"chmod 600 {self.config.token_path}")
        blocked = tenants.unreachable_for_others([sys.executable, sys.prefix, sys.base_prefix,
                                                  os.path.dirname(tf_remoting.__file__), self.state_dir.parent])
        if blocked:
            raise ValueError(f"with --tenant-uids kernels run as other users, who cannot enter {', '.join(blocked)} "
                             "(no search permission for others) to reach the Python interpreter, its packages or "
                             "the state directory; install tf-jupyter where others can read it (e.g. a venv in "
                             "/opt) or chmod o+x those directories")
        for principal, account in self.config.tenant_accounts.items():
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                raise ValueError(f"tenant_accounts: principal {principal!r} maps to account {account!r}, "
                                 "which this host does not have") from None
            if entry.pw_uid == 0 or entry.pw_gid == 0:
                raise ValueError(f"tenant_accounts: account {account!r} of principal {principal!r} is root's "
                                 "(uid or gid 0); kernels never run as root")

    def _private_state(self) -> None:
        """The state directory with tenant uids: passable by kernels (0711) to reach their own
        directories, but not listable, and the worker's files in it (ledger, ids) 0600."""
        tenants.open_dir(self.state_dir)
        for name in ("homes", "work"):
            tenants.open_dir(self.state_dir / name)
        (self.state_dir / "scopes").mkdir(mode=0o700, exist_ok=True)
        for path in [*self.state_dir.glob("ledger.sqlite3*"), self.state_dir / "worker_id", self.config.token_path]:
            tenants.private_file(path)
        self.device_groups = tenants.device_groups()
        if self.device_groups:
            log.info("tenant kernels get the groups of the GPU device files: %s", self.device_groups)

    def open_kernel_socket(self) -> None:
        """kernels.sock, where kernels call the worker with their own tokens: reachable by every
        tenant uid (each call is authenticated by its token)."""
        if self.tenant_range is not None:
            os.chmod(self.state_dir / "kernels.sock", 0o666)

    def tenant(self, principal: str) -> tenants.Tenant | None:
        """Who the principal's kernels run as (None without tenant uids), its home made ready.
        Blocking (the ledger): call through `db`. ResourceExhausted when the uid range is used up."""
        if self.tenant_range is None:
            return None
        known = self._tenants.get(principal)
        if known is not None and known.home.is_dir():
            return known
        try:
            self._tenants[principal] = tenant = self._tenant(principal)
            return tenant
        except ValueError as exc:  # its home is not a directory
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"principal {principal!r}: {exc}") from None

    def _tenant(self, principal: str) -> tenants.Tenant:
        assert self.tenant_range is not None
        account = self.config.tenant_accounts.get(principal)
        if account:
            entry = pwd.getpwnam(account)
            groups = tuple(sorted((set(os.getgrouplist(account, entry.pw_gid)) | set(self.device_groups))
                                  - {entry.pw_gid, 0}))
            home = Path(entry.pw_dir)
            try:
                own_home = os.lstat(home).st_uid == entry.pw_uid and home.is_dir()
            except OSError:
                own_home = False
            if not own_home:
                home = tenants.private_dir(self.state_dir / "homes" / tenants.safe_name(principal),
                                           entry.pw_uid, entry.pw_gid)
            return tenants.Tenant(principal, entry.pw_uid, entry.pw_gid, home, groups)
        first, last = self.tenant_range
        uid = self.ledger.tenant_uid(principal, first, last, tenants.has_account)
        home = tenants.private_dir(self.state_dir / "homes" / tenants.safe_name(principal), uid, uid)
        return tenants.Tenant(principal, uid, uid, home, self.device_groups)

    def adopt(self) -> int:
        """Re-adopt kernels left running by an earlier worker process; returns how many."""
        adopted = 0
        for rec in self.ledger.kernels():
            state = self.supervisor.state(rec.id)
            if state.status == "running":
                adopted += 1
                scope = self.supervisor.scope_path(rec.id)
                with contextlib.suppress(OSError):
                    self.tokens.add_kernel_digest(scope.read_text().strip(), rec.principal, rec.lease_id, rec.id)
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

    # ------------------------------------------------------------------ modes and slices

    @property
    def default_mode(self) -> pb.IsolationMode:
        return isolation.default_mode(self.devices, self.config.isolation)

    def resolve_mode(self, requested: int) -> pb.IsolationMode:
        """The isolation mode a new lease really gets; never one the devices cannot give."""
        return isolation.resolve_mode(requested, self.devices, self.config.isolation)

    def check_scope(self, caller: Caller, lease_id: str, kernel_id: str = "") -> None:
        """A kernel's token acts on its own lease and, where a call names a kernel, its own kernel."""
        if not caller.may_use(lease_id):
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"lease {lease_id} is not the lease this kernel token belongs to")
        if kernel_id and caller.kernel_scope and kernel_id != caller.kernel_scope:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                           f"kernel {kernel_id} is not the kernel this token belongs to; a kernel's token acts "
                           "only on its own kernel")

    def slice_env(self, lease: LeaseRecord, kernel_id: str, kernel_token: str) -> dict[str, str]:
        """The variables that put a kernel inside its slice and tell it how to reach us."""
        first = lease.slices[0]
        device = self.device_by_uuid[first.device_uuid]
        mode_name = enum_name(pb.IsolationMode, lease.mode) if lease.mode in isolation.MODES else "soft"
        slice_ = SliceEnv(
            lease_id=lease.id, kernel_id=kernel_id, principal=lease.principal,
            device_uuids=tuple(s.device_uuid for s in lease.slices), device_name=device.name,
            device_kind=device.kind, vram_limit=first.vram, vram_total=device.vram_total,
            compute_limit=first.compute, mode=mode_name,
            memory_enforcement=enum_name(pb.MemoryEnforcement, isolation.enforcement(lease.mode, device)),
            worker=self.kernel_address or self.address, token=kernel_token,
            shares_filesystem=self.config.shares_filesystem)
        return {**slice_.to_env(), **isolation.extra_env(lease, device)}

    # ------------------------------------------------------------------ events

    def emit(self, kind: int, message: str, lease_id: str = "", kernel_id: str = "",
             principal: str = "", by: str = "") -> pb.Event:
        event = pb.Event(kind=cast(pb.EventKind, kind), time=time.time(), lease_id=lease_id, kernel_id=kernel_id,
                         principal=principal, message=message, by=by)
        self.metrics.event(enum_name(pb.EventKind, kind))
        log.info("event %s: %s", pb.EventKind.Name(kind), message)
        for queue, caller, everyone in self.subscribers:
            if sees_event(caller, principal, lease_id, kernel_id, everyone):
                offer(queue, pb.WatchResponse(time=event.time, events=[event]))
        return event

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
            except Exception:  # each step guards itself; this is the last line
                log.exception("telemetry tick failed")
                self.metrics.tick_error("tick")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _step_failed(self, step: str, what: str) -> None:
        log.exception("telemetry tick: %s failed; the tick goes on and retries it next time", what)
        self.metrics.tick_error(step)

    async def tick(self) -> None:
        """One sample: kernel exits, expiries, usage, watchdog, metrics, Watch subscribers.

        Each step (and each lease or kernel within one) stands alone: a failure, such as a ledger
        write refused by a full disk, is logged, counted in tf_vgpu_tick_errors and retried at the
        next tick, while the other steps still run.
        """
        cpu_began = time.thread_time()  # this tick's CPU time, counted in tf_vgpu_sampling_cpu_seconds
        try:
            self.supervisor.reap()
        except Exception:
            self._step_failed("reap", "reaping exited nannies")
        try:
            live = await self.db(self.ledger.live)
        except Exception:
            self._step_failed("ledger", "reading the ledger")
            return  # nothing below has its rows; the next tick reads again
        all_kernels = live.kernels  # the ledger's own records (no copies): read only
        try:
            states = self.supervisor.states([rec.id for rec in all_kernels])  # one poll() for all nannies
        except Exception:
            self._step_failed("kernel_state", "reading the kernels' states")
            states = {}
        for rec in all_kernels:
            state = states.get(rec.id)
            if state is not None and state.status == "exited" and rec.status != "exited":
                try:
                    await self._record_exit(rec, state.exit_code)
                except Exception:
                    self._step_failed("kernel_exit", f"recording the exit of kernel {rec.id}")
        try:
            await self._end_tenant_strays()
        except Exception:
            self._step_failed("strays", "ending processes of tenant uids outside every kernel")
        try:
            expired = await self.db(self.ledger.expired)
        except Exception:
            self._step_failed("ledger", "listing expired leases")
            expired = []
        for lease in expired:
            try:
                await self.reclaim(lease, pb.EVENT_KIND_LEASE_EXPIRED,
                                   f"lease {lease.id} of {lease.principal} expired (no heartbeat for "
                                   f"{lease.ttl_seconds} s): slice reclaimed and its kernels stopped")
            except Exception:
                self._step_failed("reclaim", f"reclaiming expired lease {lease.id}")
        line_ok, line = False, None
        try:
            line, line_ok = await self._tend_line(), True
        except Exception:
            self._step_failed("line", "serving the waiting line")

        try:
            live = await self.db(self.ledger.live)
        except Exception:
            self._step_failed("ledger", "reading the ledger")
        active = live.leases
        all_kernels = live.kernels
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
        sampling_cpu = 0.0
        try:
            device_samples, usage, sampling_cpu = await asyncio.to_thread(self._sample_timed, query)
            self.device_samples = {s.uuid: s for s in device_samples}
            self.usage = usage
        except Exception:
            self._step_failed("sample", "sampling devices and kernels")
            device_samples, usage = list(self.device_samples.values()), self.usage
        cpu_began = time.thread_time()
        leased = live.device_usage

        lease_samples = []
        observed_at = time.monotonic()
        now = time.time()
        self.last_active = {lease.id: self.last_active.get(lease.id, lease.created_at) for lease in active}
        for lease in active:
            used_total = 0
            for s in lease.slices:
                u = usage.get(f"{lease.id}/{s.device_uuid}", Usage(0, 0.0))
                used_total += u.vram_used
                if u.utilization > BUSY_UTILIZATION:
                    self.last_active[lease.id] = now
                lease_samples.append(pb.LeaseSample(
                    lease_id=lease.id, principal=lease.principal, device_uuid=s.device_uuid,
                    vram_used=u.vram_used, vram_limit=s.vram, utilization=u.utilization,
                    compute_limit=s.compute, mode=cast(pb.IsolationMode, lease.mode),
                    kernel_ids=kernel_ids.get(lease.id, [])))
            for k in kernels_by_lease.get(lease.id, []):  # a cell running on the CPU is activity too
                activity = self.supervisor.activity(k.id) if k.status != "exited" else None
                if activity is not None:
                    busy, since = activity
                    self.last_active[lease.id] = now if busy else max(self.last_active[lease.id], min(since, now))
            limit = sum(s.vram for s in lease.slices)
            try:
                for action in self.watchdog.observe(lease.id, used_total, limit, observed_at):
                    self.watchdog_act(lease, action.kind, action.message, kernels_by_lease.get(lease.id, []))
            except Exception:
                self._step_failed("watchdog", f"the watchdog of lease {lease.id}")

        if line_ok:  # a tick whose pass failed keeps the last marks
            try:
                self.plan_qos_release(line, active, leased, now)
            except Exception:
                self._step_failed("qos_release", "planning QoS release")

        try:
            self.metrics.update(self.devices, device_samples, leased, [
                {"lease": s.lease_id, "principal": s.principal, "device": s.device_uuid,
                 "vram_used": s.vram_used, "vram_limit": s.vram_limit, "utilization": s.utilization,
                 "compute_limit": s.compute_limit} for s in lease_samples],
                kernels=sum(1 for ks in kernels_by_lease.values() for k in ks if k.status != "exited"))
        except Exception:
            self._step_failed("metrics", "updating the metrics")

        now = time.time()
        devices = [pb.DeviceSample(device_uuid=s.uuid, vram_used=s.vram_used,
                                   vram_total=self.device_by_uuid[s.uuid].vram_total if s.uuid in
                                   self.device_by_uuid else 0, utilization=s.utilization,
                                   vram_leased=leased.get(s.uuid, (0, 0))[0],
                                   compute_leased=leased.get(s.uuid, (0, 0))[1]) for s in device_samples]
        for queue, caller, everyone in self.subscribers:
            mine = [s for s in lease_samples if sees_lease(caller, s.principal, s.lease_id, everyone)]
            offer(queue, pb.WatchResponse(time=now, devices=devices if not caller.lease_scope else [],
                                          leases=mine))
        self.metrics.sampling_cpu.inc(cpu + sampling_cpu + time.thread_time() - cpu_began)

    async def _end_tenant_strays(self) -> None:
        """With tenant uids, end every process of a tenant uid that no live nanny accounts for. The
        nanny runs as its tenant, so a kernel may kill it; what that kernel started would then run on
        outside any slice, uncounted, after its lease is gone. Every STRAY_SWEEP_SECONDS."""
        now = time.monotonic()
        if self.tenant_range is None or now < self._next_stray_sweep:
            return
        self._next_stray_sweep = now + STRAY_SWEEP_SECONDS
        processes = await asyncio.to_thread(tenants.tenant_processes, self.tenant_range)
        roots = self.supervisor.nanny_pids()  # read after the scan: a nanny started meanwhile is in it
        for pid in tenants.end_strays(processes, roots):
            log.warning("process %d of a tenant uid ran outside every kernel (its nanny is gone): ended", pid)

    async def _record_exit(self, rec: KernelRecord, exit_code: int | None) -> None:
        """A kernel's exit: announced once, written to the ledger (retried until it is)."""
        if rec.id not in self._exits_announced:
            self._exits_announced.add(rec.id)
            self.remove_cgroup(rec.id)
            self.emit(pb.EVENT_KIND_KERNEL_EXITED, f"kernel {rec.id} exited with code {exit_code}",
                      rec.lease_id, rec.id, rec.principal)
        try:
            await self.db(self.ledger.update_kernel, rec.id, status="exited", exit_code=exit_code)
        except ledger_mod.NotFound:
            pass
        self._exits_announced.discard(rec.id)

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

    # ------------------------------------------------------------------ the waiting line

    def line_served(self) -> asyncio.Event:
        """Set at the next pass that grants anything (waiters then collect their leases)."""
        return self._line_served

    async def serve_line(self) -> Served:
        """One pass of the waiting line (capacity freed): grants in line order, in one ledger
        transaction, then wakes the waiting Allocates. Returns the pass (who still waits, and why)."""
        served = await self.db(self.line.serve)
        self.announce_grants(served)
        return served

    def announce_grants(self, served: Served, skip: str = "") -> None:
        """Events for the requests a pass granted (``skip``: the caller's own, granted without waiting)."""
        for key, lease in served.granted.items():
            if key == skip:
                continue
            req = served.requests[key]
            self.emit(pb.EVENT_KIND_REQUEST_GRANTED,
                      f"request {req.request_id} of {req.principal} granted lease {lease.id} after waiting "
                      f"{max(0.0, lease.created_at - req.arrival):.1f} s", lease.id, principal=req.principal)
        if served.granted:
            self._line_served.set()
            self._line_served = asyncio.Event()

    async def _tend_line(self) -> Served | None:
        """Each tick: drop requests past their deadline or never re-attached, then serve the line
        (a safety net: Release, expiry and Resize serve it at once). Returns the pass; None when
        nobody waits."""
        for req in await self.db(self.line.expire):
            why = ("waited past its deadline" if req.detached_at is None
                   else "was not re-attached within its TTL after a worker restart")
            self.emit(pb.EVENT_KIND_REQUEST_DROPPED, f"request {req.request_id} of {req.principal} left the "
                      f"waiting line: it {why}", principal=req.principal)
        if await self.db(self.line.has_waiting):
            return await self.serve_line()
        return None

    def plan_qos_release(self, served: Served | None, active: Sequence[LeaseRecord],
                         leased: Mapping[str, tuple[int, int]], now: float) -> None:
        """QoS that holds (worker/preemption.py): mark the idle leases, any principal's, whose room a
        waiting higher-QoS request needs (`Lease.release_for`); their owners' Jupyter servers warn
        the kernels and shut them down. `served`: this tick's pass of the line (who still waits and
        why; None: nobody). A lease that becomes active, or that the line stops needing, is unmarked
        at the next tick."""
        if not self.config.qos_release_idle or not active or served is None or not served.decision.waiting:
            self.release_for = {}
            return
        waiting = []
        for key, (_, reason, _) in sorted(served.decision.waiting.items(), key=lambda item: item[1][0]):
            req = served.requests[key]
            waiting.append(Waiter(req.qos, req.vram, req.compute, max(1, req.count), req.whole,
                                  for_room=reason != WAIT_QUOTA, model=req.model))
        devices = [Device(d.uuid, d.vram_total, max(0, d.vram_total - leased.get(d.uuid, (0, 0))[0]),
                          d.compute_capacity, max(0, d.compute_capacity - leased.get(d.uuid, (0, 0))[1]), d.name)
                   for d in self.ledger.devices]
        held = [Held(lease.id, lease.qos, now - self.last_active.get(lease.id, lease.created_at),
                     tuple((s.device_uuid, s.vram, s.compute) for s in lease.slices)) for lease in active]
        marked = {r.lease_id: r.waiter.qos for r in to_release(waiting, held, devices, self.config.qos_release_idle)}
        principal_of = {lease.id: lease.principal for lease in active}
        for lease_id in marked.keys() - self.release_for.keys():
            log.info("lease %s of %s is idle and a QoS %s request waits for its room: marked for release",
                     lease_id, principal_of[lease_id], enum_name(pb.Qos, marked[lease_id]))
        self.release_for = marked

    async def reclaim(self, lease: LeaseRecord, kind: int, message: str) -> None:
        """Stop a lease's kernels and free its slices (expiry); a failed ledger write raises, and
        the lease, still expired, is reclaimed again at the next tick."""
        await self.db(self.ledger.reclaim, lease.id)  # first: a kernel starting in it stops itself
        for k in await self.db(self.ledger.kernels, lease.id):
            self.supervisor.stop(k.id)
        self.tokens.remove_lease_tokens(lease.id)
        self.watchdog.forget(lease.id)
        self.emit(kind, message, lease.id, principal=lease.principal)
        await self.serve_line()


def offer(queue: asyncio.Queue[pb.WatchResponse], item: pb.WatchResponse) -> None:
    """Queue for a Watch subscriber; a slow one loses its oldest samples, not the worker's time."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)
