"""Backfill across devices over real gRPC (issue 12, point 5): a request that waits reserves the device
nearest to fitting it; a newcomer may start on another device the waiting request could also use
(allowed), but not on the reserved one (refused), whatever its size. Four GPUs from the FAKE NVML
(tests/fakes/fake_gpu_worker.py: 80, 40, 80, 48 GiB), the real ledger and line in a real Worker."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tf_remoting.proto import pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
from fake_gpu_worker import GpuWorker  # noqa: E402  (gpu_worker: the fixture, from conftest.py)

GiB = 1 << 30
TIMEOUT = 30.0


async def line_of(client) -> dict[str, tuple[int, str]]:  # type: ignore[no-untyped-def]
    return {e.request_id: (e.position, e.reason) for e in (await client.inventory()).waiting if e.own}


async def until_waiting(client, request_id: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT
    while request_id not in (line := await line_of(client)):
        assert time.monotonic() < deadline, f"{request_id} never joined the line"
        await asyncio.sleep(0.05)
    return line[request_id]


async def test_backfill_allowed_beside_a_reservation_and_refused_on_it(gpu_worker: GpuWorker) -> None:
    async with gpu_worker.client(gpu_worker.alice) as alice, gpu_worker.client(gpu_worker.bob) as bob:
        uuid = [d.uuid for d in sorted((await alice.inventory()).devices, key=lambda d: d.index)]

        async def take(vram_gib: int) -> pb.Lease:
            return await alice.allocate(vram_gib * GiB, 10)

        # best fit fills: GPU1 (40) and GPU3 (48) full; 60 GiB free on GPU0, 15 GiB on GPU2
        held = {n: await take(n) for n in (40, 48, 20, 65)}
        assert [held[n].slices[0].device_uuid for n in (40, 48, 20, 65)] == [uuid[1], uuid[3], uuid[0], uuid[2]]

        # bob's critical 70 GiB waits: GPU0 misses 10 GiB, GPU2 55 GiB: GPU0 is reserved for it
        big = asyncio.create_task(bob.allocate(70 * GiB, 10, qos=pb.QOS_CRITICAL, wait=TIMEOUT, request_id="big"))
        assert await until_waiting(bob, "big") == (1, "no_room")

        # allowed: alice's low 10 GiB fits on GPU0 and GPU2; bob could use GPU2 too, but waits for GPU0
        small = await alice.allocate(10 * GiB, 10, qos=pb.QOS_LOW, wait=TIMEOUT, request_id="small")
        assert small.slices[0].device_uuid == uuid[2]

        # refused: alice's low 30 GiB fits only on GPU0, the reserved device: it waits behind bob's
        late = asyncio.create_task(alice.allocate(30 * GiB, 10, qos=pb.QOS_LOW, wait=TIMEOUT, request_id="late"))
        assert await until_waiting(alice, "late") == (2, "behind")
        await asyncio.sleep(0.5)  # a few passes of the line: still nothing on GPU0
        assert not late.done() and not big.done()

        # GPU0 empties: bob's request starts there; the 30 GiB no longer fits anywhere (no room)
        await alice.release(held[20].id)
        lease = await asyncio.wait_for(big, TIMEOUT)
        assert lease.slices[0].device_uuid == uuid[0]
        assert await until_waiting(alice, "late") == (1, "no_room")
        late.cancel()
