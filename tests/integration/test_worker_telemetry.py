"""Watch: usage rises with the kernel's memory; the watchdog warns, interrupts, then kills."""

from __future__ import annotations

import asyncio
import time

from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

MiB = 1 << 20


async def started(client, vram, compute=10):
    return await start_remote_kernel(client, vram, compute)


async def lease_samples(watch, lease_id, count, after=0.0):
    """The next `count` samples of a lease taken after the time `after`."""
    samples = []
    async for update in watch:
        if update.time <= after:
            continue
        samples += [s for s in update.leases if s.lease_id == lease_id]
        if len(samples) >= count:
            return samples
    raise AssertionError("watch ended")


async def test_usage_rises_within_three_samples(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await started(client, vram=2048 * MiB)
        watch = client.watch(include_devices=True)
        try:
            before = (await asyncio.wait_for(lease_samples(watch, lease.id, 2), 20))[-1]
            assert before.vram_limit == 2048 * MiB
            assert before.mode == pb.ISOLATION_MODE_HOST
            assert kernel.id in before.kernel_ids
            result = await remote.execute("block = b'x' * (300 * 2**20)")
            assert result.status == "ok"
            after = await asyncio.wait_for(lease_samples(watch, lease.id, 3, after=time.time()), 20)
            assert max(s.vram_used for s in after) >= before.vram_used + 250 * MiB, (before, after)
            inv = await client.inventory()
            assert inv.leases[0].slices[0].vram_used >= 250 * MiB
        finally:
            await watch.aclose()
            await remote.close()
            await client.release(lease.id)


async def test_watchdog_warns_interrupts_then_kills(tf_worker_factory):
    worker = tf_worker_factory(["--host-vram", "4Gi", "--watchdog-grace", "1"]).start()
    async with worker.client() as client:
        lease, kernel, remote = await started(client, vram=200 * MiB)
        watch = client.watch(include_devices=False)
        kinds: list[int] = []
        try:
            # Ignore KeyboardInterrupt so the memory stays over the limit after the interrupt.
            await remote.send_execute(
                "import time\nblock = b'x' * (400 * 2**20)\n"
                "while True:\n    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        pass\n")

            async def collect():
                async for update in watch:
                    for event in update.events:
                        if event.lease_id == lease.id:
                            kinds.append(event.kind)
                            if event.kind == pb.EVENT_KIND_WATCHDOG_KILL:
                                return

            await asyncio.wait_for(collect(), 40)
        finally:
            await watch.aclose()
        assert kinds.index(pb.EVENT_KIND_LIMIT_WARNING) < kinds.index(pb.EVENT_KIND_WATCHDOG_INTERRUPT)
        assert kinds.index(pb.EVENT_KIND_WATCHDOG_INTERRUPT) < kinds.index(pb.EVENT_KIND_WATCHDOG_KILL)
        for _ in range(100):
            state = await client.kernel_state(kernel.id)
            if state.status == pb.KERNEL_STATUS_EXITED:
                break
            await asyncio.sleep(0.1)
        assert state.status == pb.KERNEL_STATUS_EXITED
        assert state.exit_code == -9
        await remote.close()
        await client.release(lease.id)
