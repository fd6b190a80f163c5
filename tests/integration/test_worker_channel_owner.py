"""A kernel has one Jupyter-side client at a time: a newer client's Channels stream displaces the
older one, which ends with ABORTED and a sentence saying so (defect 7: it was INVALID_ARGUMENT,
"malformed message", which said nothing true)."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import pytest

from tf_remoting.client import RemotingError
from tf_remoting.client.session import RemoteKernel


async def test_a_displaced_client_is_told_why_and_does_not_retry(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, ttl_seconds=60)
        key = secrets.token_hex(16).encode()
        k = await client.start_kernel(lease.id, key=key)
        first = RemoteKernel(client, k.id, key)
        await first.connect()
        await first.wait_ready(timeout=60)
        assert (await first.execute("1+1")).data() == "2"

        second = RemoteKernel(client, k.id, key)
        await second.connect()
        try:
            # The older stream ends with an error, not a reconnect (ABORTED is not resumable).
            with pytest.raises(RemotingError) as exc_info:
                await asyncio.wait_for(first.channels.recv(), 20)
            error = exc_info.value
            assert error.code == grpc.StatusCode.ABORTED
            assert f"kernel {k.id}: another client opened this kernel's channels" in error.message
            assert "one Jupyter-side client at a time" in error.message
            assert first.channels.reconnects == 0
            assert not any(state == "disconnected" for state, _ in first.states), first.states
            # The newer client works.
            await second.wait_ready(timeout=30)
            assert (await second.execute("2+3")).data() == "5"
        finally:
            await first.close()
            await second.close()
            await client.release(lease.id)
