"""The Runtime service's methods: thin translations between protobuf and the worker's state.

Authentication, request limits and error mapping are the interceptor's (`interceptor.py`): a
method reads its caller with `current_caller()` and raises `RpcError` (or lets a ledger error
through) to answer with a status. Ledger calls go through `Worker.db`, off the event loop. See
remoting/README.md for each RPC's contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

import tf_remoting
from tf_remoting.proto import WAIT_NO_ROOM, pb, pb_grpc
from tf_remoting.quantities import format_bytes
from tf_remoting.worker import isolation, nanny_link
from tf_remoting.worker import leases as ledger_mod
from tf_remoting.worker.auth import token_digest_hex
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.interceptor import current_caller
from tf_remoting.worker.kernels import KernelStartError
from tf_remoting.worker.leases import KernelRecord, LeaseRecord
from tf_remoting.worker.line_store import Request, Served, check_request_id, new_request_id
from tf_remoting.worker.messages import (
    device_message,
    kernel_message,
    lease_message,
    quota_status_message,
    waiting_messages,
)
from tf_remoting.worker.quotas import Quota
from tf_remoting.worker.state import Worker
from tf_remoting.worker.tenants import Tenant, private_dir
from tf_remoting.worker.transfers import FileTransfers
from tf_remoting.worker.waiting_line import describe_wait

MAX_ENV = 256
SIGNALS = {pb.SIGNAL_INTERRUPT: signal.SIGINT, pb.SIGNAL_TERMINATE: signal.SIGTERM, pb.SIGNAL_KILL: signal.SIGKILL}
log = logging.getLogger("tf_remoting.worker")
CANCELLED = "its caller cancelled the call"  # or its deadline passed, or its connection broke
T = TypeVar("T")


def checked_kernel_args(args: list[str]) -> list[str]:
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


class RuntimeServicer(FileTransfers, pb_grpc.RuntimeServicer):
    """The v1 Runtime service over one `Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    # ------------------------------------------------------------------ inventory and leases

    async def GetInventory(self, request: pb.GetInventoryRequest, context: Any) -> pb.Inventory:
        """Devices with everyone's leased totals; leases as `visibility` shows them to the caller
        (an admin: every principal's)."""
        w, caller = self.worker, current_caller()
        everyone = w.visibility.is_admin(caller)
        shown = w.visibility.lease_filter(caller, everyone)

        quota = w.caller_quota(caller) or Quota()

        def read() -> tuple[dict[str, tuple[int, int]], list[pb.Lease], list[pb.WaitingEntry], pb.QuotaStatus]:
            return (w.ledger.device_usage(),
                    [lease_message(w, r) for r in w.ledger.leases() if shown(r.principal, r.id)],
                    waiting_messages(w.line.snapshot(), caller.principal, everyone),
                    quota_status_message(quota, w.ledger.quota_use(caller.principal)))

        leased, leases, waiting, quota_status = await w.db(read)
        return pb.Inventory(
            worker_id=w.worker_id, version=tf_remoting.__version__, backend=w.backend.name,
            default_mode=w.default_mode, oversubscription=w.config.oversubscription,
            devices=[device_message(w, d, leased) for d in w.devices], leases=leases,
            sample_interval_ms=int(w.config.sample_interval * 1000),
            shares_filesystem=w.config.shares_filesystem,
            view=pb.INVENTORY_VIEW_ALL if everyone else pb.INVENTORY_VIEW_OWN, viewer=caller.principal,
            waiting=waiting, quota=quota_status)

    async def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.Lease:
        """Every Allocate goes through the worker's waiting line (worker/waiting_line.py): granted
        now when the line lets it start, else RESOURCE_EXHAUSTED, or with `wait` it keeps its place
        until granted, cancelled or `wait_seconds` pass."""
        w, caller = self.worker, current_caller()
        w.caller_quota(caller)  # the line's passes check the caller's quota with the groups of this call
        mode = w.resolve_mode(request.mode)
        if request.qos not in pb.Qos.values():
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown qos {request.qos}")
        if len(request.labels) > 64 or any(len(k) + len(v) > 4096 for k, v in request.labels.items()):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "at most 64 labels of at most 4 KiB each")
        if not 0 <= request.wait_seconds <= ledger_mod.MAX_TTL_SECONDS:  # also refuses NaN
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"wait_seconds {request.wait_seconds} is out of range: use 0 (the lease TTL) to "
                           f"{ledger_mod.MAX_TTL_SECONDS} seconds")
        whole = mode == pb.ISOLATION_MODE_EXCLUSIVE
        ttl = request.ttl_seconds or w.config.lease_ttl
        req = Request(
            principal=caller.principal, request_id=check_request_id(request.request_id or new_request_id()),
            qos=request.qos or pb.QOS_MEDIUM, vram=request.slice.vram,
            compute=min(100, int(round(100 * w.config.oversubscription))) if whole else request.slice.compute,
            count=request.count or 1, model=request.model, whole=whole, mode=mode, ttl_seconds=ttl,
            profile=request.profile, labels=dict(request.labels),
            deadline=time.time() + (request.wait_seconds or ttl), groups=list(caller.groups))
        w.line.validate(req)
        lease, served = await self._granting(req, functools.partial(w.line.join, req, request.wait),
                                             taken=lambda joined: joined)
        w.announce_grants(served, skip=req.key if lease is not None else "")
        if lease is None:
            position, reason, sentence = served.decision.waiting[req.key]
            w.emit(pb.EVENT_KIND_REQUEST_QUEUED,
                   f"request {req.request_id} of {req.principal} waits in the line, number {position}: "
                   f"{describe_wait(reason, sentence)}", principal=req.principal)
            lease = await self._wait_in_line(req)
        log.info("lease %s granted to request %s of %s (labels %s)", lease.id, req.request_id, req.principal,
                 lease.labels)
        w.emit(pb.EVENT_KIND_LEASE_CREATED,
               f"lease {lease.id} for {lease.principal}: {format_bytes(lease.slices[0].vram)} / "
               f"{lease.slices[0].compute} % on {len(lease.slices)} device(s)", lease.id, principal=lease.principal)
        try:
            return await w.db(lease_message, w, lease)
        except asyncio.CancelledError:
            await asyncio.shield(self._drop_unreturned(req, lease.id))
            raise

    async def _granting(self, req: Request, call: Callable[[], T],
                        taken: Callable[[T], tuple[LeaseRecord | None, Served | None]]) -> T:
        """A ledger call that may grant `req` its lease (the line's join or collect), on the ledger's
        thread. If this Allocate is cancelled meanwhile (its caller's deadline passed, it cancelled,
        or its connection broke), that call still finishes there; then the lease it granted is
        released, or the place it kept is left: a caller that is gone holds nothing (before, such a
        lease was held by nobody until its TTL ran out). `taken` says what a result holds: the
        caller's lease, and the pass that granted it and maybe others (their grants are announced)."""
        job = asyncio.ensure_future(self.worker.db(call))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(req, job, taken))
            raise

    async def _abandon(self, req: Request, job: asyncio.Future[T],
                       taken: Callable[[T], tuple[LeaseRecord | None, Served | None]]) -> None:
        try:
            lease, served = taken(await job)
        except Exception:
            return  # refused: it took nothing
        if served is not None:
            self.worker.announce_grants(served, skip=req.key)
        if lease is not None:
            await self._drop_unreturned(req, lease.id)
        else:
            await self._leave_line(req, CANCELLED)

    async def _drop_unreturned(self, req: Request, lease_id: str) -> None:
        """Release a lease granted to a call that ended before it was returned: nobody holds it."""
        w = self.worker
        with contextlib.suppress(ledger_mod.LedgerError):
            await w.db(w.ledger.release, req.principal, lease_id)
        w.emit(pb.EVENT_KIND_LEASE_RELEASED, f"lease {lease_id} released: request {req.request_id} of "
               f"{req.principal} was granted it, but {CANCELLED} before it was returned", lease_id,
               principal=req.principal)
        await w.serve_line()

    async def _wait_in_line(self, req: Request) -> LeaseRecord:
        w = self.worker
        collect = functools.partial(w.line.collect, req.principal, req.request_id)
        while (remaining := req.deadline - time.time()) > 0:
            try:
                await asyncio.wait_for(w.line_served().wait(), min(1.0, remaining))
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                await asyncio.shield(self._leave_line(req, CANCELLED))
                raise
            lease = await self._granting(req, collect, taken=lambda found: (found, None))
            if lease is not None:
                return lease
        lease = await self._granting(req, collect, taken=lambda found: (found, None))
        if lease is not None:
            return lease
        try:
            snapshot = await w.db(w.line.snapshot)
        finally:  # cancelled or not, it leaves (a lease granted since the collect is released)
            await asyncio.shield(self._leave_line(req, "it waited as long as its caller asked"))
        position, reason, sentence = snapshot.decision.waiting.get(req.key, (0, WAIT_NO_ROOM, ""))
        raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, w.line.waited_too_long(req, position, reason, sentence))

    async def _leave_line(self, req: Request, why: str) -> None:
        w = self.worker
        granted = await w.db(w.line.leave, req.principal, req.request_id)
        if granted:  # granted while it left: the lease is nobody's
            with contextlib.suppress(ledger_mod.LedgerError):
                await w.db(w.ledger.release, req.principal, granted)
            await w.serve_line()
        w.emit(pb.EVENT_KIND_REQUEST_DROPPED, f"request {req.request_id} of {req.principal} left the waiting "
               f"line: {why}", principal=req.principal)

    async def Renew(self, request: pb.RenewRequest, context: Any) -> pb.Lease:
        w, caller = self.worker, current_caller()
        w.check_scope(caller, request.lease_id)
        return await w.db(lambda: lease_message(w, w.ledger.renew(caller.principal, request.lease_id)))

    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        """The caller's own lease; an admin (worker/visibility.py, never a kernel token) may release
        any principal's: its kernels are ended as for the owner's release, and the event says who."""
        w, caller = self.worker, current_caller()
        owner: str | None = None if w.visibility.is_admin(caller) else caller.principal
        try:
            rec = await w.db(w.ledger.get, owner, request.lease_id)
        except ledger_mod.NotFound:
            # Idempotent: a lease that was released (or reclaimed) before is fine; unknown is not.
            if owner is None:  # an admin: whoever held it
                return pb.ReleaseResponse(released=await w.db(w.ledger.reclaim, request.lease_id))
            return pb.ReleaseResponse(released=await w.db(w.ledger.release, caller.principal, request.lease_id))
        # Ended in the ledger first: a kernel starting in it now sees that and stops itself
        # (StartKernel); then every kernel recorded, exited ones too (their nanny may linger to hand
        # over last messages nobody will collect).
        released = await w.db(w.ledger.release, rec.principal, rec.id)
        for k in await w.db(w.ledger.kernels, rec.id, include_exited=True):
            w.supervisor.stop(k.id)
        w.tokens.remove_lease_tokens(rec.id)
        w.watchdog.forget(rec.id)
        w.emit(pb.EVENT_KIND_LEASE_RELEASED, f"lease {rec.id} released by {caller.principal}",
               rec.id, principal=rec.principal, by="" if caller.principal == rec.principal else caller.principal)
        await w.serve_line()
        return pb.ReleaseResponse(released=released)

    async def Resize(self, request: pb.ResizeRequest, context: Any) -> pb.Lease:
        w, caller = self.worker, current_caller()
        w.check_scope(caller, request.lease_id)
        mode = isolation.MODES.get((await w.db(w.ledger.get, caller.principal, request.lease_id)).mode)
        if mode is not None and not mode.resizable:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"lease {request.lease_id} is {mode.name}: it holds whole devices and cannot be "
                           "resized; release it and allocate the slice you need")
        if request.HasField("vram") or request.HasField("compute"):  # only the dimensions asked
            vram = request.vram if request.HasField("vram") else None
            compute = request.compute if request.HasField("compute") else None
        else:  # an older client: both, from `slice`
            vram, compute = request.slice.vram, request.slice.compute
        rec = await w.db(w.ledger.resize, caller.principal, request.lease_id, vram, compute,
                         w.caller_quota(caller))
        w.emit(pb.EVENT_KIND_LEASE_RESIZED,
               f"lease {rec.id} resized to {format_bytes(rec.slices[0].vram)} / {rec.slices[0].compute} %",
               rec.id, principal=rec.principal)
        await w.serve_line()  # a smaller slice may let waiting requests start
        return await w.db(lease_message, w, rec)

    async def ListLeases(self, request: pb.ListLeasesRequest, context: Any) -> pb.ListLeasesResponse:
        w, caller = self.worker, current_caller()
        if request.all_principals and (refusal := w.visibility.refusal(caller, "ListLeases all_principals")):
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, refusal)
        shown = w.visibility.lease_filter(caller, request.all_principals)
        return await w.db(lambda: pb.ListLeasesResponse(leases=[
            lease_message(w, r) for r in w.ledger.leases(None if request.all_principals else caller.principal)
            if shown(r.principal, r.id)]))

    # ------------------------------------------------------------------ kernels

    async def StartKernel(self, request: pb.StartKernelRequest, context: Any) -> pb.Kernel:
        w, caller = self.worker, current_caller()
        lease = await w.db(w.ledger.get, caller.principal, request.lease_id)
        try:
            argv = w.supervisor.argv_for(request.environment, list(request.argv))
        except KeyError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown kernel environment {request.environment!r}; this worker has: "
                           f"{', '.join(sorted(w.supervisor.environments))}") from None
        argv += checked_kernel_args(list(request.kernel_args))
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
        tenant = await w.db(w.tenant, lease.principal)
        cwd = self._kernel_cwd(lease, request.cwd, tenant)
        kernel_token = secrets.token_urlsafe(32)
        env = {**request.env, **w.slice_env(lease, kernel_id, kernel_token)}
        rec = KernelRecord(id=kernel_id, lease_id=lease.id, principal=lease.principal, nanny_pid=0, pid=0,
                           status="starting", exit_code=None, cwd=cwd,
                           environment=request.environment or "python3", started_at=time.time(),
                           directory=str(w.supervisor.directory(kernel_id)), labels=dict(request.labels))
        await w.db(w.ledger.add_kernel, rec, w.caller_quota(caller))
        try:
            state = await w.supervisor.start(kernel_id, argv, env, cwd, request.key,
                                             request.signature_scheme, tenant=tenant)
        except (KernelStartError, OSError) as exc:
            await w.db(w.ledger.update_kernel, kernel_id, status="exited", exit_code=-1)
            raise RpcError(grpc.StatusCode.INTERNAL, str(exc)) from None
        if not await w.db(w.ledger.is_active, lease.id):
            # Released or expired while the kernel started: whoever ended the lease stopped its
            # kernels before this one ran, so it is ours to stop (a kernel outside every lease).
            w.supervisor.stop(kernel_id)
            await w.db(w.ledger.update_kernel, kernel_id, status="exited", exit_code=-1)
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"lease {lease.id} ended (released or expired) while kernel {kernel_id} started; "
                           "the kernel was stopped")
        w.confine_host_kernel(lease, kernel_id, state.kernel_pid)
        w.supervisor.scope_path(kernel_id).write_text(token_digest_hex(kernel_token))
        w.tokens.add_kernel_token(kernel_token, lease.principal, lease.id, kernel_id)
        await w.db(w.ledger.update_kernel, kernel_id, status="running", pid=state.kernel_pid,
                   nanny_pid=state.nanny_pid)
        w.emit(pb.EVENT_KIND_KERNEL_STARTED, f"kernel {kernel_id} started in lease {lease.id}",
               lease.id, kernel_id, lease.principal)
        return kernel_message(w, await w.db(w.ledger.get_kernel, caller.principal, kernel_id))

    def _kernel_cwd(self, lease: LeaseRecord, requested: str, tenant: Tenant | None = None) -> str:
        """The notebook's directory (shared filesystem), else STATE/work/<lease>. With tenant uids
        the notebook's directory only when it is the tenant's own; the per-lease one is 0700, its."""
        w = self.worker
        if w.config.shares_filesystem and requested:
            if not os.path.isdir(requested):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"working directory {requested!r} does not exist on the worker")
            if tenant is None or os.stat(requested).st_uid == tenant.uid:
                return requested
        directory = w.state_dir / "work" / lease.id
        if tenant is not None:
            return str(private_dir(directory, tenant.uid, tenant.gid))
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(directory)

    async def Signal(self, request: pb.SignalRequest, context: Any) -> pb.Kernel:
        w, caller = self.worker, current_caller()
        rec = await w.db(w.ledger.get_kernel, caller.principal, request.kernel_id)
        signum = SIGNALS.get(request.signal)
        if signum is None:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "signal must be INTERRUPT, TERMINATE or KILL")
        if not w.supervisor.signal(rec.id, signum):
            state = w.supervisor.state(rec.id)
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"kernel {rec.id} is not running (exit code {state.exit_code})")
        return kernel_message(w, rec)

    async def KernelState(self, request: pb.KernelStateRequest, context: Any) -> pb.Kernel:
        w, caller = self.worker, current_caller()
        rec = await w.db(w.ledger.get_kernel, caller.principal, request.kernel_id)
        w.check_scope(caller, rec.lease_id, rec.id)
        state = w.supervisor.state(rec.id)
        msg = kernel_message(w, rec)
        if state.status == "exited":
            msg.status = pb.KERNEL_STATUS_EXITED
            msg.exit_code = state.exit_code or 0
        return msg

    async def Channels(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[bytes]:
        """Raw pass-through between the client and the kernel's nanny: frames are never decoded
        here, except the first message, which names the kernel and is checked for ownership."""
        w, caller = self.worker, current_caller()
        if caller.lease_scope:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "a kernel token cannot open channels")
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        try:
            opening = pb.ChannelsRequest.FromString(first)
        except Exception:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "malformed ChannelsRequest") from None
        if opening.WhichOneof("kind") != "open":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a Channels stream must be 'open'")
        rec = await w.db(w.ledger.get_kernel, caller.principal, opening.open.kernel_id)
        try:
            link = await nanny_link.connect(str(w.supervisor.socket_path(rec.id)))
        except OSError:
            state = w.supervisor.state(rec.id)
            if state.status == "exited":
                yield pb.ChannelsResponse(opened=pb.ChannelsOpened(kernel_id=rec.id)).SerializeToString()
                yield pb.ChannelsResponse(exited=pb.KernelExited(exit_code=state.exit_code or 0)).SerializeToString()
                return
            raise RpcError(grpc.StatusCode.UNAVAILABLE,
                           f"kernel {rec.id} is starting or its nanny is not answering; retry") from None

        # Attached before the nanny hears of it: the nanny then drops the older stream, whose
        # end below must already see that it was displaced.
        w.attached[rec.id] = link
        link.send(first)

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
            if w.attached.get(rec.id) not in (link, None):
                raise RpcError(grpc.StatusCode.ABORTED,
                               f"kernel {rec.id}: another client opened this kernel's channels, so this stream "
                               "was closed (a kernel has one Jupyter-side client at a time)")
            if w.supervisor.state(rec.id).status == "running":
                # The nanny dropped this stream (malformed input) while the kernel lives on.
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
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

    async def Watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.WatchResponse]:
        w, caller = self.worker, current_caller()
        if request.all_leases and (refusal := w.visibility.refusal(caller, "Watch all_leases")):
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, refusal)
        queue: asyncio.Queue[pb.WatchResponse] = asyncio.Queue(maxsize=64)
        entry = (queue, caller, request.all_leases)  # events and samples: visibility.sees_event / sees_lease
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
