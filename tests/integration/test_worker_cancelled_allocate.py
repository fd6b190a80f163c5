"""An Allocate whose caller is gone before its lease comes back leaves nothing held.

Seen twice in CI: the pool was one kernel's slice short, held by a lease that nobody had (it
would have gone only at its TTL). One way there: the worker grants a lease to an Allocate that
was cancelled meanwhile (the caller's deadline passed, it cancelled, or its connection broke);
the reply goes nowhere, and nobody renews or releases that lease. To make that moment long
enough to test, another process holds the ledger's lock: the worker's Allocate waits for it, the
caller gives up, then the lock goes and the worker carries on with a call nobody waits for.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tf_jupyter.pytest_plugin import wait_until
from tf_remoting.client.runtime import DeadlineExceeded
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 1 << 30

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("full, wait", [(False, False), (False, True), (True, True)],
                         ids=["granted-now", "granted-now-with-wait", "kept-a-place"])
async def test_an_allocate_cancelled_while_the_worker_works_on_it_holds_nothing(
        tf_worker: WorkerProcess, full: bool, wait: bool) -> None:
    async with tf_worker.client() as alice, tf_worker.client(tf_worker.other_token) as bob:
        filler = await bob.allocate(4 * GiB, 10) if full else None  # the worker is full: alice's request waits
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tf_worker.state_dir / "ledger.sqlite3")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "locked"
            request = pb.AllocateRequest(slice=pb.SliceRequest(vram=GiB, compute=10), ttl_seconds=3600, wait=wait,
                                         wait_seconds=60.0 if wait else 0.0, request_id="req-gone-caller",
                                         labels={"notebook": "gone.ipynb"})
            with pytest.raises(DeadlineExceeded):  # the worker is stuck on the lock: alice gives up
                await alice._call(alice.stub.Allocate, request, timeout=1.0)
            await asyncio.sleep(0.5)  # the worker has seen the cancellation
        finally:
            holder.communicate("\n", timeout=20)  # the lock goes: the worker's Allocate carries on
        if filler is not None:
            await bob.release(filler.id)  # room again: a place still kept would be granted now

        async def nothing_held() -> bool:
            return not await alice.list_leases() and not [e for e in (await alice.inventory()).waiting if e.own]

        try:
            await wait_until(nothing_held, 20)
        except AssertionError:
            held = f"alice still holds a lease or a place in the line:\n{tf_worker.log()[-3000:]}"
            raise AssertionError(held) from None
        await asyncio.sleep(1.0)  # and it stays so (a late pass of the line grants nothing to her)
        assert await nothing_held(), tf_worker.log()[-3000:]
        # The room is bob's at once, not after the TTL of a lease nobody holds.
        whole = await bob.allocate(4 * GiB, 100)
        await bob.release(whole.id)
