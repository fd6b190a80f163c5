"""Channels carry every kind of Jupyter traffic: stdin, big outputs (chunked), exits; files move."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tf_remoting.client import FailedPrecondition
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb


@pytest.fixture
async def kernel(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, ttl_seconds=30)
        key = secrets.token_hex(16).encode()
        k = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, k.id, key)
        await remote.connect()
        await remote.wait_ready(timeout=60)
        yield client, lease, k, remote
        await remote.close()
        await client.release(lease.id)


async def test_stdin_input_round_trip(kernel):
    client, lease, k, remote = kernel
    task = asyncio.create_task(remote.execute("name = input('who? ')\nprint('hello', name)", allow_stdin=True))
    request = await asyncio.wait_for(remote.stdin_requests.get(), 20)
    assert request["msg_type"] == "input_request"
    assert request["content"]["prompt"] == "who? "
    await remote.input_reply("ada")
    result = await asyncio.wait_for(task, 20)
    assert "hello ada" in result.stdout()


async def test_16_mib_output_is_chunked_and_arrives_whole(kernel):
    client, lease, k, remote = kernel
    result = await remote.execute(
        "from IPython.display import display\ndisplay({'text/plain': 'x' * (16 * 2**20)}, raw=True)", timeout=60)
    assert result.status == "ok"
    assert result.data() == "x" * (16 * 2**20)


async def test_an_output_flood_arrives_coalesced_in_order(kernel):
    client, lease, k, remote = kernel
    before = remote.channels.responses
    result = await remote.execute("for i in range(5000):\n    print(i, flush=True)", timeout=120)
    assert result.status == "ok"
    assert result.stdout() == "".join(f"{i}\n" for i in range(5000))  # each line once, in order
    # The nanny holds a flood's iopub frames a few ms and sends them together: far fewer gRPC
    # messages than stream messages (one each without it).
    assert remote.channels.responses - before < 5000 / 5, remote.channels.responses - before
    # And after the flood a request's reply is not held back with it.
    assert (await remote.execute("1+1")).data() == "2"


async def test_big_input_is_chunked(kernel):
    client, lease, k, remote = kernel
    code = "s = '" + "y" * (6 * 2**20) + "'\nlen(s)"
    result = await remote.execute(code, timeout=60)
    assert result.data() == str(6 * 2**20)


async def test_completion_inspection_and_is_complete(kernel):
    client, lease, k, remote = kernel
    await remote.execute("alpha_value = 1")
    reply = await remote.request("complete_request", {"code": "alpha_v", "cursor_pos": 7})
    assert "alpha_value" in reply["content"]["matches"]
    reply = await remote.request("inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0})
    assert reply["content"]["found"]
    reply = await remote.request("is_complete_request", {"code": "for i in x:"})
    assert reply["content"]["status"] == "incomplete"
    reply = await remote.request("kernel_info_request", {}, channel="control")
    assert reply["content"]["implementation"] == "ipython"


async def test_files_put_get_and_confinement(kernel):
    client, lease, k, remote = kernel
    data = bytes(range(256)) * 20_000  # ~5 MB, several chunks
    info = await client.put_file(k.id, "data/input.bin", data)
    assert info.size == len(data)
    result = await remote.execute("import hashlib; hashlib.sha256(open('data/input.bin','rb').read()).hexdigest()")
    import hashlib

    assert result.data().strip("'") == hashlib.sha256(data).hexdigest()
    await remote.execute("open('out.txt', 'w').write('result 42')")
    assert await client.get_file(k.id, "out.txt") == b"result 42"


async def test_kernel_exit_is_reported_with_code(kernel):
    client, lease, k, remote = kernel
    await remote.send_execute("import os; os._exit(3)")
    for _ in range(100):
        state = await client.kernel_state(k.id)
        if state.status == pb.KERNEL_STATUS_EXITED:
            break
        await asyncio.sleep(0.1)
    assert state.exit_code == 3
    with pytest.raises(FailedPrecondition, match="not running"):
        await client.interrupt(k.id)
    assert remote.channels.exit_code in (None, 3)


async def test_expired_lease_is_reclaimed_and_kernel_stopped(tf_worker):
    async with tf_worker.client() as client:
        # Watch first: on a busy machine the 2 s TTL may run out before StartKernel returns.
        watch = client.watch(include_devices=False)
        first = asyncio.ensure_future(anext(watch))
        await asyncio.wait_for(asyncio.shield(first), 20)  # subscribed: the first sample came
        lease = await client.allocate(vram=1 << 30, compute=10, ttl_seconds=2)
        key = secrets.token_hex(16).encode()
        k = await client.start_kernel(lease.id, key=key)
        expired = None

        async def wait_expiry():
            nonlocal expired
            async for update in watch:
                for e in update.events:
                    if e.kind == pb.EVENT_KIND_LEASE_EXPIRED and e.lease_id == lease.id:
                        expired = e
                        return

        await asyncio.wait_for(wait_expiry(), 20)
        await watch.aclose()
        assert "expired" in expired.message
        assert await client.list_leases() == []
        for _ in range(100):
            if (await client.kernel_state(k.id)).status == pb.KERNEL_STATUS_EXITED:
                break
            await asyncio.sleep(0.1)
        assert (await client.kernel_state(k.id)).status == pb.KERNEL_STATUS_EXITED
        assert (await client.inventory()).devices[0].vram_leased == 0


async def test_a_second_client_is_heard_from_its_first_message(kernel):
    """A new stream numbers after what the kernel side already received from earlier streams."""
    client, lease, k, remote = kernel
    for i in range(4):
        assert (await remote.execute(f"{i}+1")).data() == str(i + 1)
    await remote.close()
    second = RemoteKernel(client, k.id, remote.session.key)
    await second.connect()
    try:
        assert (await second.execute("40+2", timeout=20)).data() == "42"
    finally:
        await second.close()
