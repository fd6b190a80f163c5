"""Load: 200 concurrent Allocate/Release pairs from 4 processes against one worker.

Each client process fires 50 allocate-then-release pairs at once (asyncio.gather; an allocation refused
because the device is full is retried until it fits), all four
processes at the same moment. Meanwhile the test polls the worker's inventory: no device is ever
leased past its capacity, and the device's books always equal the sum of the leases it lists.
Afterwards nothing is leased, and the worker's SQLite ledger, checked offline after the worker
stopped, has no problems and no leases.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from client_processes import ClientProcesses

from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess
from tf_remoting.worker.leases import DeviceCapacity, Ledger

MiB = 1 << 20
GiB = 1 << 30
PROCESSES = 4
PAIRS = 50  # per process: 200 pairs in all
ROUNDS = 2  # the storm runs twice: the second on books the first one left
TIMEOUT = 90.0

# One client process: connects, says "ready", waits for "go" on stdin, then runs PAIRS
# allocate+release pairs at once and prints one JSON line with every pair's outcome; again per "go".
CLIENT_SCRIPT = r"""
import asyncio, json, os, random, sys, time
from tf_remoting.client import RemotingError, RuntimeClient

MiB = 1 << 20
SIZES = [(64 * MiB, 1), (128 * MiB, 2), (256 * MiB, 5), (512 * MiB, 3), (1024 * MiB, 10)]

async def pair(client, rng):
    # Allocate (retrying while the device is full), hold a moment, release.
    vram, compute = rng.choice(SIZES)
    out = {"vram": vram, "compute": compute, "refusals": [], "id": ""}
    deadline = time.monotonic() + 60
    await asyncio.sleep(rng.random() * 0.2)
    while True:
        try:
            lease = await client.allocate(vram=vram, compute=compute, ttl_seconds=600)
            break
        except RemotingError as exc:
            out["refusals"].append([exc.code.name, exc.message])
            if exc.code.name != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                return out
            await asyncio.sleep(0.01 + rng.random() * 0.05)
    out.update(id=lease.id, granted_vram=lease.slices[0].vram, granted_compute=lease.slices[0].compute)
    await asyncio.sleep(rng.random() * 0.05)
    try:
        out["released"] = await client.release(lease.id)
    except RemotingError as exc:
        out.update(release_code=exc.code.name, release_message=exc.message)
    return out

async def main():
    loop = asyncio.get_running_loop()
    rng = random.Random(int(os.environ["TF_LOAD_SEED"]))
    pairs = int(os.environ["TF_LOAD_PAIRS"])
    async with RuntimeClient(os.environ["TF_CLIENT_ADDRESS"], os.environ["TF_CLIENT_TOKEN"], timeout=60) as client:
        await client.inventory()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            started = time.monotonic()
            results = await asyncio.gather(*(pair(client, rng) for _ in range(pairs)))
            print(json.dumps({"results": results, "seconds": time.monotonic() - started}), flush=True)

asyncio.run(main())
"""


class Clients(ClientProcesses):
    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__(worker, CLIENT_SCRIPT, PROCESSES, TIMEOUT, env={"TF_LOAD_PAIRS": str(PAIRS)},
                         per_process_env=lambda i: {"TF_LOAD_SEED": str(1000 + i)})

    async def storm(self) -> list[dict]:
        answers = await self.command(["go"] * len(self.procs))  # every process gets "go" before any answer
        out = []
        for (principal, _), answer in zip(self.procs, answers, strict=True):
            out += [{**r, "principal": principal} for r in answer["results"]]  # type: ignore[index]
        return out


async def watch_books(worker: WorkerProcess, stop: asyncio.Event, seen: list[tuple[int, int, int]]) -> None:
    """Poll the inventory until `stop`: never past capacity, device books == sum of listed leases."""
    async with worker.client() as client:
        while not stop.is_set():
            inv = await client.inventory()
            (device,) = inv.devices
            assert device.vram_leased <= device.vram_total, (device.vram_leased, device.vram_total)
            assert device.compute_leased <= device.compute_capacity, (device.compute_leased, device.compute_capacity)
            slices = [s for lease in inv.leases for s in lease.slices]
            assert device.vram_leased == sum(s.vram for s in slices), (device, list(inv.leases))
            assert device.compute_leased == sum(s.compute for s in slices), (device, list(inv.leases))
            seen.append((len(inv.leases), device.vram_leased, device.compute_leased))
            await asyncio.sleep(0.005)


@pytest.mark.timeout(300)
async def test_200_concurrent_allocate_release_pairs_from_4_processes(tf_worker_factory):
    # 2 GiB and 100 %: the mix of sizes (64 MiB..1 GiB, 1..10 %) fights over both.
    # The books are read with alice's token; the client processes are alice and bob, so she reads
    # them as an admin (others see bob's leases only as used capacity).
    worker = tf_worker_factory(["--host-vram", "2Gi", "--admin-principals", "alice"]).start()
    clients = Clients(worker)
    try:
        await clients.ready()
        seen: list[tuple[int, int, int]] = []
        for round_no in range(ROUNDS):
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch_books(worker, stop, seen))
            started = time.monotonic()
            results = await clients.storm()
            elapsed = time.monotonic() - started
            stop.set()
            await asyncio.wait_for(watcher, 30)  # re-raises a books violation seen during the storm
            assert len(results) == PROCESSES * PAIRS
            granted = [r for r in results if r["id"]]
            refusals = [tuple(x) for r in results for x in r["refusals"]]
            # Every pair got its lease in the end (retrying while the device was full), exactly what it
            # asked for, and released it; every refusal on the way was a clear "does not fit".
            assert len(granted) == len(results), [r for r in results if not r["id"]][:5]
            assert all(code == "RESOURCE_EXHAUSTED" and "largest free slice" in message
                       for code, message in refusals), Counter((c, m[:80]) for c, m in refusals)
            assert all((r["granted_vram"], r["granted_compute"]) == (r["vram"], r["compute"]) for r in granted)
            assert all(r.get("released") is True for r in granted), [r for r in granted if not r.get("released")]
            assert len({r["id"] for r in granted}) == len(granted)
            print(f"round {round_no + 1}: {len(results)} pairs in {elapsed:.2f} s: {len(granted)} granted and "
                  f"released, {len(refusals)} refusals on the way (RESOURCE_EXHAUSTED, retried)")

        peak = max(seen)
        print(f"inventory polled {len(seen)} times during the storms; at most {peak[0]} leases at once "
              f"({max(v for _, v, _ in seen) / GiB:.2f} GiB of 2 GiB, {max(c for _, _, c in seen)} % of 100 %)")
        assert len(seen) >= 5 and any(n > 0 for n, _, _ in seen), "the watcher never saw a lease"

        async with worker.client() as client:
            inv = await client.inventory()
            assert inv.view == pb.INVENTORY_VIEW_ALL, inv.view
            assert not inv.leases, list(inv.leases)
            (device,) = inv.devices
            assert (device.vram_leased, device.compute_leased) == (0, 0)
            capacities = [DeviceCapacity(uuid=d.uuid, index=d.index, name=d.name, vram_total=d.vram_total,
                                         compute_capacity=d.compute_capacity) for d in inv.devices]
            # The whole device can be leased again: nothing leaked.
            whole = await client.allocate(vram=device.vram_total, compute=device.compute_capacity)
            assert await client.release(whole.id) is True
    finally:
        clients.close()

    assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
    assert worker.stop() == 0, worker.log()[-3000:]
    ledger = Ledger(worker.state_dir / "ledger.sqlite3", capacities)
    try:
        assert ledger.check() == []
        assert ledger.leases() == []
        assert ledger.device_usage() == {c.uuid: (0, 0) for c in capacities}
    finally:
        ledger.close()
    assert "Traceback" not in worker.log(), worker.log()[-3000:]
