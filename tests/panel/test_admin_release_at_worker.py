"""An admin's Release of another principal's lease, at the worker (issue 14's admin view): the
admin principal's own token may; a kernel token of the admin's own lease may not (PERMISSION_DENIED,
nothing lost), nor may another principal. The released lease's kernel ends and its owner's Watch
stream hears the release. Real worker, real kernels, real gRPC."""

from __future__ import annotations

import asyncio
import secrets

import psutil
import pytest

from tf_remoting.client import PermissionDenied, RuntimeClient
from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

MiB = 1 << 20
TIMEOUT = 60.0

pytestmark = pytest.mark.timeout(180)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_only_an_admins_own_token_releases_anothers_lease(tf_worker_factory: type[WorkerProcess]) -> None:
    worker = tf_worker_factory(["--host-vram", "2Gi", "--admin-principals", "admin", "--sample-interval", "0.5"])
    admin_token = secrets.token_urlsafe(24)
    worker.token_file.write_text(f"alice {worker.token}\nbob {worker.other_token}\nadmin {admin_token}\n")
    worker.start()
    async with worker.client(worker.other_token) as bob, worker.client(admin_token) as admin, \
            worker.client() as alice:
        b_lease, b_kernel, b_remote = await start_remote_kernel(bob, 256 * MiB, 5)
        a_lease, _, a_remote = await start_remote_kernel(admin, 256 * MiB, 5)
        try:
            result = await a_remote.execute("import os; print(os.environ['TF_VGPU_TOKEN'], end='')")
            kernel_token = result.stdout()
            assert len(kernel_token) >= 32
            async with RuntimeClient(worker.address, kernel_token, timeout=TIMEOUT) as scoped:
                with pytest.raises(PermissionDenied):
                    await scoped.release(b_lease.id)
            with pytest.raises(PermissionDenied):
                await alice.release(b_lease.id)
            assert [x.id for x in await bob.list_leases()] == [b_lease.id]  # nothing lost
            assert (await bob.kernel_state(b_kernel.id)).status == pb.KERNEL_STATUS_RUNNING

            heard: asyncio.Queue[pb.Event] = asyncio.Queue()

            async def listen() -> None:
                async for update in bob.watch(include_devices=False):
                    for e in update.events:
                        heard.put_nowait(e)

            listener = asyncio.create_task(listen())
            try:
                await asyncio.sleep(0.5)  # the stream is open (its first sample is at most this late)
                assert await admin.release(b_lease.id) is True
                assert await bob.list_leases() == []

                async def released() -> pb.Event:
                    while True:
                        e = await heard.get()
                        if e.kind == pb.EVENT_KIND_LEASE_RELEASED and e.lease_id == b_lease.id:
                            return e

                event = await asyncio.wait_for(released(), TIMEOUT)
                assert "released by admin" in event.message, event
            finally:
                listener.cancel()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            assert b_kernel.pid > 0
            while running(b_kernel.pid):
                assert asyncio.get_running_loop().time() < deadline, "bob's kernel still runs"
                await asyncio.sleep(0.2)
            assert [x.id for x in await admin.list_leases()] == [a_lease.id]  # the admin's own is untouched
        finally:
            await b_remote.close()
            await a_remote.close()
