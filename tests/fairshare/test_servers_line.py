"""Jupyter servers wait in the worker's line (issue 12, points 2 and 5), with real workers, real
Jupyter servers and real kernels: the order across two servers (alice and bob) follows QoS, a
request waiting at two workers gets one lease only, and each server's queue view shows its own
waiting request with its place and why it waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tf_jupyter.pool.kernels import KERNEL_LABEL
from tf_jupyter.profiles import Profile, kernelspec
from tf_jupyter.pytest_plugin import JupyterServerProcess, wait_until
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 1 << 30
TIMEOUT = 90.0


def add_profile(server: JupyterServerProcess, profile: Profile) -> str:
    spec_dir = server.root / "data" / "kernels" / f"vgpu-{profile.name}"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(profile)))
    return f"vgpu-{profile.name}"


async def start_kernel(server: JupyterServerProcess, name: str) -> str:
    status, kernel = await server.request("POST", "/api/kernels", {"name": name}, timeout=TIMEOUT)
    assert status == 201, (status, kernel, server.log()[-3000:])
    return str(kernel["id"])


async def stop_kernel(server: JupyterServerProcess, kernel_id: str) -> None:
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}", timeout=TIMEOUT)
    assert status == 204, status


async def queue_of(server: JupyterServerProcess) -> list[dict[str, Any]]:
    status, body = await server.request("GET", "/tf-vgpu/api/queue", timeout=TIMEOUT)
    assert status == 200, (status, body)
    return list(body["queue"])


async def lease_count(worker: WorkerProcess, token: str) -> int:
    async with worker.client(token) as client:
        return len(await client.list_leases())


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    """One host device of 4 GiB; alice and bob (the factory's two principals)."""
    return tf_worker_factory(["--host-vram", "4Gi", "--sample-interval", "1"]).start()


@pytest.fixture
def servers(worker: WorkerProcess, jupyter_server_factory: Any) -> Iterator[dict[str, JupyterServerProcess]]:
    """alice's server (hold: 2 GiB medium, later: 2 GiB low) and bob's (urgent: 3 GiB critical)."""
    out = {}
    for name, token, profiles in (
            ("alice", worker.token, [Profile("hold", vram=2 * GiB, compute=10),
                                     Profile("later", vram=2 * GiB, compute=10, qos="low")]),
            ("bob", worker.other_token, [Profile("urgent", vram=3 * GiB, compute=10, qos="critical")])):
        token_file = worker.root / f"{name}-token"
        token_file.write_text(f"{name} {token}\n")
        server = jupyter_server_factory(workers=[worker], settings={"token_file": str(token_file),
                                                                   "queue_timeout": 80.0})
        for profile in profiles:
            add_profile(server, profile)
        out[name] = server.start()
    yield out


@pytest.mark.timeout(240)
async def test_order_across_servers_follows_qos_and_each_queue_view_shows_its_own(worker, servers):
    alice, bob = servers["alice"], servers["bob"]
    holder = await start_kernel(alice, "vgpu-hold")  # alice holds 2 of the 4 GiB
    urgent = asyncio.create_task(start_kernel(bob, "vgpu-urgent"))  # 3 GiB critical: waits

    async def bob_waits() -> list[dict[str, Any]] | None:
        q = await queue_of(bob)
        return q if q and q[0]["position"] == 1 else None

    bob_queue = await wait_until(bob_waits, TIMEOUT)
    assert [(e["worker"], e["position"], e["reason"], e["qos"]) for e in bob_queue] == [
        (worker.address, 1, "no_room", "critical")], bob_queue
    assert bob_queue[0]["message"] and bob_queue[0]["profile"] == "urgent"

    # alice's low 2 GiB would fit now, but only on the device bob's critical request waits for: it waits behind.
    later = asyncio.create_task(start_kernel(alice, "vgpu-later"))

    async def alice_waits() -> list[dict[str, Any]] | None:
        q = await queue_of(alice)
        return q if q else None

    alice_queue = await wait_until(alice_waits, TIMEOUT)
    assert [(e["worker"], e["position"], e["qos"]) for e in alice_queue] == [(worker.address, 2, "low")], alice_queue
    assert alice_queue[0]["reason"] in ("behind", "no_room") and alice_queue[0]["message"]
    assert alice_queue[0]["labels"].get(KERNEL_LABEL)  # this server's own request, with its labels
    # Each sees only its own request: bob's view never lists alice's, and the other way round.
    assert [e["id"] for e in await queue_of(bob)] == [bob_queue[0]["id"]]
    assert not urgent.done() and not later.done()

    await stop_kernel(alice, holder)  # room frees: bob's critical request starts first
    urgent_id = await asyncio.wait_for(urgent, TIMEOUT)
    assert not later.done()
    assert await lease_count(worker, worker.other_token) == 1
    assert await lease_count(worker, worker.token) == 0
    assert await queue_of(bob) == []

    await stop_kernel(bob, urgent_id)  # then alice's
    later_id = await asyncio.wait_for(later, TIMEOUT)
    assert await lease_count(worker, worker.token) == 1
    assert await queue_of(alice) == []
    await stop_kernel(alice, later_id)


@pytest.mark.timeout(240)
async def test_a_request_waiting_at_two_workers_gets_one_lease(tf_worker_factory, jupyter_server_factory):
    workers = [tf_worker_factory(["--host-vram", "2Gi", "--sample-interval", "1"]) for _ in range(2)]
    workers[1].token = workers[0].token  # one pool, one token: alice on both workers
    workers[1].token_file.write_text(workers[0].token_file.read_text())
    for w in workers:
        w.start()
    server = jupyter_server_factory(workers=workers, settings={"queue_timeout": 80.0})
    name = add_profile(server, Profile("two", vram=2 * GiB, compute=10))
    server.start()
    held = [await start_kernel(server, name) for _ in range(2)]  # both workers full
    waiting = asyncio.create_task(start_kernel(server, name))

    async def in_both_lines() -> list[dict[str, Any]] | None:
        q = await queue_of(server)
        return q if sorted(e["worker"] for e in q) == sorted(w.address for w in workers) else None

    rows = await wait_until(in_both_lines, TIMEOUT)
    assert len({e["id"] for e in rows}) == 1, rows  # one request, in each worker's line
    await stop_kernel(server, held[0])
    third = await asyncio.wait_for(waiting, TIMEOUT)
    await asyncio.sleep(2.0)  # a second grant, if any, would show up by now (the workers grant every tick)
    counts = [await lease_count(w, w.token) for w in workers]
    assert counts == [1, 1], counts
    for w in workers:  # the other wait left its line
        async with w.client() as client:
            assert list((await client.inventory()).waiting) == []
    assert await queue_of(server) == []
    for kernel_id in (held[1], third):
        await stop_kernel(server, kernel_id)


@pytest.mark.timeout(240)
async def test_over_quota_at_one_worker_starts_on_another(tf_worker_factory, jupyter_server_factory):
    """Quotas hold per worker: alice's quota on the first worker (placement tries it first: it has the
    most room) is 1 GiB, so her 2 GiB kernel starts on the second worker instead of failing."""
    workers = [tf_worker_factory(["--host-vram", "4Gi", "--quotas", '{"default": {"vram": "1Gi"}}']),
               tf_worker_factory(["--host-vram", "3Gi"])]
    workers[1].token = workers[0].token
    workers[1].token_file.write_text(workers[0].token_file.read_text())
    for w in workers:
        w.start()
    server = jupyter_server_factory(workers=workers, settings={"queue_timeout": 20.0})
    name = add_profile(server, Profile("two", vram=2 * GiB, compute=10))
    server.start()
    kernel_id = await start_kernel(server, name)
    assert [await lease_count(w, w.token) for w in workers] == [0, 1]
    await stop_kernel(server, kernel_id)


@pytest.mark.timeout(240)
async def test_a_waiting_start_keeps_its_place_across_a_worker_sigkill_and_starts_once(worker, servers):
    """alice's server waits at the worker; the worker is SIGKILLed and restarted under it. The server
    asks again with the same request id, finds its place kept (the line lives in the ledger), and the
    kernel starts once room frees: one lease, no second entry in the line."""
    alice = servers["alice"]
    async with worker.client(worker.other_token) as bob:
        held = await bob.allocate(4 * GiB, 10, ttl_seconds=180)  # bob fills the worker
    waiting = asyncio.create_task(start_kernel(alice, "vgpu-hold"))
    first = (await wait_until(lambda: _own_entries(alice), TIMEOUT))[0]
    assert (first["position"], first["reason"]) == (1, "no_room"), first

    worker.kill()
    worker.start()

    async def back_in_line() -> list[str] | None:  # asked through the restarted worker
        async with worker.client() as client:
            return [e.request_id for e in (await client.inventory()).waiting] or None

    assert await wait_until(back_in_line, TIMEOUT) == [first["id"]]  # the same request, once

    async def alice_sees_it_again() -> list[dict[str, Any]] | None:  # her server re-attached and sees its place
        q = await queue_of(alice)
        return q if [(e["id"], e["position"]) for e in q] == [(first["id"], 1)] else None

    await wait_until(alice_sees_it_again, TIMEOUT)
    assert not waiting.done()
    async with worker.client(worker.other_token) as bob:
        await bob.release(held.id)
    kernel_id = await asyncio.wait_for(waiting, TIMEOUT)
    assert await lease_count(worker, worker.token) == 1
    async with worker.client() as client:
        assert list((await client.inventory()).waiting) == []
    assert await queue_of(alice) == []
    await stop_kernel(alice, kernel_id)


async def _own_entries(server: JupyterServerProcess) -> list[dict[str, Any]] | None:
    return await queue_of(server) or None
