"""The defects of issue 12 (point 4), over real gRPC on 127.0.0.1:

- an exclusive lease refuses Resize (and no other principal's slice lands on its device);
- a whole-device request gets the smallest untouched device that fits;
- Resize carries only the dimensions asked: concurrent resizes of different dimensions both stick,
  also between the Jupyter side (REST) and the kernel (`%vgpu resize`).

Exclusive leases need GPUs: this machine has no NVIDIA driver, so the first two use a real Worker
(real ledger, real waiting line, the real gRPC server of worker/server.py and its interceptor, in
this process) whose GPUs come from the FAKE NVML of tests/fakes/fake_pynvml.py. The others use a
real worker process on the host device, real Jupyter servers and real kernels.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import pytest

from tf_jupyter.placement import Request
from tf_jupyter.pool.scheduling import wire_request
from tf_jupyter.pool.workers import WorkerState
from tf_remoting.client import FailedPrecondition
from tf_remoting.proto import pb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
from fake_gpu_worker import SIZES, GpuWorker  # noqa: E402  (gpu_worker: the fixture, from conftest.py)

GiB = 1 << 30


def device_size(inventory: pb.Inventory, uuid: str) -> int:
    return next(d.vram_total for d in inventory.devices if d.uuid == uuid) // GiB


async def test_an_exclusive_lease_refuses_resize_and_keeps_its_device(gpu_worker: GpuWorker) -> None:
    async with gpu_worker.client(gpu_worker.alice) as alice, gpu_worker.client(gpu_worker.bob) as bob:
        whole = await alice.allocate(0, 100, mode=pb.ISOLATION_MODE_EXCLUSIVE)
        [held] = whole.slices
        for asked in ({"vram": GiB}, {"compute": 10}, {"vram": GiB, "compute": 10}):
            with pytest.raises(FailedPrecondition) as err:
                await alice.resize(whole.id, **asked)
            assert "is exclusive: it holds whole devices and cannot be resized" in err.value.message
        [after] = (await alice.list_leases())
        assert (after.slices[0].vram, after.slices[0].compute) == (held.vram, held.compute)
        # the device stays whole: other principals' slices go elsewhere, however many
        slices = [await bob.allocate(8 * GiB, 10) for _ in range(8)]
        assert all(s.slices[0].device_uuid != held.device_uuid for s in slices)
        # a soft slice still resizes
        shrunk = await bob.resize(slices[0].id, vram=7 * GiB)
        assert (shrunk.slices[0].vram, shrunk.slices[0].compute) == (7 * GiB, 10)


async def test_vgpu_resize_in_an_exclusive_kernel_says_why(gpu_worker: GpuWorker) -> None:
    """A real kernel in an exclusive lease (fake GPUs): `%vgpu resize` answers with the worker's
    sentence as a one-line UsageError, and the slice stays as it was."""
    from tf_remoting.client.session import RemoteKernel

    async with gpu_worker.client(gpu_worker.alice) as alice:
        whole = await alice.allocate(0, 100, mode=pb.ISOLATION_MODE_EXCLUSIVE)
        key = secrets.token_hex(16).encode()
        kernel = await alice.start_kernel(whole.id, key=key)
        remote = RemoteKernel(alice, kernel.id, key)
        try:
            await remote.connect()
            await remote.wait_ready(timeout=60)
            result = await remote.execute("%vgpu resize --vram 1Gi")
            assert result.status == "error" and result.reply["content"]["ename"] == "UsageError", result.reply
            message = result.reply["content"]["evalue"]
            assert message == (f"%vgpu resize: lease {whole.id} is exclusive: it holds whole devices and cannot be "
                               "resized; release it and allocate the slice you need")
            [after] = await alice.list_leases()
            assert after.slices[0].vram == whole.slices[0].vram
        finally:
            await remote.close()
            supervisor = gpu_worker.worker.supervisor
            supervisor.stop(kernel.id)
            for _ in range(300):  # the nanny is this process's child: reap it (at most 30 s)
                supervisor.reap()
                if not supervisor._children:
                    break
                await asyncio.sleep(0.1)


async def test_a_whole_device_request_gets_the_smallest_untouched_device(gpu_worker: GpuWorker) -> None:
    async with gpu_worker.client(gpu_worker.alice) as alice:
        inventory = await alice.inventory()
        state = WorkerState(gpu_worker.address, alice, inventory=inventory, up=True)
        sizes = []
        for _ in range(len(SIZES)):
            vram, compute, mode = wire_request(Request(0, 100, whole_device=True), state)
            lease = await alice.allocate(vram, compute, mode=mode)
            sizes.append(device_size(inventory, lease.slices[0].device_uuid))
            state.inventory = await alice.inventory()
        assert sizes == [40, 48, 80, 80]
        # at least 60 GiB: the smallest untouched device that is that large
        for lease in await alice.list_leases():
            await alice.release(lease.id)
        state.inventory = await alice.inventory()
        vram, compute, mode = wire_request(Request(60 * GiB, 100, whole_device=True), state)
        lease = await alice.allocate(vram, compute, mode=mode)
        assert device_size(inventory, lease.slices[0].device_uuid) == 80


async def test_concurrent_resizes_of_different_dimensions_both_stick(tf_worker) -> None:  # type: ignore[no-untyped-def]
    async with tf_worker.client() as one, tf_worker.client() as two:
        lease = await one.allocate(GiB, 10)
        for i in range(1, 11):
            vram, compute = (1 + i % 3) * GiB // 2, 10 + i
            await asyncio.gather(one.resize(lease.id, vram=vram), two.resize(lease.id, compute=compute))
            [now] = await one.list_leases()
            assert (now.slices[0].vram, now.slices[0].compute) == (vram, compute), f"round {i}"


async def test_rest_resize_does_not_undo_a_kernels_vgpu_resize(tf_worker, jupyter_server_factory) -> None:  # type: ignore[no-untyped-def]
    """The server's cached view of a lease is stale right after the kernel resized itself: a PATCH of
    VRAM alone must not write the cached compute back."""
    from tf_jupyter.pytest_plugin import KernelWebSocket, text_of

    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, session = await server.request("POST", "/api/sessions", {
        "path": "r.ipynb", "type": "notebook", "name": "r.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, server.log()
    kernel_id = session["kernel"]["id"]
    ws = await KernelWebSocket.connect(server, kernel_id)
    try:
        out = text_of(await ws.execute("%vgpu resize --compute 30"))
        assert "compute 10 % -> 30 %" in out, out
        status, body = await server.request("PATCH", f"/tf-vgpu/api/kernels/{kernel_id}", {"vram": "2Gi"})
        assert status == 200, body
        async with tf_worker.client() as client:
            [lease] = await client.list_leases()
        assert (lease.slices[0].vram, lease.slices[0].compute) == (2 * GiB, 30)
    finally:
        ws.close()
        await server.request("DELETE", f"/api/sessions/{session['id']}")


async def test_pool_resize_never_writes_back_its_cached_value(tf_worker) -> None:  # type: ignore[no-untyped-def]
    """Deterministically stale: the pool's view (no Watch) still says 10 % when the kernel's side
    resized to 30 %; Pool.resize of VRAM alone must leave 30 %."""
    from tf_jupyter.pool.events import Events
    from tf_jupyter.pool.scheduling import Scheduler
    from tf_jupyter.pool.workers import Workers

    workers = Workers([tf_worker.address], tf_worker.token)
    await workers.start(watch=False)
    try:
        scheduler = Scheduler(workers, Events())
        async with tf_worker.client() as other:
            lease = await other.allocate(GiB, 10)
            await workers.refresh(force=True)
            await other.resize(lease.id, compute=30)  # e.g. %vgpu resize in the kernel
            assert workers.lease(tf_worker.address, lease.id).slices[0].compute == 10  # the stale view
            await scheduler.resize(tf_worker.address, lease.id, 2 * GiB, None)
            [now] = await other.list_leases()
            assert (now.slices[0].vram, now.slices[0].compute) == (2 * GiB, 30)
    finally:
        await workers.stop()
