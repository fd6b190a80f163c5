"""A lease's idle time (Lease.last_active, the admin view's idle list) counts a running cell as
activity, also one that leaves the device idle (a cell on the CPU, or waiting): the nanny follows
the kernel's busy/idle status about cells (DIR/activity.json) and the worker's tick reads it.

Real worker, real kernel, real messages; and the parsing of real Jupyter wire frames on its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from jupyter_client.session import Session

from tf_remoting.client import RuntimeClient
from tf_remoting.pytest_plugin import WorkerProcess, python_open_to_tenants, ready_kernel, tenant_worker
from tf_remoting.worker.nanny_state import execution_state, read_activity, write_activity

TIMEOUT = 30.0


def iopub_parts(msg_type: str, content: dict[str, object], parent_type: str) -> list[bytes]:
    session = Session(key=b"k")
    parent = session.msg(parent_type, {})
    msg = session.msg(msg_type, content, parent=parent)
    return [b"kernel.x.status", *session.serialize(msg)]


def test_execution_state_of_real_wire_frames(tmp_path: Path) -> None:
    assert execution_state(iopub_parts("status", {"execution_state": "busy"}, "execute_request")) == "busy"
    assert execution_state(iopub_parts("status", {"execution_state": "idle"}, "execute_request")) == "idle"
    # the status about other requests (kernel_info, comm messages) is no cell running
    assert execution_state(iopub_parts("status", {"execution_state": "busy"}, "kernel_info_request")) is None
    assert execution_state(iopub_parts("stream", {"name": "stdout", "text": '"status"'}, "execute_request")) is None
    assert execution_state(iopub_parts("status", {"execution_state": "starting"}, "execute_request")) is None
    assert execution_state([b"no delimiter", b"{}"]) is None
    broken = iopub_parts("status", {"execution_state": "busy"}, "execute_request")
    broken[-1] = b"{not json"
    assert execution_state(broken) is None

    assert read_activity(tmp_path) is None
    write_activity(tmp_path, True)
    busy, since = read_activity(tmp_path) or (False, 0.0)
    assert busy and abs(since - time.time()) < 60
    (tmp_path / "activity.json").write_text("[]")
    assert read_activity(tmp_path) is None


@pytest.mark.timeout(180)
async def test_a_running_cell_keeps_its_lease_active(tf_worker_factory: type[WorkerProcess]) -> None:
    await cell_keeps_lease_active(tf_worker_factory(["--host-vram", "2Gi", "--sample-interval", "0.2"]).start())


@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="tenant uids need root")
async def test_a_running_cell_keeps_its_lease_active_with_tenant_uids() -> None:
    """The nanny runs as the tenant: it writes activity.json in its kernel's directory, the worker
    reads it as a file of the tenant's."""
    with python_open_to_tenants():
        worker = tenant_worker(["--tenant-uids", "20400-20409", "--no-shares-filesystem",
                                "--sample-interval", "0.2"]).start()
        try:
            await cell_keeps_lease_active(worker)
        finally:
            worker.cleanup()


async def cell_keeps_lease_active(worker: WorkerProcess) -> None:
    async with RuntimeClient(worker.address, worker.token) as client:
        lease = await client.allocate(vram=256 << 20, compute=10, ttl_seconds=600)

        async def last_active() -> float:
            [held] = [x for x in await client.list_leases() if x.id == lease.id]
            return held.last_active

        async def idle_for(seconds: float) -> None:
            deadline = time.monotonic() + TIMEOUT
            while time.time() - await last_active() < seconds:
                assert time.monotonic() < deadline, f"the lease never looked idle for {seconds} s"
                await asyncio.sleep(0.2)

        async with ready_kernel(client, lease.id) as remote:
            await idle_for(1.5)  # the kernel's start is over
            began = time.time()
            cell = asyncio.create_task(remote.execute("import time; time.sleep(6)", timeout=TIMEOUT))
            # while the cell sleeps (the device idle), the lease stays active
            deadline = time.monotonic() + TIMEOUT
            while await last_active() < began + 2.0:
                assert not cell.done(), "the cell ended and the lease was never active while it ran"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            result = await cell
            assert result.status == "ok", result.reply
            # after the cell the lease is idle again, from about when the cell ended
            await idle_for(1.0)
            assert await last_active() >= began + 5.0
