"""Bad input against a live worker: every refusal has the right gRPC status and a useful sentence,
and the worker keeps serving afterwards.

One worker (and one long-lived kernel of alice) serves the whole module; tests that would break the
kernel start their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tf_remoting.client import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemotingError,
    ResourceExhausted,
    RuntimeClient,
    channel_options,
)
from tf_remoting.client.session import RemoteKernel
from tf_remoting.framing import GRPC_MAX_MESSAGE
from tf_remoting.proto import pb, pb_grpc
from tf_remoting.pytest_plugin import WorkerProcess

MiB = 1 << 20
GiB = 1 << 30
CHANNELS_METHOD = "/tensorfusion.remoting.v1.Runtime/Channels"
CALL_TIMEOUT = 10.0


def _identity(b: bytes) -> bytes:
    return b


@dataclass(frozen=True)
class SharedKernel:
    lease_id: str
    kernel_id: str
    key: bytes
    cwd: Path


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess(["--host-vram", "4Gi"]).start()
    try:
        yield w
    finally:
        w.cleanup()


@pytest.fixture(scope="module")
def kernel(worker: WorkerProcess) -> SharedKernel:
    """Alice's kernel for the whole module (1 GiB / 10 %, a TTL longer than the module runs)."""

    async def start() -> SharedKernel:
        async with worker.client() as client:
            lease = await client.allocate(vram=GiB, compute=10, ttl_seconds=3600)
            key = secrets.token_hex(16).encode()
            k = await client.start_kernel(lease.id, key=key)
            return SharedKernel(lease.id, k.id, key, Path(k.cwd))

    return asyncio.run(start())


def meta(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def client_of(worker: WorkerProcess, token: str | None = None) -> RuntimeClient:
    return RuntimeClient(worker.address, token or worker.token, timeout=CALL_TIMEOUT)


async def assert_serving(worker: WorkerProcess) -> None:
    """The worker answers: inventory works and a fresh lease can be taken and given back."""
    async with client_of(worker) as client:
        inv = await asyncio.wait_for(client.inventory(), CALL_TIMEOUT)
        assert inv.devices and inv.devices[0].kind == pb.DEVICE_KIND_HOST
        lease = await client.allocate(vram=64 * MiB, compute=1)
        assert len(lease.slices) == 1
        assert await client.release(lease.id) is True
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]


EXCEPTION_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def check(exc_info: pytest.ExceptionInfo[RemotingError], code: grpc.StatusCode, fragment: str) -> None:
    err = exc_info.value
    assert err.code == code, f"expected {code.name}, got {err.code.name}: {err.message}"
    assert isinstance(err, EXCEPTION_OF[code]), type(err)
    assert fragment.lower() in err.message.lower(), err.message


async def expect(coro, code: grpc.StatusCode, fragment: str) -> RemotingError:
    with pytest.raises(RemotingError) as exc_info:
        await asyncio.wait_for(coro, CALL_TIMEOUT * 2)
    check(exc_info, code, fragment)
    return exc_info.value


INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED

# ---------------------------------------------------------------------------------------- Allocate

ALLOCATE_CASES = [
    pytest.param(dict(vram=0, compute=10), INVALID, "vram 0 is out of range", id="vram-0"),
    pytest.param(dict(vram=2**62 + 1, compute=10), INVALID, "vram 4611686018427387905", id="vram-2^62+1"),
    pytest.param(dict(vram=2**64 - 1, compute=10), INVALID, "out of range", id="vram-2^64-1"),
    pytest.param(dict(vram=GiB, compute=0), INVALID, "compute 0 is out of range", id="compute-0"),
    pytest.param(dict(vram=GiB, compute=101), INVALID, "compute 101", id="compute-101"),
    pytest.param(dict(vram=GiB, compute=2**32 - 1), INVALID, "compute", id="compute-max-uint32"),
    pytest.param(dict(vram=GiB, compute=10, count=65), INVALID, "count 65", id="count-65"),
    pytest.param(dict(vram=GiB, compute=10, count=2), EXHAUSTED, "2 distinct devices", id="count-2"),
    pytest.param(dict(vram=5 * GiB, compute=10), EXHAUSTED, "largest free slice", id="vram-over-total"),
    pytest.param(dict(vram=GiB, compute=10, qos=5), INVALID, "unknown qos 5", id="qos-5"),
    pytest.param(dict(vram=GiB, compute=10, qos=-1), INVALID, "unknown qos", id="qos-negative"),
    pytest.param(dict(vram=GiB, compute=10, model="H100"), EXHAUSTED, "no device matches model 'H100'",
                 id="unknown-model"),
    pytest.param(dict(vram=GiB, compute=10, mode=pb.ISOLATION_MODE_MPS), PRECONDITION, "needs an NVIDIA GPU",
                 id="mode-mps-on-host"),
    pytest.param(dict(vram=GiB, compute=10, mode=pb.ISOLATION_MODE_EXCLUSIVE), PRECONDITION,
                 "needs an NVIDIA GPU", id="mode-exclusive-on-host"),
    pytest.param(dict(vram=GiB, compute=10, ttl_seconds=10**6), INVALID, "ttl_seconds 1000000",
                 id="ttl-10^6"),
    pytest.param(dict(vram=GiB, compute=10, labels={f"k{i}": "v" for i in range(65)}), INVALID,
                 "at most 64 labels", id="labels-65"),
    pytest.param(dict(vram=GiB, compute=10, labels={"big": "x" * 5000}), INVALID, "at most 64 labels",
                 id="label-5000-chars"),
    pytest.param(dict(vram=GiB, compute=10, mode=9), INVALID, "isolation mode", id="mode-unknown-9"),
]


@pytest.mark.parametrize(("kwargs", "code", "fragment"), ALLOCATE_CASES)
async def test_allocate_refuses(worker, kwargs, code, fragment):
    async with client_of(worker) as client:
        before = {le.id for le in await client.list_leases()}
        try:
            await expect(client.allocate(**kwargs), code, fragment)
        finally:
            # Nothing was leased by the refused call (and nothing leaks into later tests if it was).
            leaked = [le.id for le in await client.list_leases() if le.id not in before]
            for lease_id in leaked:
                await client.release(lease_id)
        assert not leaked
    await assert_serving(worker)


async def test_allocate_zero_means_default(worker):
    async with client_of(worker) as client:
        lease = await client.allocate(vram=256 * MiB, compute=5, count=0, ttl_seconds=0, qos=pb.QOS_UNSPECIFIED)
        try:
            assert len(lease.slices) == 1  # count 0 means 1
            assert lease.ttl_seconds == 60  # the worker's default --lease-ttl
            assert 59 <= lease.expires_at - lease.created_at <= 61
            assert lease.qos == pb.QOS_MEDIUM
            assert lease.mode == pb.ISOLATION_MODE_HOST
            inv = await client.inventory()
            assert inv.devices[0].vram_leased >= 256 * MiB
        finally:
            assert await client.release(lease.id) is True


# ---------------------------------------------------------------------------------------- leases


@pytest.mark.parametrize("call", ["renew", "release", "resize", "start_kernel"])
async def test_unknown_lease_is_not_found(worker, call):
    lease_id = "lease-" + "0" * 32
    async with client_of(worker) as client:
        coro = {
            "renew": lambda: client.renew(lease_id),
            "release": lambda: client.release(lease_id),
            "resize": lambda: client.resize(lease_id, vram=GiB, compute=10),
            "start_kernel": lambda: client.start_kernel(lease_id, key=b"k" * 16),
        }[call]()
        await expect(coro, NOT_FOUND, f"lease {lease_id} does not exist")
    await assert_serving(worker)


async def test_released_lease(worker):
    async with client_of(worker) as client:
        lease = await client.allocate(vram=128 * MiB, compute=2)
        assert await client.release(lease.id) is True
        assert await client.release(lease.id) is False  # idempotent
        await expect(client.renew(lease.id), NOT_FOUND, "was released")
        await expect(client.resize(lease.id, vram=GiB, compute=10), NOT_FOUND, "was released")
        await expect(client.start_kernel(lease.id, key=b"k" * 16), NOT_FOUND, "was released")
    await assert_serving(worker)


async def test_bob_cannot_touch_alices_lease(worker):
    async with client_of(worker) as alice, client_of(worker, worker.other_token) as bob:
        lease = await alice.allocate(vram=512 * MiB, compute=7, ttl_seconds=600)
        try:
            await expect(bob.renew(lease.id), DENIED, "belongs to another principal")
            await expect(bob.release(lease.id), DENIED, "belongs to another principal")
            await expect(bob.resize(lease.id, vram=GiB, compute=20), DENIED, "belongs to another principal")
            await expect(bob.start_kernel(lease.id, key=b"k" * 16), DENIED, "belongs to another principal")
            assert lease.id not in [le.id for le in await bob.list_leases()]
            # Alice's lease is intact: same slice, same expiry, still hers, no kernel.
            mine = {le.id: le for le in await alice.list_leases()}
            assert lease.id in mine
            now = mine[lease.id]
            assert now.principal == "alice"
            assert (now.slices[0].vram, now.slices[0].compute) == (512 * MiB, 7)
            assert now.expires_at == lease.expires_at
            assert not now.kernels
        finally:
            assert await alice.release(lease.id) is True
    await assert_serving(worker)


async def test_resize_beyond_capacity_says_what_is_free(worker, kernel):
    async with client_of(worker) as client:
        lease = await client.allocate(vram=512 * MiB, compute=10)
        try:
            err = await expect(client.resize(lease.id, vram=4 * GiB, compute=10), EXHAUSTED, "free besides")
            # What is free (3 GiB minus the module kernel's 1 GiB minus this lease) and the lease's own.
            assert "2.5 GiB VRAM" in err.message and "512 MiB VRAM" in err.message, err.message
            await expect(client.resize(lease.id, vram=GiB, compute=95), EXHAUSTED, "compute")
            await expect(client.resize(lease.id, vram=0, compute=10), INVALID, "vram 0")
            await expect(client.resize(lease.id, vram=GiB, compute=101), INVALID, "compute 101")
            (now,) = [le for le in await client.list_leases() if le.id == lease.id]
            assert (now.slices[0].vram, now.slices[0].compute) == (512 * MiB, 10)
            grown = await client.resize(lease.id, vram=GiB, compute=20)
            assert (grown.slices[0].vram, grown.slices[0].compute) == (GiB, 20)
        finally:
            await client.release(lease.id)
    await assert_serving(worker)


# ---------------------------------------------------------------------------------------- kernels


async def test_start_kernel_bad_arguments(worker):
    async with client_of(worker) as client:
        lease = await client.allocate(vram=256 * MiB, compute=5)
        try:
            cases = [
                (dict(environment="nope"), "unknown kernel environment 'nope'; this worker has: python3"),
                (dict(env={"": "x"}), "non-empty names"),
                (dict(env={"A=B": "x"}), "without '='"),
                (dict(env={"A\x00B": "x"}), "NUL"),
                (dict(env={"GOOD": "a\x00b"}), "NUL"),
                (dict(env={f"V{i}": "x" for i in range(257)}), "environment variables"),
                (dict(key=b"k" * 1025), "longer than 1024 bytes"),
                (dict(signature_scheme="rot13"), "unsupported signature scheme 'rot13'"),
                (dict(cwd="/nonexistent/tf-jupyter-test"), "does not exist on the worker"),
            ]
            for extra, fragment in cases:
                kwargs = {"key": b"k" * 16, **extra}
                await expect(client.start_kernel(lease.id, **kwargs), INVALID, fragment)
            # No kernel was started by any of them.
            (now,) = [le for le in await client.list_leases() if le.id == lease.id]
            assert not now.kernels
        finally:
            await client.release(lease.id)
    await assert_serving(worker)


async def test_bob_cannot_touch_alices_kernel(worker, kernel):
    async with client_of(worker, worker.other_token) as bob, client_of(worker) as alice:
        for sig in (pb.SIGNAL_INTERRUPT, pb.SIGNAL_TERMINATE, pb.SIGNAL_KILL):
            await expect(bob.signal(kernel.kernel_id, sig), DENIED, "belongs to another principal")
        await expect(bob.kernel_state(kernel.kernel_id), DENIED, "belongs to another principal")
        await expect(bob.get_file(kernel.kernel_id, "x"), DENIED, "belongs to another principal")
        await expect(bob.put_file(kernel.kernel_id, "bob.txt", b"hi"), DENIED, "belongs to another principal")
        channels = bob.channels(kernel.kernel_id, reconnect_timeout=5)
        try:
            await expect(channels.open(timeout=CALL_TIMEOUT), DENIED, "belongs to another principal")
        finally:
            await channels.close()
        assert not (kernel.cwd / "bob.txt").exists()
        state = await alice.kernel_state(kernel.kernel_id)
        assert state.status == pb.KERNEL_STATUS_RUNNING
    await assert_serving(worker)


async def test_unknown_kernel_is_not_found(worker):
    kid = "f" * 16
    async with client_of(worker) as client:
        await expect(client.signal(kid, pb.SIGNAL_INTERRUPT), NOT_FOUND, f"kernel {kid} does not exist")
        await expect(client.kernel_state(kid), NOT_FOUND, f"kernel {kid} does not exist")
        await expect(client.get_file(kid, "x"), NOT_FOUND, f"kernel {kid} does not exist")
        await expect(client.put_file(kid, "x", b"x"), NOT_FOUND, f"kernel {kid} does not exist")
        channels = client.channels(kid, reconnect_timeout=5)
        try:
            await expect(channels.open(timeout=CALL_TIMEOUT), NOT_FOUND, f"kernel {kid} does not exist")
        finally:
            await channels.close()
    await assert_serving(worker)


async def test_transfer_requests_are_checked(worker, kernel):
    """RequestTransfer (what %vgpu push / pull call) and CompleteTransfer refuse bad input."""
    push = pb.TRANSFER_TO_KERNEL
    async with client_of(worker) as alice, client_of(worker, worker.other_token) as bob:
        await expect(bob.request_transfer(kernel.kernel_id, push, "a.txt", "a.txt", timeout=5), DENIED,
                     "belongs to another principal")
        await expect(alice.request_transfer("f" * 16, push, "a.txt", "a.txt", timeout=5), NOT_FOUND,
                     "does not exist")
        await expect(alice.request_transfer(kernel.kernel_id, pb.TRANSFER_DIRECTION_UNSPECIFIED, "a", "a",
                                            timeout=5), INVALID, "direction must be")
        await expect(alice.request_transfer(kernel.kernel_id, push, "/etc/passwd", "a.txt", timeout=5), INVALID,
                     "relative to the notebook's directory")
        await expect(alice.request_transfer(kernel.kernel_id, push, "a.txt", "../../a.txt", timeout=5), DENIED,
                     "leaves the kernel's working directory")
        await expect(alice.request_transfer(kernel.kernel_id, push, "a.txt", "a.txt", timeout=5), PRECONDITION,
                     "no Jupyter-side client is connected")
        await expect(bob.complete_transfer(pb.TransferResult(transfer_id="0" * 32, ok=True)), NOT_FOUND,
                     "no transfer")
        # A client that serves no directory answers at once, with a reason, instead of hanging the kernel.
        channels = alice.channels(kernel.kernel_id, reconnect_timeout=5)
        try:
            await channels.open(timeout=CALL_TIMEOUT)
            result = await alice.request_transfer(kernel.kernel_id, push, "a.txt", "a.txt", timeout=20)
            assert not result.ok and "serves no directory" in result.message
        finally:
            await channels.close()
    await assert_serving(worker)


async def test_transfer_that_is_never_finished_times_out_or_ends_with_the_stream(worker, kernel):
    push = pb.TRANSFER_TO_KERNEL
    async with client_of(worker) as alice:
        channels = alice.channels(kernel.kernel_id, reconnect_timeout=5)
        asked: list[pb.TransferAsk] = []

        async def never_answer(ask: pb.TransferAsk) -> None:  # a Jupyter side that hangs
            asked.append(ask)

        channels._transfer = never_answer  # type: ignore[method-assign]
        try:
            await channels.open(timeout=CALL_TIMEOUT)
            with pytest.raises(RemotingError) as exc_info:
                await alice.request_transfer(kernel.kernel_id, push, "a.txt", "a.txt", timeout=2)
            assert exc_info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not finish the transfer within 2 s" in exc_info.value.message
            assert [a.client_path for a in asked] == ["a.txt"]
            # The kernel's side is not left waiting when the Jupyter side's stream goes away.
            pending = asyncio.create_task(alice.request_transfer(kernel.kernel_id, push, "b.txt", "b.txt",
                                                                 timeout=60))
            for _ in range(100):
                if len(asked) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(asked) == 2
        finally:
            await channels.close()
        result = await asyncio.wait_for(pending, CALL_TIMEOUT)
        assert not result.ok and "closed before the transfer finished" in result.message
    await assert_serving(worker)


async def test_signal_unspecified_is_invalid(worker, kernel):
    async with client_of(worker) as client:
        await expect(client.signal(kernel.kernel_id, pb.SIGNAL_UNSPECIFIED), INVALID,
                     "signal must be INTERRUPT, TERMINATE or KILL")
        await expect(client.signal(kernel.kernel_id, 42), INVALID, "signal must be")
        assert (await client.kernel_state(kernel.kernel_id)).status == pb.KERNEL_STATUS_RUNNING
    await assert_serving(worker)


# ---------------------------------------------------------------------------------------- files


async def test_file_paths_cannot_escape(worker, kernel, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    with contextlib.suppress(FileExistsError):
        (kernel.cwd / "outlink").symlink_to(outside, target_is_directory=True)
    with contextlib.suppress(FileExistsError):
        (kernel.cwd / "filelink").symlink_to(outside / "secret.txt")
    async with client_of(worker) as client:
        kid = kernel.kernel_id
        put_cases = [
            ("../x", DENIED, "leaves the kernel's working directory"),
            ("a/../../x", DENIED, "leaves the kernel's working directory"),
            ("/etc/passwd", INVALID, "is absolute"),
            ("", INVALID, "non-empty relative path"),
            ("x" * 5000, INVALID, "non-empty relative path"),
            ("outlink/planted.txt", DENIED, "leaves the kernel's working directory"),
            ("filelink", DENIED, "leaves the kernel's working directory"),
            (".", INVALID, "is a directory"),
        ]
        for path, code, fragment in put_cases:
            await expect(client.put_file(kid, path, b"payload"), code, fragment)
        get_cases = [
            ("../x", DENIED, "leaves the kernel's working directory"),
            ("/etc/passwd", INVALID, "is absolute"),
            ("", INVALID, "non-empty relative path"),
            ("outlink/secret.txt", DENIED, "leaves the kernel's working directory"),
            ("filelink", DENIED, "leaves the kernel's working directory"),
            ("missing.txt", NOT_FOUND, "no file 'missing.txt'"),
            ("nodir/missing.txt", NOT_FOUND, "no file 'nodir/missing.txt'"),
        ]
        for path, code, fragment in get_cases:
            await expect(client.get_file(kid, path), code, fragment)
        assert not (outside / "planted.txt").exists()
        assert (outside / "secret.txt").read_text() == "not yours"
        # Legit use still works.
        info = await client.put_file(kid, "sub/ok.txt", b"hello")
        assert info.size == 5
        assert await client.get_file(kid, "sub/ok.txt") == b"hello"
    await assert_serving(worker)


@pytest.mark.parametrize(("call", "path"), [
    ("put", "plain.txt/inner"), ("get", "plain.txt/inner"),  # a path under a regular file
    ("put", "n" * 300), ("get", "n" * 300),  # a name longer than NAME_MAX
    ("get", "."),  # the working directory itself
], ids=["put-under-file", "get-under-file", "put-name-300", "get-name-300", "get-dot"])
async def test_file_os_errors_are_statuses(worker, kernel, call, path):
    async with client_of(worker) as client:
        kid = kernel.kernel_id
        await client.put_file(kid, "plain.txt", b"x")
        with pytest.raises(RemotingError) as exc_info:
            if call == "put":
                await client.put_file(kid, path, b"x")
            else:
                await client.get_file(kid, path)
        err = exc_info.value
        assert err.code in (INVALID, PRECONDITION, NOT_FOUND), err
        assert str(worker.state_dir) not in err.message, err.message
    await assert_serving(worker)


async def test_put_file_without_header(worker, kernel):
    async with client_of(worker) as client:
        async def data_only():
            yield pb.PutFileRequest(data=b"no header")

        async def nothing():
            return
            yield  # pragma: no cover

        async def header_twice():
            header = pb.PutFileHeader(kernel_id=kernel.kernel_id, path="twice.txt")
            yield pb.PutFileRequest(header=header)
            yield pb.PutFileRequest(data=b"a")
            yield pb.PutFileRequest(header=header)

        for requests, fragment in ((data_only, "must be the header"), (nothing, "must be the header"),
                                   (header_twice, "only data may follow the header")):
            with pytest.raises(grpc.RpcError) as exc_info:
                await client.stub.PutFile(requests(), metadata=meta(worker.token), timeout=CALL_TIMEOUT)
            assert exc_info.value.code() == INVALID, exc_info.value
            assert fragment in exc_info.value.details()
        assert not (kernel.cwd / "twice.txt").exists()
        assert not [p for p in kernel.cwd.iterdir() if "tf-upload" in p.name]
    await assert_serving(worker)


# ---------------------------------------------------------------------------------------- channels


def raw_channels(channel: grpc.aio.Channel):
    return channel.stream_stream(CHANNELS_METHOD, request_serializer=_identity, response_deserializer=_identity)


async def run_raw(call) -> tuple[list[bytes], grpc.StatusCode, str]:
    responses = []
    try:
        async for item in call:
            responses.append(item)
    except grpc.RpcError as exc:
        return responses, exc.code(), exc.details() or ""
    return responses, await call.code(), await call.details() or ""


def open_request(kernel_id: str) -> bytes:
    return pb.ChannelsRequest(open=pb.OpenChannels(kernel_id=kernel_id)).SerializeToString()


async def execute_ok(client: RuntimeClient, kernel: SharedKernel) -> None:
    remote = RemoteKernel(client, kernel.kernel_id, kernel.key, reconnect_timeout=10)
    try:
        await remote.connect(timeout=CALL_TIMEOUT)
        await remote.wait_ready(timeout=60)
        result = await remote.execute("6*7", timeout=30)
        assert result.status == "ok" and result.data() == "42"
    finally:
        await remote.close()


async def test_channels_first_message_must_be_open(worker, kernel):
    async with client_of(worker) as client:
        firsts = [
            (pb.ChannelsRequest(frames=pb.FrameBatch(frames=[pb.Frame(channel=pb.CHANNEL_SHELL, seq=1,
                                                                       parts=[b"id", b"x"])])),
             "must be 'open'"),
            (pb.ChannelsRequest(ack=pb.Ack()), "must be 'open'"),
            (pb.ChannelsRequest(), "must be 'open'"),
        ]
        for first, fragment in firsts:
            async def requests(first=first):
                yield first.SerializeToString()
                await asyncio.sleep(2)

            responses, code, details = await run_raw(raw_channels(client._channel)(
                requests(), metadata=meta(worker.token), timeout=CALL_TIMEOUT))
            assert code == INVALID, (code, details)
            assert fragment in details
            assert not responses
    await assert_serving(worker)


async def test_channels_garbage_first_message(worker, kernel):
    async with client_of(worker) as client:
        for garbage in (b"\xff\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", random.Random(4096).randbytes(4096)):
            async def requests(garbage=garbage):
                yield garbage
                await asyncio.sleep(2)

            responses, code, details = await run_raw(raw_channels(client._channel)(
                requests(), metadata=meta(worker.token), timeout=CALL_TIMEOUT))
            assert code == INVALID, (code, details)
            assert "malformed" in details or "must be 'open'" in details, details
            assert not responses
        # A stream that ends before saying anything is harmless.
        async def nothing():
            return
            yield  # pragma: no cover

        responses, code, _ = await run_raw(raw_channels(client._channel)(
            nothing(), metadata=meta(worker.token), timeout=CALL_TIMEOUT))
        assert not responses and code in (grpc.StatusCode.OK, INVALID)
        await execute_ok(client, kernel)
    await assert_serving(worker)


async def test_channels_oversize_message_is_refused(worker, kernel):
    """A message over the gRPC limit is refused (by gRPC, RESOURCE_EXHAUSTED); the kernel lives on."""
    big = pb.ChannelsRequest(frames=pb.FrameBatch(frames=[pb.Frame(
        channel=pb.CHANNEL_SHELL, seq=1, parts=[b"id", b"x" * (GRPC_MAX_MESSAGE + 1)])])).SerializeToString()
    async with client_of(worker) as client:
        # The client's own limit stops it before it leaves.
        async def too_big_first():
            yield b"\x00" * (GRPC_MAX_MESSAGE + 1)

        _, code, details = await run_raw(raw_channels(client._channel)(
            too_big_first(), metadata=meta(worker.token), timeout=CALL_TIMEOUT))
        assert code == EXHAUSTED, (code, details)
        assert "larger than max" in details

        # A client that allows itself more: the worker's limit stops it, after a valid open.
        options = [o for o in channel_options() if o[0] != "grpc.max_send_message_length"]
        options.append(("grpc.max_send_message_length", 4 * GRPC_MAX_MESSAGE))
        async with grpc.aio.insecure_channel(worker.address, options=options) as loose:
            async def requests():
                yield open_request(kernel.kernel_id)
                await asyncio.sleep(0.3)
                yield big
                await asyncio.sleep(2)

            responses, code, details = await run_raw(raw_channels(loose)(
                requests(), metadata=meta(worker.token), timeout=CALL_TIMEOUT))
            assert code == EXHAUSTED, (code, details)
            assert "larger than max" in details
            assert responses and pb.ChannelsResponse.FromString(responses[0]).WhichOneof("kind") == "opened"
        # The kernel still works through fresh channels.
        await execute_ok(client, kernel)
        assert (await client.kernel_state(kernel.kernel_id)).status == pb.KERNEL_STATUS_RUNNING
    await assert_serving(worker)


async def test_channels_garbage_after_open_keeps_kernel(worker):
    bad_chunk = pb.ChannelsRequest(frames=pb.FrameBatch(frames=[
        pb.Frame(channel=pb.CHANNEL_SHELL, seq=5, chunk=b"abc"),
        pb.Frame(channel=pb.CHANNEL_SHELL, seq=6, parts=[b"id", b"x"])])).SerializeToString()
    async with client_of(worker) as client:
        lease = await client.allocate(vram=256 * MiB, compute=5, ttl_seconds=600)
        try:
            key = secrets.token_hex(16).encode()
            k = await client.start_kernel(lease.id, key=key)
            mine = SharedKernel(lease.id, k.id, key, Path(k.cwd))
            for garbage in (b"\xff\xff\xff\xff\xff", bad_chunk):
                async def requests(garbage=garbage):
                    yield open_request(k.id)
                    await asyncio.sleep(0.3)
                    yield garbage
                    await asyncio.sleep(1.5)

                await run_raw(raw_channels(client._channel)(requests(), metadata=meta(worker.token),
                                                            timeout=5))
                await asyncio.sleep(0.5)
                state = await client.kernel_state(k.id)
                assert state.status == pb.KERNEL_STATUS_RUNNING, f"kernel died (exit code {state.exit_code})"
                await execute_ok(client, mine)
        finally:
            await client.release(lease.id)
    await assert_serving(worker)


# ---------------------------------------------------------------------------------------- fuzz

KNOWN_ALLOCATE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.FAILED_PRECONDITION}
uint32 = st.integers(0, 2**32 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
short_text = st.text(max_size=40)


@pytest.fixture(scope="module")
def sync_stub(worker):
    channel = grpc.insecure_channel(worker.address, options=channel_options())
    try:
        yield pb_grpc.RuntimeStub(channel)
    finally:
        channel.close()


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(vram=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, MiB, 256 * MiB, 4 * GiB, 2**62])),
       compute=st.one_of(uint32, st.integers(0, 101)), count=st.one_of(uint32, st.integers(0, 3)),
       qos=int32, mode=int32, model=short_text, ttl=st.one_of(uint32, st.integers(0, 100)), profile=short_text,
       labels=st.dictionaries(short_text, short_text, max_size=4))
def test_fuzz_allocate(worker, sync_stub, vram, compute, count, qos, mode, model, ttl, profile, labels):
    request = pb.AllocateRequest(slice=pb.SliceRequest(vram=vram, compute=compute), count=count, qos=qos,
                                 model=model, mode=mode, ttl_seconds=ttl, profile=profile, labels=labels)
    try:
        lease = sync_stub.Allocate(request, metadata=meta(worker.token), timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        assert exc.code() in KNOWN_ALLOCATE_CODES, (exc.code(), exc.details(), request)
        assert exc.details() and "Traceback" not in exc.details()
    else:
        assert lease.slices and lease.slices[0].vram == vram and lease.slices[0].compute == compute
        released = sync_stub.Release(pb.ReleaseRequest(lease_id=lease.id), metadata=meta(worker.token),
                                     timeout=CALL_TIMEOUT)
        assert released.released
    inv = sync_stub.GetInventory(pb.GetInventoryRequest(), metadata=meta(worker.token), timeout=CALL_TIMEOUT)
    assert inv.devices[0].vram_leased <= inv.devices[0].vram_total


async def test_worker_survived_the_fuzz(worker, kernel):
    await assert_serving(worker)
    async with client_of(worker) as client:
        leases = await client.list_leases()
        assert [le.id for le in leases] == [kernel.lease_id], leases
        inv = await client.inventory()
        assert inv.devices[0].vram_leased == GiB and inv.devices[0].compute_leased == 10


# ---------------------------------------------------------------------------------------- last: blocks the worker


async def test_get_file_on_fifo_does_not_freeze_worker(worker, kernel):
    fifo = kernel.cwd / "pipe"
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo)
    async with client_of(worker) as client:
        getter = asyncio.ensure_future(client.stub.GetFile(
            pb.GetFileRequest(kernel_id=kernel.kernel_id, path="pipe"), metadata=meta(worker.token),
            timeout=3).read())
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            inv = await asyncio.wait_for(client.inventory(), 3)
            assert inv.devices and time.monotonic() - started < 3
            with pytest.raises(grpc.RpcError) as exc_info:
                await asyncio.wait_for(getter, 5)
            assert exc_info.value.code() == INVALID
        finally:
            # Unblock a stuck open(): a reader/writer on the FIFO lets it return.
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            await asyncio.sleep(0.5)
            os.close(fd)
            getter.cancel()
            with contextlib.suppress(BaseException):
                await getter
            os.unlink(fifo)
    await assert_serving(worker)
