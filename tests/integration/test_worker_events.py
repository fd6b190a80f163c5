"""Watch: device samples of the host device, and the events a kernel's exit and a restart send."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

GiB = 1 << 30


async def next_matching(watch: AsyncIterator[pb.WatchResponse], accept, timeout: float = 30.0):
    """The first Watch update for which accept(update) is true (within timeout seconds)."""
    async def scan():
        async for update in watch:
            if accept(update):
                return update
        raise AssertionError("watch ended")

    return await asyncio.wait_for(scan(), timeout)


async def next_event(watch: AsyncIterator[pb.WatchResponse], kind: int, timeout: float = 30.0, **fields):
    """The first event of `kind` whose fields equal `fields` (e.g. kernel_id=...)."""
    def match(e: pb.Event) -> bool:
        return e.kind == kind and all(getattr(e, k) == v for k, v in fields.items())

    update = await next_matching(watch, lambda u: any(match(e) for e in u.events), timeout)
    return next(e for e in update.events if match(e))


async def test_watch_streams_host_device_samples(tf_worker):
    async with tf_worker.client() as client:
        inv = await client.inventory()
        host = inv.devices[0]
        assert host.kind == pb.DEVICE_KIND_HOST
        watch = client.watch(include_devices=True)
        try:
            first = await next_matching(watch, lambda u: len(u.devices) > 0)
            [sample] = first.devices
            assert sample.device_uuid == host.uuid
            assert sample.vram_total == 4 * GiB == host.vram_total  # --host-vram 4Gi
            assert sample.vram_used > 0  # the host's RAM in use
            assert sample.vram_leased == 0

            lease = await client.allocate(vram=GiB, compute=10)
            leased = await next_matching(
                watch, lambda u: any(d.vram_leased == GiB for d in u.devices))
            assert leased.devices[0].compute_leased == 10
            await client.release(lease.id)
            await next_matching(watch, lambda u: any(d.vram_leased == 0 for d in u.devices))
        finally:
            await watch.aclose()

        quiet = client.watch(include_devices=False)
        try:
            lease = await client.allocate(vram=GiB, compute=10)
            # Lease samples keep coming; device samples are left out when not asked for.
            for _ in range(3):
                update = await next_matching(quiet, lambda u: len(u.leases) > 0)
                assert len(update.devices) == 0
            await client.release(lease.id)
        finally:
            await quiet.aclose()


async def test_kernel_that_exits_by_itself_sends_kernel_exited(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, vram=GiB, compute=10)
        watch = client.watch(include_devices=False)
        try:
            await next_matching(watch, lambda u: True)  # subscribed before the kernel exits
            await remote.send_execute("import os; os._exit(3)")
            event = await next_event(watch, pb.EVENT_KIND_KERNEL_EXITED, kernel_id=kernel.id)
        finally:
            await watch.aclose()
            await remote.close()
        assert event.lease_id == lease.id and event.principal == "alice"
        assert "exited with code 3" in event.message
        state = await client.kernel_state(kernel.id)
        assert state.status == pb.KERNEL_STATUS_EXITED
        assert state.exit_code == 3
        await client.release(lease.id)


async def test_worker_started_event_after_a_restart_says_it_readopted(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=GiB, compute=10)
        kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode())
        tf_worker.kill()
        tf_worker.start()
        assert "re-adopted 1 kernel" in tf_worker.log()
        # A Watch opened after the restart (a client reconnecting) learns that the worker restarted.
        watch = client.watch(include_devices=False)
        try:
            event = await next_event(watch, pb.EVENT_KIND_WORKER_STARTED)
        finally:
            await watch.aclose()
        inv = await client.inventory()
        assert event.message == f"worker {inv.worker_id} started; re-adopted 1 kernel(s)"
        assert (await client.kernel_state(kernel.id)).status == pb.KERNEL_STATUS_RUNNING
        await client.release(lease.id)
