"""The thin asyncio client of the remoting runtime: one method per RPC, errors as exceptions.

    async with RuntimeClient("127.0.0.1:50051", token) as client:
        lease = await client.allocate(vram=4 << 30, compute=10)
        kernel = await client.start_kernel(lease.id, key=b"secret")
        channels = client.channels(kernel.id)
        await channels.open()
        await channels.send(pb.CHANNEL_SHELL, [identity, *signed_message_parts])
        channel, parts = await channels.recv()

`KernelChannels` numbers what it sends, remembers what it received, and resumes by itself after
a network cut or a worker restart: nothing is lost or delivered twice, and messages the worker
could not keep are reported (`dropped`), never silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import grpc

from tf_remoting import paths
from tf_remoting.client.backoff import Backoff
from tf_remoting.framing import CHANNELS, GRPC_MAX_MESSAGE, Reassembler, batches, encode
from tf_remoting.proto import ERROR_KIND_KEY, OVER_QUOTA, QUOTA_EXCEEDED_KEY, pb, pb_grpc
from tf_remoting.quantities import format_bytes

log = logging.getLogger("tf_remoting.client")

__all__ = ["RuntimeClient", "KernelChannels", "RemotingError", "pb"]


class RemotingError(Exception):
    """A call failed; `code` is the gRPC status, `message` the worker's sentence."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NotFound(RemotingError): ...
class PermissionDenied(RemotingError): ...
class ResourceExhausted(RemotingError): ...
class InvalidArgument(RemotingError): ...
class Unauthenticated(RemotingError): ...
class Unavailable(RemotingError): ...
class FailedPrecondition(RemotingError): ...
class DeadlineExceeded(RemotingError): ...


class OverQuota(FailedPrecondition):
    """The call would pass the caller's quota on that worker (not "no room": ResourceExhausted).

    ``detail`` is the worker's `pb.QuotaExceeded`: the quota, what is held, what was asked and the
    dimensions passed. A FailedPrecondition, so code that catches that keeps working.
    """

    def __init__(self, code: grpc.StatusCode, message: str, detail: pb.QuotaExceeded) -> None:
        super().__init__(code, message)
        self.detail = detail


_ERRORS: dict[grpc.StatusCode, type[RemotingError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_from(exc: grpc.RpcError) -> RemotingError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailers: dict[str, Any] = {}
    if hasattr(exc, "trailing_metadata"):
        trailers = dict(cast(Any, exc).trailing_metadata() or ())  # aio: Metadata; sync: (key, value) pairs
    if trailers.get(ERROR_KIND_KEY) == OVER_QUOTA:
        detail = pb.QuotaExceeded()
        raw = trailers.get(QUOTA_EXCEEDED_KEY)
        if isinstance(raw, bytes):
            with contextlib.suppress(Exception):  # a malformed detail still leaves the sentence
                detail.ParseFromString(raw)
        return OverQuota(code, details or code.name, detail)
    return _ERRORS.get(code, RemotingError)(code, details or code.name)


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


class RuntimeClient:
    """Connection to one worker. `address` is HOST:PORT or unix:/path; TLS when `tls_ca` is given."""

    def __init__(self, address: str, token: str, tls_ca: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 server_name: str | None = None, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        options = channel_options()
        if tls_ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = pb_grpc.RuntimeStub(self._channel)
        # Channels goes raw so that frames are decoded once, here, not by gRPC and again by us.
        self._raw_channels = self._channel.stream_stream(
            "/tensorfusion.remoting.v1.Runtime/Channels",
            request_serializer=pb.ChannelsRequest.SerializeToString,
            response_deserializer=pb.ChannelsResponse.FromString)

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise error_from(exc) from None

    # ------------------------------------------------------------------ inventory and leases

    async def inventory(self) -> pb.Inventory:
        return await self._call(self.stub.GetInventory, pb.GetInventoryRequest())

    async def allocate(self, vram: int, compute: int, count: int = 1, qos: int = pb.QOS_MEDIUM,
                       model: str = "", mode: int = pb.ISOLATION_MODE_UNSPECIFIED, ttl_seconds: int = 0,
                       profile: str = "", labels: dict[str, str] | None = None, wait: float | None = None,
                       request_id: str = "") -> pb.Lease:
        """A lease, through the worker's waiting line. ``wait``: seconds to keep a place in the line
        (None: not at all, ResourceExhausted when it cannot start now); the call then returns when
        granted or raises DeadlineExceeded. With a ``request_id`` (make one with uuid4) a call the
        worker lost (it restarted: Unavailable) is asked again and keeps its place."""
        request = pb.AllocateRequest(slice=pb.SliceRequest(vram=vram, compute=compute), count=count,
                                     qos=cast(pb.Qos, qos), model=model, mode=cast(pb.IsolationMode, mode),
                                     ttl_seconds=ttl_seconds, profile=profile, labels=labels or {},
                                     wait=wait is not None, wait_seconds=wait or 0.0, request_id=request_id)
        if wait is None:
            return await self._call(self.stub.Allocate, request)
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            request.wait_seconds = max(left, 0.001)
            try:
                return await self._call(self.stub.Allocate, request, timeout=left + 30.0)
            except Unavailable:
                if not request_id or deadline - time.monotonic() < 1.0:
                    raise
                await asyncio.sleep(0.5)  # the worker restarts: ask again for the same place

    async def renew(self, lease_id: str) -> pb.Lease:
        return await self._call(self.stub.Renew, pb.RenewRequest(lease_id=lease_id))

    def set_token(self, token: str) -> None:
        """Use another token from now on (rotation); streams pick it up when they reconnect."""
        self._metadata = (("authorization", f"Bearer {token}"),)

    def keep_alive(self, lease_id: str, interval: float = 20.0,
                   token_source: Callable[[], str] | None = None) -> asyncio.Task[None]:
        """Renew a lease every `interval` seconds until the task is cancelled (or the lease is gone).

        A lease not renewed within its TTL (default 60 s) is reclaimed with its kernels.
        `token_source`, when given, is asked for the current token before each renewal, so a
        rotated token file is followed without restarting anything.
        """
        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(interval)
                if token_source is not None:
                    with contextlib.suppress(OSError, ValueError):
                        self.set_token(token_source())
                try:
                    await self.renew(lease_id)
                except (NotFound, PermissionDenied):
                    return
                except RemotingError as exc:  # worker away for a moment: try again next round
                    log.warning("could not renew lease %s: %s", lease_id, exc)

        return asyncio.create_task(renew_forever())

    async def release(self, lease_id: str) -> bool:
        return (await self._call(self.stub.Release, pb.ReleaseRequest(lease_id=lease_id))).released

    async def resize(self, lease_id: str, vram: int | None = None, compute: int | None = None) -> pb.Lease:
        """Change only the dimensions given; the worker keeps the other one as it is then."""
        request = pb.ResizeRequest(lease_id=lease_id)
        if vram is not None:
            request.vram = vram
        if compute is not None:
            request.compute = compute
        return await self._call(self.stub.Resize, request)

    async def list_leases(self, all_principals: bool = False) -> list[pb.Lease]:
        """The caller's leases; all_principals: every principal's (admins only, else PermissionDenied)."""
        request = pb.ListLeasesRequest(all_principals=all_principals)
        return list((await self._call(self.stub.ListLeases, request)).leases)

    # ------------------------------------------------------------------ kernels

    async def start_kernel(self, lease_id: str, key: bytes, signature_scheme: str = "hmac-sha256",
                           environment: str = "", argv: list[str] | None = None,
                           env: dict[str, str] | None = None, cwd: str = "",
                           labels: dict[str, str] | None = None, timeout: float = 60.0,
                           kernel_args: list[str] | None = None) -> pb.Kernel:
        request = pb.StartKernelRequest(lease_id=lease_id, key=key, signature_scheme=signature_scheme,
                                        environment=environment, argv=argv or [], env=env or {}, cwd=cwd,
                                        labels=labels or {}, kernel_args=kernel_args or [])
        return await self._call(self.stub.StartKernel, request, timeout=timeout)

    async def signal(self, kernel_id: str, signal: int) -> pb.Kernel:
        return await self._call(self.stub.Signal, pb.SignalRequest(kernel_id=kernel_id,
                                                                             signal=cast(pb.Signal, signal)))

    async def interrupt(self, kernel_id: str) -> pb.Kernel:
        return await self.signal(kernel_id, pb.SIGNAL_INTERRUPT)

    async def kernel_state(self, kernel_id: str) -> pb.Kernel:
        return await self._call(self.stub.KernelState, pb.KernelStateRequest(kernel_id=kernel_id))

    def channels(self, kernel_id: str, reconnect_timeout: float = 60.0,
                 on_state: Callable[[str, str], None] | None = None) -> KernelChannels:
        return KernelChannels(self, kernel_id, reconnect_timeout=reconnect_timeout, on_state=on_state)

    # ------------------------------------------------------------------ telemetry and files

    async def watch(self, include_devices: bool = True, all_leases: bool = False) -> AsyncIterator[pb.WatchResponse]:
        call = self.stub.Watch(pb.WatchRequest(include_devices=include_devices, all_leases=all_leases),
                               metadata=self._metadata)
        try:
            async for item in call:
                yield item
        except grpc.RpcError as exc:
            raise error_from(exc) from None
        finally:
            call.cancel()

    async def put_file(self, kernel_id: str, path: str, data: bytes, mode: int = 0) -> pb.FileInfo:
        async def requests() -> AsyncIterator[pb.PutFileRequest]:
            yield pb.PutFileRequest(header=pb.PutFileHeader(kernel_id=kernel_id, path=path, mode=mode))
            for start in range(0, len(data), 1 << 20):
                yield pb.PutFileRequest(data=data[start:start + (1 << 20)])

        try:
            return await self.stub.PutFile(requests(), metadata=self._metadata, timeout=self.timeout * 10)
        except grpc.RpcError as exc:
            raise error_from(exc) from None

    async def request_transfer(self, kernel_id: str, direction: int, client_path: str, kernel_path: str,
                               timeout: float = 300.0) -> pb.TransferResult:
        """From inside a kernel: have the client attached to it move a file (see RequestTransfer)."""
        request = pb.TransferRequest(kernel_id=kernel_id, direction=cast(pb.TransferDirection, direction),
                                     client_path=client_path, kernel_path=kernel_path, timeout_seconds=int(timeout))
        return await self._call(self.stub.RequestTransfer, request, timeout=timeout + 10)

    async def complete_transfer(self, result: pb.TransferResult) -> None:
        await self._call(self.stub.CompleteTransfer, result)

    async def get_file(self, kernel_id: str, path: str) -> bytes:
        chunks = []
        try:
            async for chunk in self.stub.GetFile(pb.GetFileRequest(kernel_id=kernel_id, path=path),
                                                 metadata=self._metadata, timeout=self.timeout * 10):
                chunks.append(chunk.data)
        except grpc.RpcError as exc:
            raise error_from(exc) from None
        return b"".join(chunks)


RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED)


class TransferError(Exception):
    """A file the kernel asked for cannot move on this side (missing, a directory...)."""


async def move_file(client: RuntimeClient, kernel_id: str, ask: pb.TransferAsk, root: str | Path) -> str:
    """Do what the kernel asked: push a file from `root` into its directory, or pull one into `root`.
    Returns a sentence saying what moved.

    Whoever holds the kernel's token can ask (the kernel itself, or a program that found the
    token), so the file is reached only beneath `root`, without following a symlink at any
    component (tf_remoting.paths), and a pull never replaces an existing file unless the kernel
    said `--overwrite` (`ask.overwrite`)."""
    shown = Path(root).resolve()
    where = f"the notebook's directory ({shown})"
    if ask.direction == pb.TRANSFER_TO_KERNEL:
        def read() -> tuple[bytes, int]:
            try:
                # O_NONBLOCK: opening a FIFO must not hang the transfer.
                fd = paths.open_file(root, ask.client_path, where, os.O_RDONLY | os.O_NONBLOCK)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise TransferError(f"{ask.client_path!r} is not a file in {shown}") from None
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise TransferError(f"{ask.client_path!r} is not a file in {shown}")
                return f.read(), st.st_mode & 0o777

        data, mode = await asyncio.to_thread(read)
        await client.put_file(kernel_id, ask.kernel_path, data, mode=mode)
        return f"pushed {ask.client_path} ({format_bytes(len(data))}) to {ask.kernel_path} in the kernel's directory"
    if ask.direction == pb.TRANSFER_FROM_KERNEL:
        paths.relative_parts(ask.client_path, where)  # a bad path fails before the download
        data = await client.get_file(kernel_id, ask.kernel_path)

        def write() -> None:
            try:
                upload = paths.start_upload(root, ask.client_path, where, 0o666, overwrite=ask.overwrite)
            except IsADirectoryError:
                raise TransferError(f"{ask.client_path!r} is a directory in {shown}") from None
            except FileExistsError:
                raise TransferError(f"{ask.client_path!r} already exists in {shown}; pull to another name, or "
                                    "add --overwrite to replace it") from None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(upload.fd, view):]
            except BaseException:
                upload.abort()
                raise
            upload.commit()

        await asyncio.to_thread(write)
        return f"pulled {ask.kernel_path} ({format_bytes(len(data))}) to {ask.client_path} in the notebook's directory"
    raise TransferError(f"unknown transfer direction {ask.direction}")


def positions(seqs: dict[int, int]) -> list[pb.ChannelPosition]:
    """The last sequence number seen on each channel that has seen one (for open and ack)."""
    # The public API numbers channels with plain ints; the proto types them as its enum.
    return [pb.ChannelPosition(channel=cast(pb.Channel, c), seq=s) for c, s in seqs.items() if s]


class KernelClosed(Exception):
    """The kernel exited (`exit_code`) or the channels were closed."""

    def __init__(self, exit_code: int | None) -> None:
        super().__init__(f"kernel exited with code {exit_code}" if exit_code is not None else "channels closed")
        self.exit_code = exit_code


class KernelChannels:
    """One kernel's multiplexed channels over a resumable Channels stream."""

    def __init__(self, client: RuntimeClient, kernel_id: str, reconnect_timeout: float = 60.0,
                 on_state: Callable[[str, str], None] | None = None, keep_unacked: int = 10_000) -> None:
        self.client = client
        self.kernel_id = kernel_id
        self.reconnect_timeout = reconnect_timeout
        self.on_state = on_state or (lambda state, detail: None)
        self.received: dict[int, int] = {c: 0 for c in CHANNELS}
        self.dropped: dict[int, int] = {c: 0 for c in CHANNELS}
        self.exit_code: int | None = None
        self.reconnects = 0
        self.responses = 0  # gRPC messages received (a flood's output arrives coalesced)
        self._next_seq: dict[int, int] = {c: 1 for c in CHANNELS}
        self._unacked: dict[int, deque[tuple[int, list[pb.Frame]]]] = {c: deque(maxlen=keep_unacked)
                                                                        for c in CHANNELS}
        self._inbox: asyncio.Queue[tuple[int, list[bytes]] | None] = asyncio.Queue()
        self._outbox: asyncio.Queue[pb.ChannelsRequest | None] = asyncio.Queue()
        self._opened = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._unacked_count = 0
        self._last_ack = 0.0
        self.chunk_size = 1 << 20
        self._ever_opened = False
        self._stream_opened = False
        self._sink: Callable[[int, list[bytes]], None] | None = None
        self._transfer_root: str | None = None
        self._transfers: set[asyncio.Task[None]] = set()
        # One outage lasts from the first failure until a stream has really re-opened (`opened`
        # received, see _on_opened), never longer: short outages far apart do not add up.
        self._backoff = Backoff(initial=0.1, factor=2.0, max_delay=1.0, jitter=0.2,
                                give_up_after=reconnect_timeout)

    def serve_transfers(self, directory: str | Path) -> None:
        """Answer the kernel's `%vgpu push` / `pull` with files under `directory` (this side's)."""
        self._transfer_root = str(directory)

    async def open(self, timeout: float = 30.0) -> None:
        """Connect (the first time); later reconnects happen by themselves."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        opened = asyncio.ensure_future(self._opened.wait())
        done, _ = await asyncio.wait({opened, self._runner}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            opened.cancel()
            self._runner.result()  # raises the failure
        if opened not in done:
            opened.cancel()
            raise TimeoutError(f"kernel {self.kernel_id}: channels did not open within {timeout} s")

    async def send(self, channel: int, parts: list[bytes]) -> None:
        """Send one message (parts[0] = routing identity on shell/control/stdin/hb)."""
        if self._closed:
            raise KernelClosed(self.exit_code)
        seq = self._next_seq[channel]
        self._next_seq[channel] = seq + 1
        frames = encode(channel, seq, parts, self.chunk_size)
        self._unacked[channel].append((seq, frames))
        for batch in batches(frames):
            self._outbox.put_nowait(pb.ChannelsRequest(frames=batch))

    def deliver_to(self, sink: Callable[[int, list[bytes]], None]) -> None:
        """Hand each message to ``sink(channel, parts)`` as it arrives instead of queueing it for
        recv() (a relay saves a task switch per message); recv() then only reports the end."""
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if item is None:
                self._inbox.put_nowait(None)
                break
            sink(*item)
        self._sink = sink

    async def recv(self, timeout: float | None = None) -> tuple[int, list[bytes]]:
        """The next message from the kernel, as (channel, parts). Raises KernelClosed at the end."""
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if item is None:
            self._inbox.put_nowait(None)  # keep reporting the end
            if self._runner is not None and self._runner.done() and self._runner.exception():
                raise self._runner.exception()  # type: ignore[misc]
            raise KernelClosed(self.exit_code)
        return item

    async def close(self) -> None:
        self._closed = True
        self._outbox.put_nowait(None)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    # ------------------------------------------------------------------ internals

    async def _requests(self, opening: pb.ChannelsRequest,
                        outbox: asyncio.Queue[pb.ChannelsRequest | None]) -> AsyncIterator[pb.ChannelsRequest]:
        """One stream attempt's requests. Each attempt reads its own queue: a dead attempt's
        generator, still waiting, must never take what was meant for the next one."""
        yield opening
        while True:
            first = await outbox.get()
            if first is None:
                return
            # Coalesce whatever else is already queued into the same gRPC message.
            frames = list(first.frames.frames) if first.HasField("frames") else []
            extra: list[pb.ChannelsRequest] = [] if frames else [first]
            while not outbox.empty() and len(frames) < 512:
                nxt = outbox.get_nowait()
                if nxt is None:
                    outbox.put_nowait(None)
                    break
                if nxt.HasField("frames"):
                    frames.extend(nxt.frames.frames)
                else:
                    extra.append(nxt)
            for batch in batches(frames):
                yield pb.ChannelsRequest(frames=batch)
            for req in extra:
                yield req

    async def _run(self) -> None:
        backoff = self._backoff
        backoff.give_up_after = self.reconnect_timeout  # the attribute may have changed since __init__
        while not self._closed:
            opening = pb.ChannelsRequest(open=pb.OpenChannels(
                kernel_id=self.kernel_id,
                last_received=positions(self.received)))
            old, self._outbox = self._outbox, asyncio.Queue()
            old.put_nowait(None)  # ends the previous attempt's generator; its frames are resent on open
            self._stream_opened = False
            call = self.client._raw_channels(self._requests(opening, self._outbox), metadata=self.client._metadata)
            try:
                await self._consume(call)
                if self.exit_code is not None or self._closed:
                    break
                raise ConnectionError("stream ended")
            except (grpc.RpcError, ConnectionError) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                if code not in RESUMABLE:
                    self._finish()
                    raise (error_from(exc) if isinstance(exc, grpc.RpcError) else exc) from None
                detail = f"{code.name}: {exc.details() if isinstance(exc, grpc.RpcError) else exc}"
                if backoff.failed():  # the first failure since the stream last opened
                    self.on_state("disconnected", detail)
                if backoff.exhausted():
                    self._finish()
                    raise Unavailable(code, f"kernel {self.kernel_id}: the worker at {self.client.address} has "
                                      f"been unreachable for {backoff.outage():.0f} s, longer than the "
                                      f"reconnect timeout of {self.reconnect_timeout:g} s; last error: {detail}"
                                      ) from None
                self._opened.clear()
                await backoff.wait()
            finally:
                call.cancel()
        self._finish()

    async def _consume(self, call: Any) -> None:
        reassembler = Reassembler()
        async for resp in call:
            self.responses += 1
            kind = resp.WhichOneof("kind")
            if kind == "frames":
                if not self._stream_opened:
                    continue  # only what follows this stream's `opened` counts (replay comes after it)
                for frame in resp.frames.frames:
                    whole = reassembler.feed(frame)
                    if whole is None:
                        continue
                    channel, seq, parts = whole
                    if seq <= self.received.get(channel, 0):
                        continue  # already delivered before a reconnect
                    self.received[channel] = seq
                    if self._sink is not None:
                        self._sink(channel, parts)
                    else:
                        self._inbox.put_nowait((channel, parts))
                    self._unacked_count += 1
                self._maybe_ack()
            elif kind == "opened":
                self._on_opened(resp.opened)
            elif kind == "exited":
                self.exit_code = resp.exited.exit_code
                self._send_ack()
                return
            elif kind == "transfer":
                task = asyncio.create_task(self._transfer(resp.transfer))
                self._transfers.add(task)
                task.add_done_callback(self._transfers.discard)

    async def _transfer(self, ask: pb.TransferAsk) -> None:
        result = pb.TransferResult(transfer_id=ask.transfer_id)
        if self._transfer_root is None:
            result.message = "this client of the kernel serves no directory, so it cannot move files"
        else:
            try:
                result.message = await move_file(self.client, self.kernel_id, ask, self._transfer_root)
                result.ok = True
            except RemotingError as exc:
                result.message = exc.message
            except (TransferError, paths.BadPath, paths.PathEscapes, OSError) as exc:
                result.message = str(exc)
        try:
            await self.client.complete_transfer(result)
        except RemotingError as exc:  # the kernel stopped waiting (timeout, worker restart)
            log.info("transfer %s: could not report its end: %s", ask.transfer_id, exc)

    def _on_opened(self, opened: pb.ChannelsOpened) -> None:
        if opened.chunk_size:
            self.chunk_size = opened.chunk_size
        if self._ever_opened:
            self.reconnects += 1
            self.on_state("resumed", f"kernel {self.kernel_id}: channels resumed")
        for pos in opened.dropped:
            self.dropped[pos.channel] += pos.seq
            self.on_state("dropped", f"{pos.seq} message(s) on channel {pos.channel} fell out of the "
                          "worker's replay buffer")
        got: dict[int, int] = {p.channel: p.seq for p in opened.received}
        if not self._ever_opened:
            # The kernel side may have heard from an earlier client: number after what it has seen,
            # or its duplicate filter would drop our first messages.
            for channel, pending in self._unacked.items():
                offset = got.get(channel, 0)
                if offset:
                    for seq_frames in list(pending):
                        for frame in seq_frames[1]:
                            frame.seq += offset
                    self._unacked[channel] = deque(((seq + offset, frames) for seq, frames in pending),
                                                   maxlen=pending.maxlen)
                    self._next_seq[channel] += offset
        self._ever_opened = True
        resend: list[pb.Frame] = []
        for channel, pending in self._unacked.items():
            while pending and pending[0][0] <= got.get(channel, 0):
                pending.popleft()
            for _seq, frames in pending:
                resend.extend(frames)
        # Everything not yet acknowledged goes out again, in order, and nothing else twice: drop
        # what was queued (it is all in _unacked) except acks, which are rebuilt on the next frame.
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if item is None:
                self._outbox.put_nowait(None)
                break
        for batch in batches(resend):
            self._outbox.put_nowait(pb.ChannelsRequest(frames=batch))
        self._stream_opened = True
        self._backoff.succeeded()
        self._opened.set()

    def _maybe_ack(self) -> None:
        now = time.monotonic()
        if self._unacked_count >= 1000 or now - self._last_ack > 0.5:
            self._send_ack()

    def _send_ack(self) -> None:
        self._unacked_count = 0
        self._last_ack = time.monotonic()
        self._outbox.put_nowait(pb.ChannelsRequest(ack=pb.Ack(received=positions(self.received))))

    def _finish(self) -> None:
        self._closed = True
        self._inbox.put_nowait(None)
