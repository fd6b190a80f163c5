"""The worker dies (SIGKILL) while a kernel prints; a new worker re-adopts it; nothing is lost."""

from __future__ import annotations

import asyncio
import secrets

from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb


async def test_sigkill_restart_resumes_every_line_once(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, kernel.id, key, reconnect_timeout=60)
        await remote.connect()
        await remote.wait_ready(timeout=60)
        msg_id = await remote.send_execute(
            "import time\nfor i in range(400):\n    print(i, flush=True)\n    time.sleep(0.01)\n")
        text: list[str] = []
        done = False

        async def read_until(count: int | None) -> None:
            nonlocal done
            while True:
                msg = await remote.iopub.get()
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    text.append(msg["content"]["text"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    done = True
                    return
                if count is not None and "".join(text).count("\n") >= count:
                    return

        await asyncio.wait_for(read_until(50), 30)
        tf_worker.kill()
        await asyncio.sleep(1.5)  # the kernel keeps printing into the nanny's buffer meanwhile
        tf_worker.start()
        await asyncio.wait_for(read_until(None), 60)
        assert done
        assert [int(x) for x in "".join(text).split()] == list(range(400))
        assert any(state == "disconnected" for state, _ in remote.states)
        assert any(state == "resumed" for state, _ in remote.states)
        assert sum(remote.channels.dropped.values()) == 0

        # Lease and kernel survived, and the kernel still answers.
        leases = await client.list_leases()
        assert [x.id for x in leases] == [lease.id]
        assert (await client.kernel_state(kernel.id)).status == pb.KERNEL_STATUS_RUNNING
        assert (await remote.execute("6*7")).data() == "42"
        await remote.close()
        await client.release(lease.id)


async def test_sigterm_stops_worker_and_kernel_survives(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        assert tf_worker.stop() == 0
        assert "stopping" in tf_worker.log()
        tf_worker.start()
        assert "re-adopted 1 kernel" in tf_worker.log()
        remote = RemoteKernel(client, kernel.id, key)
        await remote.connect()
        await remote.wait_ready(timeout=60)
        assert (await remote.execute("1+1")).data() == "2"
        await remote.close()
        await client.release(lease.id)
