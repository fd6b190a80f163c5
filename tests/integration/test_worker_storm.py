"""Allocation storms: many concurrent Allocate calls from several client processes against one worker.

The ledger must grant exactly what fits, never more, and its books must balance afterwards.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pytest
from client_processes import ClientProcesses

from tf_remoting.client import RuntimeClient
from tf_remoting.pytest_plugin import WorkerProcess

MiB = 1 << 20
GiB = 1 << 30
PROCESSES = 4
PER_PROCESS = 15  # 60 calls in all
TIMEOUT = 60.0

# One client process: connects, says "ready", then runs one command per stdin line, all calls of a
# command at once, and answers with one JSON line.
CLIENT_SCRIPT = r"""
import asyncio, json, os, sys
from tf_remoting.client import RemotingError, RuntimeClient

async def main():
    loop = asyncio.get_running_loop()
    async with RuntimeClient(os.environ["TF_CLIENT_ADDRESS"], os.environ["TF_CLIENT_TOKEN"], timeout=60) as client:
        await client.inventory()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)

            async def allocate(vram, compute):
                try:
                    lease = await client.allocate(vram=vram, compute=compute, ttl_seconds=600)
                    return {"id": lease.id, "vram": lease.slices[0].vram, "compute": lease.slices[0].compute}
                except RemotingError as exc:
                    return {"code": exc.code.name, "message": exc.message, "vram": vram, "compute": compute}

            async def release(lease_id):
                try:
                    return {"id": lease_id, "released": await client.release(lease_id)}
                except RemotingError as exc:
                    return {"id": lease_id, "code": exc.code.name, "message": exc.message}

            if cmd["op"] == "allocate":
                results = await asyncio.gather(*(allocate(v, c) for v, c in cmd["requests"]))
            else:
                results = await asyncio.gather(*(release(i) for i in cmd["ids"]))
            print(json.dumps(results), flush=True)

asyncio.run(main())
"""


@dataclass
class Result:
    principal: str
    vram: int
    compute: int
    lease_id: str = ""
    code: str = ""
    message: str = ""


class Clients(ClientProcesses):
    """PROCESSES client processes, half alice and half bob, driven line by line."""

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__(worker, CLIENT_SCRIPT, PROCESSES, TIMEOUT)

    async def _command(self, commands: list[dict]) -> list[list[dict]]:
        return await self.command([json.dumps(cmd) for cmd in commands])  # type: ignore[return-value]

    async def allocate(self, requests: list[tuple[int, int]]) -> list[Result]:
        """Spread the requests over the processes round-robin; all are sent at once."""
        shares: list[list[tuple[int, int]]] = [requests[i::PROCESSES] for i in range(PROCESSES)]
        answers = await self._command([{"op": "allocate", "requests": share} for share in shares])
        out = []
        for (principal, _), answer in zip(self.procs, answers, strict=True):
            for item in answer:
                out.append(Result(principal, item["vram"], item["compute"], item.get("id", ""),
                                  item.get("code", ""), item.get("message", "")))
        return out

    async def release(self, results: list[Result]) -> None:
        """Each process releases its own principal's leases, all at once."""
        commands: list[dict] = [{"op": "release", "ids": []} for _ in self.procs]
        for principal in {p for p, _ in self.procs}:
            mine = [i for i, (p, _) in enumerate(self.procs) if p == principal]
            leases = [r.lease_id for r in results if r.lease_id and r.principal == principal]
            for j, lease_id in enumerate(leases):
                commands[mine[j % len(mine)]]["ids"].append(lease_id)
        answers = await self._command(commands)
        released = [item for answer in answers for item in answer]
        assert all(item.get("released") is True for item in released), released
        assert sorted(item["id"] for item in released) == sorted(r.lease_id for r in results if r.lease_id)


@pytest.fixture
async def storm():
    """`await storm(worker)`: started client processes, closed after the test."""
    started: list[Clients] = []

    async def start(worker: WorkerProcess) -> Clients:
        clients = Clients(worker)
        started.append(clients)
        await clients.ready()
        return clients

    yield start
    for clients in started:
        clients.close()


# books() reads the inventory with alice's token: as an admin she sees bob's leases too.
BOOKKEEPER = ["--admin-principals", "alice"]


async def books(worker: WorkerProcess, results: list[Result]) -> tuple[int, int]:
    """Check the inventory against what was granted; returns (VRAM leased, compute leased)."""
    granted = [r for r in results if r.lease_id]
    async with worker.client() as client:
        inv = await client.inventory()
    (device,) = inv.devices
    assert device.vram_leased == sum(r.vram for r in granted)
    assert device.compute_leased == sum(r.compute for r in granted)
    assert device.vram_leased <= device.vram_total
    assert device.compute_leased <= device.compute_capacity
    assert sorted(le.id for le in inv.leases) == sorted(r.lease_id for r in granted)
    assert {(le.principal, le.id) for le in inv.leases} == {(r.principal, r.lease_id) for r in granted}
    # Every refusal was right: what it asked for does not fit in what is free now (leases only grew
    # during the storm, so it did not fit when it was refused either).
    free_vram = device.vram_total - device.vram_leased
    free_compute = device.compute_capacity - device.compute_leased
    for r in results:
        if not r.lease_id:
            assert r.code == "RESOURCE_EXHAUSTED", r
            assert "largest free slice" in r.message, r.message
            assert r.vram > free_vram or r.compute > free_compute, (r, free_vram, free_compute)
    return device.vram_leased, device.compute_leased


async def all_released(worker: WorkerProcess) -> None:
    async with worker.client() as client:
        inv = await client.inventory()
    assert (inv.devices[0].vram_leased, inv.devices[0].compute_leased) == (0, 0)
    assert not inv.leases


def granted(results: list[Result]) -> list[Result]:
    return [r for r in results if r.lease_id]


async def test_storm_grants_exactly_what_fits(tf_worker_factory, storm):
    worker = tf_worker_factory(["--host-vram", "4Gi", *BOOKKEEPER]).start()
    clients = await storm(worker)
    results = await clients.allocate([(256 * MiB, 5)] * (PROCESSES * PER_PROCESS))
    assert len(results) == 60
    ok = granted(results)
    # VRAM binds: 4 GiB / 256 MiB = 16 (compute would allow 20).
    assert len(ok) == 16, Counter(r.code for r in results)
    assert Counter(r.code for r in results) == {"": 16, "RESOURCE_EXHAUSTED": 44}
    assert len({r.lease_id for r in ok}) == 16
    assert {r.principal for r in ok} <= {"alice", "bob"}
    vram, compute = await books(worker, results)
    assert (vram, compute) == (4 * GiB, 80)
    await clients.release(results)
    await all_released(worker)
    # The books balance again: the whole device can be leased once more.
    async with worker.client() as client:
        whole = await client.allocate(vram=4 * GiB, compute=100)
        assert await client.release(whole.id) is True
    assert worker.proc is not None and worker.proc.poll() is None


async def test_storm_with_oversubscription(tf_worker_factory, storm):
    worker = tf_worker_factory(["--host-vram", "4Gi", "--oversubscription", "2", *BOOKKEEPER]).start()
    async with worker.client() as client:
        inv = await client.inventory()
    assert inv.devices[0].compute_capacity == 200
    clients = await storm(worker)

    # Compute binds: 200 % / 10 % = 20, although VRAM would allow 64 of 64 MiB.
    results = await clients.allocate([(64 * MiB, 10)] * 60)
    assert len(granted(results)) == 20, Counter(r.code for r in results)
    assert await books(worker, results) == (20 * 64 * MiB, 200)
    await clients.release(results)
    await all_released(worker)

    # VRAM is never oversubscribed: 4 GiB / 512 MiB = 8, although compute would allow 40.
    results = await clients.allocate([(512 * MiB, 5)] * 60)
    assert len(granted(results)) == 8, Counter(r.code for r in results)
    assert await books(worker, results) == (4 * GiB, 40)
    await clients.release(results)
    await all_released(worker)

    # A mixed storm: whatever wins, neither VRAM nor compute goes past capacity, and every refusal
    # is justified by what is left.
    results = await clients.allocate([(64 * MiB, 10), (768 * MiB, 1)] * 30)
    vram, compute = await books(worker, results)
    assert vram <= 4 * GiB and compute <= 200
    assert granted(results)
    await clients.release(results)
    await all_released(worker)
    async with RuntimeClient(worker.address, worker.token) as client:
        assert len((await client.inventory()).devices) == 1
    assert worker.proc is not None and worker.proc.poll() is None
