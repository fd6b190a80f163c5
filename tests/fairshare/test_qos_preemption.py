"""QoS that holds (issue 12, point 3), with real processes: one worker offering 4 GiB, alice's Jupyter
server with two idle kernels (one QoS low, one QoS critical), and bob (another principal) whose
high-QoS request does not fit and waits in the worker's line. Alice's server sees bob's entry
(anonymous: QoS, size, reason), warns her idle low kernel on its event stream, shuts it down after
`qos_release_grace`, and bob's request is granted. Her critical kernel is never warned nor released,
even while a high-QoS request waits for exactly its room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from tf_jupyter.profiles import Profile, kernelspec
from tf_jupyter.pytest_plugin import JupyterServerProcess, wait_until
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

MiB, GiB = 1 << 20, 1 << 30
TIMEOUT = 60.0
IDLE_WARNING = 2.0  # seconds idle before a kernel may be released for a waiting higher-QoS request
GRACE = 2.0  # c.TfVgpu.qos_release_grace: seconds between the warning and the shutdown

PROFILES = [Profile("lowbig", vram=2 * GiB, compute=10, qos="low"),
            Profile("critone", vram=1 * GiB, compute=10, qos="critical")]


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    return tf_worker_factory(["--host-vram", "4Gi"]).start()


@pytest.fixture
def alice_server(worker: WorkerProcess, jupyter_server_factory: type[JupyterServerProcess]) -> JupyterServerProcess:
    token_file = worker.root / "alice-token"
    token_file.write_text(f"alice {worker.token}\n")
    server = jupyter_server_factory(workers=[worker], settings={
        "token_file": str(token_file), "idle_warning": IDLE_WARNING, "qos_release_grace": GRACE})
    for p in PROFILES:
        spec_dir = server.root / "data" / "kernels" / f"vgpu-{p.name}"
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(p)))
    return server.start()


async def start_kernel(server: JupyterServerProcess, name: str) -> str:
    status, kernel = await server.request("POST", "/api/kernels", {"name": name}, timeout=120)
    assert status == 201, (kernel, server.log()[-3000:])
    return str(kernel["id"])


async def running(server: JupyterServerProcess) -> set[str]:
    status, kernels = await server.request("GET", "/api/kernels", timeout=TIMEOUT)
    assert status == 200
    return {k["id"] for k in kernels}


async def test_an_idle_low_kernel_makes_room_for_a_waiting_high_request_critical_never(worker, alice_server):
    events: list[dict[str, Any]] = []
    ws = await alice_server.websocket("/tf-vgpu/api/events")

    async def collect() -> None:
        while (message := await ws.read_message()) is not None:
            events.append(json.loads(message))

    collector = asyncio.create_task(collect())
    waits: list[asyncio.Task[pb.Lease]] = []
    try:
        critical = await start_kernel(alice_server, "vgpu-critone")
        low = await start_kernel(alice_server, "vgpu-lowbig")  # 3 of the worker's 4 GiB now alice's

        def of(kind: str, kernel_id: str) -> list[dict[str, Any]]:
            return [e for e in events if e.get("type") == "event" and e.get("kind") == kind
                    and e.get("kernel_id") == kernel_id]

        async with worker.client(worker.other_token) as bob:
            # bob's high-QoS 2 GiB does not fit (1 GiB free): it waits at the worker for room
            waits.append(asyncio.create_task(bob.allocate(2 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT,
                                                          request_id="bob-high")))
            warned = await wait_until(lambda: asyncio.sleep(0, of("idle_warning", low)), timeout=TIMEOUT)
            assert warned[0]["reason"] == "qos" and "QoS high" in warned[0]["message"], warned
            lease = await asyncio.wait_for(waits[0], TIMEOUT)  # granted once alice's low kernel is shut down
            assert lease.slices[0].vram == 2 * GiB
            # the event follows the shutdown, which frees the lease before it returns
            released = await wait_until(lambda: asyncio.sleep(0, of("idle_release", low)), timeout=TIMEOUT)
            assert released[0]["reason"] == "qos", events
            assert released[0]["time"] - warned[0]["time"] >= GRACE - 0.5  # the grace was kept
            assert low not in await running(alice_server)

            # Now only alice's critical kernel could make room for bob's next high request: it stays.
            waits.append(asyncio.create_task(bob.allocate(2 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT,
                                                          request_id="bob-high-2")))

            async def in_line() -> bool:
                return any(e.request_id == "bob-high-2" for e in (await bob.inventory()).waiting)

            await wait_until(in_line, timeout=TIMEOUT)
            await asyncio.sleep(3 * (IDLE_WARNING + GRACE))  # several checks of alice's server, bounded
            assert not waits[1].done()
            assert critical in await running(alice_server)
            assert not of("idle_warning", critical) and not of("idle_release", critical), events
    finally:
        for task in waits:
            task.cancel()
        collector.cancel()
        ws.close()
        with contextlib.suppress(Exception):
            for kernel_id in await running(alice_server):
                await alice_server.request("DELETE", f"/api/kernels/{kernel_id}", timeout=TIMEOUT)
