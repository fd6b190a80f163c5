"""The lease heartbeat follows the kernel's life; a vanished Jupyter server leaks no slice."""

from __future__ import annotations

import asyncio
import signal

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of


async def leased(worker) -> int:
    async with worker.client() as client:
        return (await client.inventory()).devices[0].vram_leased


async def test_lease_is_renewed_while_the_kernel_lives(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker], settings={"lease_ttl": 3}).start()
    status, s = await server.request("POST", "/api/sessions", {
        "path": "r.ipynb", "type": "notebook", "name": "r.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, server.log()
    await asyncio.sleep(7)  # more than two TTLs
    ws = await KernelWebSocket.connect(server, s["kernel"]["id"])
    try:
        assert text_of(await ws.execute("1+1")) == "2"
    finally:
        ws.close()
    assert await leased(tf_worker) == 4 << 30


async def test_server_killed_frees_the_slice(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, s = await server.request("POST", "/api/sessions", {
        "path": "k.ipynb", "type": "notebook", "name": "k.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201
    assert await leased(tf_worker) == 4 << 30
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    for _ in range(80):  # the launcher notices its parent is gone within about a second
        if await leased(tf_worker) == 0:
            break
        await asyncio.sleep(0.25)
    assert await leased(tf_worker) == 0


async def test_token_rotation_keeps_kernels_running(tf_worker, jupyter_server_factory):
    """Rotate alice's token in the file the worker and the server share: nothing restarts."""
    import secrets

    server = jupyter_server_factory(workers=[tf_worker], settings={"lease_ttl": 3}).start()
    status, s = await server.request("POST", "/api/sessions", {
        "path": "t.ipynb", "type": "notebook", "name": "t.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, server.log()
    new_token = secrets.token_urlsafe(24)
    tf_worker.token_file.write_text(f"alice {new_token}\nbob {tf_worker.other_token}\n")
    await asyncio.sleep(8)  # past two TTLs: renewals must have used the new token
    assert "restarting kernel" not in server.log(), server.log()[-6000:]
    ws = await KernelWebSocket.connect(server, s["kernel"]["id"])
    try:
        assert text_of(await ws.execute("1+1")) == "2"
    finally:
        await ws.aclose()
    tf_worker.token = new_token
    assert await leased(tf_worker) == 4 << 30, tf_worker.log()[-6000:]
    status, _ = await server.request("GET", "/tf-vgpu/api/pool")
    assert status == 200
    _, pool = await server.request("GET", "/tf-vgpu/api/pool")
    assert pool["workers"][0]["up"], pool


async def test_a_start_that_failed_in_the_queue_leaves_nothing_and_the_server_stops(tf_worker,
                                                                                     jupyter_server_factory):
    """Defect 15: a kernel whose start failed with queue_timeout stayed in the kernel manager's list;
    at SIGTERM, jupyter_server's cleanup_kernels raised 'Kernel does not exist' and the server hung."""
    import time

    server = jupyter_server_factory(workers=[tf_worker], settings={"queue_timeout": 1.0}).start()
    async with tf_worker.client() as client:
        await client.allocate(vram=4 << 30, compute=10)  # the whole pool: the kernel must queue
    status, body = await server.request("POST", "/api/sessions", {
        "path": "q.ipynb", "type": "notebook", "name": "q.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status >= 500, body
    status, kernels = await server.request("GET", "/api/kernels")
    assert status == 200 and kernels == [], kernels
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(15)
    except Exception:
        raise AssertionError(f"the server did not stop within 15 s of SIGTERM:\n{server.log()[-3000:]}") from None
    assert time.monotonic() - began < 15
    assert "does not exist" not in server.log(), server.log()[-3000:]
