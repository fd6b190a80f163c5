"""QoS that holds (issue 12, point 3), with real processes.

One worker offering 4 GiB, alice's Jupyter server with two idle kernels (one QoS low, one QoS
critical), and bob (another principal) whose high-QoS request does not fit and waits in the worker's
line. The worker marks alice's idle low lease for release (`Lease.release_for`); her server warns
the kernel on its event stream, shuts it down after `qos_release_grace`, and bob's request is
granted. Her critical kernel is never warned nor released, even while a high-QoS request waits for
exactly its room.

Then two servers, alice's and carol's, each with one idle low kernel of 2 GiB on the full 4 GiB
worker, and bob's high request for 3 GiB: neither kernel alone makes room, together they do. Only
the worker sees both (each server sees its own leases only), so both are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from tf_jupyter.profiles import Profile, kernelspec
from tf_jupyter.pytest_plugin import JupyterServerProcess, wait_until
from tf_remoting.client import RuntimeClient
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

MiB, GiB = 1 << 20, 1 << 30
TIMEOUT = 60.0
IDLE = 2.0  # the worker's --qos-release-idle: seconds idle before a lease may be marked for release
GRACE = 2.0  # c.TfVgpu.qos_release_grace: seconds between the warning and the shutdown

PROFILES = [Profile("lowbig", vram=2 * GiB, compute=10, qos="low"),
            Profile("critone", vram=1 * GiB, compute=10, qos="critical")]


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    return tf_worker_factory(["--host-vram", "4Gi", "--qos-release-idle", str(IDLE)]).start()


def server_of(principal: str, token: str, worker: WorkerProcess,
              factory: type[JupyterServerProcess]) -> JupyterServerProcess:
    token_file = worker.root / f"{principal}-token"
    token_file.write_text(f"{principal} {token}\n")
    server = factory(workers=[worker], settings={"token_file": str(token_file), "qos_release_grace": GRACE})
    for p in PROFILES:
        spec_dir = server.root / "data" / "kernels" / f"vgpu-{p.name}"
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(p)))
    return server.start()


@pytest.fixture
def alice_server(worker: WorkerProcess, jupyter_server_factory: type[JupyterServerProcess]) -> JupyterServerProcess:
    return server_of("alice", worker.token, worker, jupyter_server_factory)


async def start_kernel(server: JupyterServerProcess, name: str) -> str:
    status, kernel = await server.request("POST", "/api/kernels", {"name": name}, timeout=120)
    assert status == 201, (kernel, server.log()[-3000:])
    return str(kernel["id"])


async def running(server: JupyterServerProcess) -> set[str]:
    status, kernels = await server.request("GET", "/api/kernels", timeout=TIMEOUT)
    assert status == 200
    return {k["id"] for k in kernels}


@contextlib.asynccontextmanager
async def server_events(server: JupyterServerProcess) -> AsyncIterator[list[dict[str, Any]]]:
    """The server's event stream (GET /tf-vgpu/api/events), collected into a list while inside."""
    events: list[dict[str, Any]] = []
    ws = await server.websocket("/tf-vgpu/api/events")

    async def collect() -> None:
        while (message := await ws.read_message()) is not None:
            events.append(json.loads(message))

    collector = asyncio.create_task(collect())
    try:
        yield events
    finally:
        collector.cancel()
        ws.close()


def of(events: list[dict[str, Any]], kind: str, kernel_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "event" and e.get("kind") == kind and e.get("kernel_id") == kernel_id]


async def test_an_idle_low_kernel_makes_room_for_a_waiting_high_request_critical_never(worker, alice_server):
    waits: list[asyncio.Task[pb.Lease]] = []
    async with server_events(alice_server) as events:
        try:
            critical = await start_kernel(alice_server, "vgpu-critone")
            low = await start_kernel(alice_server, "vgpu-lowbig")  # 3 of the worker's 4 GiB now alice's
            async with worker.client(worker.other_token) as bob:
                # bob's high-QoS 2 GiB does not fit (1 GiB free): it waits at the worker for room
                waits.append(asyncio.create_task(bob.allocate(2 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT,
                                                              request_id="bob-high")))
                warned = await wait_until(lambda: asyncio.sleep(0, of(events, "idle_warning", low)), timeout=TIMEOUT)
                assert warned[0]["reason"] == "qos" and "QoS high" in warned[0]["message"], warned
                lease = await asyncio.wait_for(waits[0], TIMEOUT)  # granted once alice's low kernel is shut down
                assert lease.slices[0].vram == 2 * GiB
                # the event follows the shutdown, which frees the lease before it returns
                released = await wait_until(lambda: asyncio.sleep(0, of(events, "idle_release", low)),
                                            timeout=TIMEOUT)
                assert released[0]["reason"] == "qos", events
                assert released[0]["time"] - warned[0]["time"] >= GRACE - 0.5  # the grace was kept
                assert low not in await running(alice_server)

                # Now only alice's critical kernel could make room for bob's next high request: it stays.
                waits.append(asyncio.create_task(bob.allocate(2 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT,
                                                              request_id="bob-high-2")))
                await wait_until(lambda: _in_line(bob, "bob-high-2"), timeout=TIMEOUT)
                await asyncio.sleep(3 * (IDLE + GRACE))  # several ticks of the worker and checks of alice's server
                assert not waits[1].done()
                assert critical in await running(alice_server)
                assert not of(events, "idle_warning", critical) and not of(events, "idle_release", critical), events
        finally:
            for task in waits:
                task.cancel()
            with contextlib.suppress(Exception):
                for kernel_id in await running(alice_server):
                    await alice_server.request("DELETE", f"/api/kernels/{kernel_id}", timeout=TIMEOUT)


async def test_two_users_idle_kernels_that_only_together_make_room_are_both_released(
        tf_worker_factory: type[WorkerProcess], jupyter_server_factory: type[JupyterServerProcess]) -> None:
    worker = tf_worker_factory(["--host-vram", "4Gi", "--qos-release-idle", str(IDLE)])
    carol_token = secrets.token_urlsafe(24)
    worker.token_file.write_text(f"alice {worker.token}\nbob {worker.other_token}\ncarol {carol_token}\n")
    worker.start()
    alice = server_of("alice", worker.token, worker, jupyter_server_factory)
    carol = server_of("carol", carol_token, worker, jupyter_server_factory)
    wait: asyncio.Task[pb.Lease] | None = None
    async with server_events(alice) as alice_events, server_events(carol) as carol_events:
        try:
            alices = await start_kernel(alice, "vgpu-lowbig")
            carols = await start_kernel(carol, "vgpu-lowbig")  # the worker's 4 GiB are all leased now
            async with worker.client(worker.other_token) as bob:
                # 3 GiB: neither idle 2 GiB kernel alone makes room; both together do
                wait = asyncio.create_task(bob.allocate(3 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT,
                                                        request_id="bob-high"))
                lease = await asyncio.wait_for(wait, TIMEOUT)
                assert lease.slices[0].vram == 3 * GiB
            for server, events, kernel_id in ((alice, alice_events, alices), (carol, carol_events, carols)):
                released = await wait_until(lambda e=events, k=kernel_id: asyncio.sleep(0, of(e, "idle_release", k)),
                                            timeout=TIMEOUT)
                warned = of(events, "idle_warning", kernel_id)
                assert warned and warned[0]["reason"] == "qos" and "QoS high" in warned[0]["message"], events
                assert released[0]["reason"] == "qos" and released[0]["time"] - warned[0]["time"] >= GRACE - 0.5
                assert kernel_id not in await running(server)
                # each server's stream speaks of its own kernel only
                assert not [e for e in events if e.get("kernel_id") in {alices, carols} - {kernel_id}], events
        finally:
            if wait is not None:
                wait.cancel()
            for server in (alice, carol):
                with contextlib.suppress(Exception):
                    for kernel_id in await running(server):
                        await server.request("DELETE", f"/api/kernels/{kernel_id}", timeout=TIMEOUT)


@pytest.mark.parametrize("idle", [1.0, 0.0])
async def test_the_worker_marks_the_idle_lease_for_its_owner_only_and_unmarks_it(
        tf_worker_factory: type[WorkerProcess], idle: float) -> None:
    """Without Jupyter: alice's idle low lease (no kernel on it) is marked once bob's high request
    waits for its room; only alice (and admins) see her lease and its mark; the mark goes when bob's
    request leaves the line. With --qos-release-idle 0 nothing is ever marked."""
    worker = tf_worker_factory(["--host-vram", "4Gi", "--qos-release-idle", str(idle), "--sample-interval", "0.2"])
    worker.start()
    async with worker.client() as alice, worker.client(worker.other_token) as bob:
        lease = await alice.allocate(3 * GiB, 10, qos=pb.QOS_LOW)

        async def mark() -> int:
            return next(le.release_for for le in (await alice.inventory()).leases if le.id == lease.id)

        wait = asyncio.create_task(bob.allocate(2 * GiB, 10, qos=pb.QOS_HIGH, wait=TIMEOUT, request_id="bob-high"))
        try:
            if idle:
                await wait_until(lambda: _equals(mark(), pb.QOS_HIGH), timeout=TIMEOUT)
                assert lease.id not in {le.id for le in (await bob.inventory()).leases}
            else:
                await wait_until(lambda: _in_line(bob, "bob-high"), timeout=TIMEOUT)
                await asyncio.sleep(2.0)  # ten ticks
                assert await mark() == pb.QOS_UNSPECIFIED
        finally:
            wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wait
        await wait_until(lambda: _equals(mark(), pb.QOS_UNSPECIFIED), timeout=TIMEOUT)  # bob left: no one needs it
        assert await alice.release(lease.id) is True


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _in_line(client: RuntimeClient, request_id: str) -> bool:
    return any(e.request_id == request_id for e in (await client.inventory()).waiting)
