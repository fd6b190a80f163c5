"""Placement over a pool of real workers through a real Jupyter server: queue, binpack/spread, down workers."""

from __future__ import annotations

import asyncio

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of, wait_until

SMALL = {"path": "a.ipynb", "type": "notebook", "name": "a.ipynb", "kernel": {"name": "vgpu-small"}}


def session(name: str) -> dict:
    return {**SMALL, "path": name, "name": name}




def same_tokens(workers):
    """Several workers that accept the same token file (one principal across the pool)."""
    for w in workers[1:]:
        w.token, w.other_token = workers[0].token, workers[0].other_token
        w.token_file.write_text(workers[0].token_file.read_text())
    return [w.start() for w in workers]


async def test_full_pool_queues_then_starts_when_freed(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, first = await server.request("POST", "/api/sessions", session("first.ipynb"))
    assert status == 201, server.log()

    second = asyncio.create_task(server.request("POST", "/api/sessions", session("second.ipynb")))

    async def queued():
        _, body = await server.request("GET", "/tf-vgpu/api/queue")
        return body["queue"]

    [entry] = await wait_until(queued, 20)
    assert entry["position"] == 1 and entry["profile"] == "small"

    async def queue_metric():
        status, body = await asyncio.to_thread(server._open_text, "/metrics")
        return status == 200 and "tf_vgpu_queue_length 1.0" in body and body

    body = await wait_until(queue_metric, 10)
    assert "tf_vgpu_queue_oldest_wait_seconds" in body and "tf_vgpu_pool_workers_up 1.0" in body
    assert "4 GiB" in entry["description"]
    assert not second.done()

    status, _ = await server.request("DELETE", f"/api/sessions/{first['id']}")
    assert status == 204
    status, started = await asyncio.wait_for(second, 60)
    assert status == 201, started
    ws = await KernelWebSocket.connect(server, started["kernel"]["id"])
    try:
        assert text_of(await ws.execute("6*7")) == "42"
    finally:
        ws.close()
    assert (await queued()) == []


async def test_queue_timeout_is_a_clear_error(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker], settings={"queue_timeout": 2.0}).start()
    status, _ = await server.request("POST", "/api/sessions", session("first.ipynb"))
    assert status == 201
    status, body = await server.request("POST", "/api/sessions", session("second.ipynb"))
    assert status >= 500
    message = body["message"] if isinstance(body, dict) else body
    assert "no slice became free within 2 s" in message
    assert "4 GiB" in message  # what was asked, and what the pool had


async def test_binpack_spread_and_a_dead_worker(tf_worker_factory, jupyter_server_factory):
    one, two = same_tokens([tf_worker_factory(["--host-vram", "8Gi"]), tf_worker_factory(["--host-vram", "8Gi"])])

    servers = []

    def logs() -> str:  # seen once in CI: a lease nobody held filled worker one; say whose it was
        return "\n".join([f"--- server {i} ---\n{s.log()[-6000:]}" for i, s in enumerate(servers)]
                         + [f"--- worker {w.address} ---\n{w.log()[-6000:]}" for w in (one, two)])

    async def place_two(server):
        workers, sessions = [], []
        for name in ("a.ipynb", "b.ipynb"):
            status, s = await server.request("POST", "/api/sessions", session(name))
            assert status == 201, logs()
            _, k = await server.request("GET", f"/tf-vgpu/api/kernels/{s['kernel']['id']}")
            workers.append(k["worker"])
            sessions.append(s)
        for s in sessions:
            status, _ = await server.request("DELETE", f"/api/sessions/{s['id']}")
            assert status == 204, logs()
        return workers

    # binpack: the second kernel goes where the first one is (it still fits there).
    server = jupyter_server_factory(workers=[one, two]).start()
    servers.append(server)
    first, second = await place_two(server)
    assert first == second, logs()
    server.stop()

    # spread: the second kernel goes to the emptier worker.
    server = jupyter_server_factory(workers=[one, two], settings={"placement_policy": "spread"}).start()
    servers.append(server)
    first, second = await place_two(server)
    assert first != second, logs()

    # A worker dies: it is marked down and placement goes to the other one.
    two.kill()

    async def down():
        _, pool = await server.request("GET", "/tf-vgpu/api/pool")
        return [w for w in pool["workers"] if w["address"] == two.address and not w["up"]]

    [dead] = await wait_until(down, 20)
    assert dead["error"]
    for name in ("c.ipynb", "d.ipynb"):
        status, s = await server.request("POST", "/api/sessions", session(name))
        assert status == 201, logs()
        _, k = await server.request("GET", f"/tf-vgpu/api/kernels/{s['kernel']['id']}")
        assert k["worker"] == one.address

    # It comes back by itself (same address), without a server restart.
    two.start()

    async def up_again():
        _, pool = await server.request("GET", "/tf-vgpu/api/pool")
        return [w for w in pool["workers"] if w["address"] == two.address and w["up"]]

    await wait_until(up_again, 40)
