"""A vGPU kernel through a real Jupyter server: sessions API, execute, usage, interrupt, restart, shutdown."""

from __future__ import annotations

import asyncio
import json
import time

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of, wait_until


async def test_session_life_cycle(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, specs = await server.request("GET", "/api/kernelspecs")
    assert status == 200
    assert "vgpu-small" in specs["kernelspecs"], server.log()
    spec = specs["kernelspecs"]["vgpu-small"]["spec"]
    assert spec["display_name"] == "Python 3 · vGPU 4 GiB · 10 %"
    assert spec["metadata"]["tf_vgpu"]["vram"] == 4 << 30

    # tf_worker offers 4 GiB: exactly one small slice.
    status, session = await server.request("POST", "/api/sessions", {
        "path": "analysis.ipynb", "type": "notebook", "name": "analysis.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, (session, server.log())
    kernel_id = session["kernel"]["id"]

    status, info = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel_id}")
    assert status == 200, info
    assert info["worker"] == tf_worker.address
    assert info["slice"] == {"vram": 4 << 30, "compute": 10, "count": 1}
    assert info["mode"] == "host" and info["device"]["kind"] == "host"
    lease_id = info["lease_id"]

    ws = await KernelWebSocket.connect(server, kernel_id)
    try:
        result = await ws.execute("import os; print(os.environ['TF_VGPU_LEASE_ID'], os.getcwd())")
        assert result["reply"]["content"]["status"] == "ok", result
        lease_in_kernel, cwd = text_of(result).split()
        assert lease_in_kernel == lease_id
        assert cwd == str(server.notebooks)  # kernel starts next to the notebook (shared filesystem)

        # Usage rises in the API and in the events WebSocket's samples after allocating memory in the kernel.
        before = info["usage"]["vram_used"]
        events = await server.websocket("/tf-vgpu/api/events")
        try:
            await ws.execute("block = b'x' * (300 * 2**20)")

            async def risen():
                _, k = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel_id}")
                return k["usage"]["vram_used"] >= before + 250 * 2**20

            await wait_until(risen, 20)
            sampled = []
            deadline = time.monotonic() + 20
            while not sampled or sampled[-1] < before + 250 * 2**20:
                msg = json.loads(await asyncio.wait_for(events.read_message(), max(0.1, deadline - time.monotonic())))
                if msg["type"] == "sample":
                    sampled += [s["vram_used"] for s in msg["leases"]
                                if s["kernel_id"] == kernel_id and s["lease_id"] == lease_id]
        finally:
            events.close()

        # Interrupt through the REST API (signal mode -> launcher -> worker Signal).
        msg_id = await ws.send("execute_request", {"code": "import time; time.sleep(60)", "silent": False})
        await asyncio.sleep(1.0)
        status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
        assert status == 204
        while True:
            msg = await ws.recv(30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "error":
                assert msg["content"]["ename"] == "KeyboardInterrupt"
                break
    finally:
        ws.close()

    # Restart keeps the lease.
    status, _ = await server.request("POST", f"/api/kernels/{kernel_id}/restart")
    assert status == 200, server.log()
    _, info = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel_id}")
    assert info["lease_id"] == lease_id
    ws = await KernelWebSocket.connect(server, kernel_id)
    try:
        result = await ws.execute("'block' in dir()")
        assert text_of(result) == "False"  # a fresh kernel process, same slice
    finally:
        ws.close()

    # Shutdown frees the slice on the worker.
    status, _ = await server.request("DELETE", f"/api/sessions/{session['id']}")
    assert status == 204
    async with tf_worker.client() as client:
        async def freed():
            return (await client.inventory()).devices[0].vram_leased == 0

        await wait_until(freed, 20)
    status, body = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel_id}")
    assert status == 404 and "unknown" in body["message"]


async def test_pool_queue_and_profiles_api(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, pool = await server.request("GET", "/tf-vgpu/api/pool")
    assert status == 200
    [worker] = pool["workers"]
    assert worker["up"] and worker["backend"] == "host"
    assert worker["devices"][0]["kind"] == "host"
    status, profiles = await server.request("GET", "/tf-vgpu/api/profiles")
    assert {p["name"] for p in profiles["profiles"]} >= {"small", "medium", "large", "whole"}
    status, queue = await server.request("GET", "/tf-vgpu/api/queue")
    assert status == 200 and queue == {"queue": []}
    # Unauthenticated calls are refused.
    status, _ = await server.request("GET", "/tf-vgpu/api/pool", token="wrong")
    assert status == 403
    # Events websocket says hello with the pool.
    ws = await server.websocket("/tf-vgpu/api/events")
    hello = json.loads(await asyncio.wait_for(ws.read_message(), 10))
    assert hello["type"] == "hello" and hello["pool"]["workers"][0]["address"] == tf_worker.address
    ws.close()
