"""A tenant's kernel cannot leave processes running outside every kernel's accounting.

With tenant uids the nanny runs as the tenant, so the tenant's kernel may kill its own nanny (same
uid). Its processes then lose the subreaper that counts and ends them: they would run on, holding
memory (or a GPU) outside any slice, after the kernel and its lease are gone. The worker ends any
process of a tenant uid that no live kernel of that tenant accounts for.

Root only (a real worker with --tenant-uids, a real kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from tf_remoting.client import RuntimeClient
from tf_remoting.pytest_plugin import python_open_to_tenants, ready_kernel, tenant_worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tenant uids need a worker run as root")

ESCAPE = r'''
import os, signal, time
r, w = os.pipe()
if os.fork() == 0:            # double fork and a new session: the escapee is nobody's child here
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode()); os.close(w)
        while True:
            time.sleep(1)
    os._exit(0)
os.close(w)
escapee = int(os.read(r, 32))
print(escapee, flush=True)
'''


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# A range of its own: a worker ends processes of its range that none of its own nannies accounts for.
RANGE = "20300-20399"


async def test_processes_of_a_kernel_that_killed_its_nanny_are_ended() -> None:
    with python_open_to_tenants():
        await _kernel_that_kills_its_nanny()


async def _kernel_that_kills_its_nanny() -> None:
    worker = tenant_worker(["--tenant-uids", RANGE, "--no-shares-filesystem", "--sample-interval", "0.2"]).start()
    try:
        async with RuntimeClient(worker.address, worker.token) as client:
            lease = await client.allocate(vram=64 << 20, compute=5, ttl_seconds=3600)
            async with ready_kernel(client, lease.id) as remote:
                result = await remote.execute(ESCAPE, timeout=60)
                assert result.status == "ok", result.reply
                escapee = int(result.stdout().split()[0])
                assert alive(escapee)
                # The kernel kills its own nanny (same uid): allowed, and the kernel goes with it.
                with contextlib.suppress(TimeoutError):
                    await remote.execute("import os, signal; os.kill(os.getppid(), signal.SIGKILL)", timeout=10)
            deadline = time.monotonic() + 20
            while alive(escapee) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not alive(escapee), f"process {escapee} of the tenant outlived its kernel's nanny"
            assert "outside every kernel" in worker.log(), worker.log()[-3000:]
            # A second kernel of the same tenant, started afterwards, is left alone.
            async with ready_kernel(client, lease.id) as remote:
                await asyncio.sleep(3.0)  # past a sweep (every 2 s)
                result = await remote.execute("print(1)", timeout=30)
                assert result.status == "ok" and result.stdout().strip() == "1"
    finally:
        worker.cleanup()
