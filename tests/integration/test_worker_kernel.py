"""A kernel's whole life through the worker: lease, start, execute, interrupt, release."""

from __future__ import annotations

import asyncio

import pytest

from tf_remoting.client import ResourceExhausted
from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

GiB = 1 << 30


async def start_kernel(client, vram=GiB, compute=10):
    return await start_remote_kernel(client, vram, compute)


async def test_execute_interrupt_release(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client)
        try:
            result = await remote.execute("1+1")
            assert result.status == "ok"
            assert result.data() == "2"

            # A long cell, interrupted through the Signal RPC.
            msg_id = await remote.send_execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            await client.interrupt(kernel.id)
            reply = None
            while reply is None:
                msg = await asyncio.wait_for(remote.iopub.get(), 20)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "error":
                    reply = msg
            assert reply["content"]["ename"] == "KeyboardInterrupt"

            # The kernel still works after the interrupt. (ipykernel aborts requests that reach it
            # before it has finished handling the error, `stop_on_error`: then the cell is sent again.)
            for _ in range(5):
                after = await remote.execute("2*21")
                if after.status != "aborted":
                    break
                await asyncio.sleep(0.2)
            assert after.data() == "42", after.reply
        finally:
            await remote.close()

        inv = await client.inventory()
        assert inv.devices[0].vram_leased == GiB
        assert await client.release(lease.id) is True
        assert await client.release(lease.id) is False  # idempotent
        inv = await client.inventory()
        assert inv.devices[0].vram_leased == 0
        assert inv.devices[0].kind == pb.DEVICE_KIND_HOST
        # The slice is free again: the whole device can be leased.
        whole = await client.allocate(vram=4 * GiB, compute=100)
        with pytest.raises(ResourceExhausted, match="largest free"):
            await client.allocate(vram=GiB, compute=10)
        await client.release(whole.id)


async def test_vgpu_status_magic_inside_kernel(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client, vram=GiB, compute=25)
        try:
            result = await remote.execute("%vgpu status")
            assert result.status == "ok", result.reply
            text = result.data()
            assert "host device (no GPU)" in text
            assert "1 GiB VRAM, 25 % compute" in text
            assert lease.id in text
            assert "<table" in result.data("text/html")
            bad = await remote.execute("%vgpu frobnicate")
            assert bad.status == "error"
            assert "unknown %vgpu command" in bad.reply["content"]["evalue"]
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_a_lease_released_while_its_kernel_starts_leaves_no_kernel(tf_worker):
    """Release racing StartKernel: the release used to stop the lease's kernels before the new one
    was running, which then ran on outside every lease (its VRAM counted nowhere). Now either the
    start fails with NotFound or the release stops the kernel; no kernel process is left."""
    import psutil

    from tf_remoting.client import NotFound

    async with tf_worker.client() as client:
        for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
            lease = await client.allocate(vram=GiB, compute=10)
            starting = asyncio.create_task(client.start_kernel(lease.id, key=b"k"))
            await asyncio.sleep(delay)
            assert await client.release(lease.id) is True
            try:
                await starting
            except NotFound as exc:
                assert "ended" in exc.message or "released" in exc.message, exc.message
        worker = psutil.Process(tf_worker.proc.pid)
        for _ in range(150):  # stopped nannies exit within a few seconds (bounded: 15 s)
            left = [p for p in worker.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
            if not left:
                break
            await asyncio.sleep(0.1)
        assert not left, [(p.pid, p.cmdline()) for p in left]
        assert (await client.inventory()).devices[0].vram_leased == 0
