"""Defect 6: while another process holds the ledger's lock, kernels' channels keep relaying.

Ledger calls block (SQLite waits up to its busy timeout for the lock); they used to run on the
worker's event loop, so one Renew waiting for the lock stalled every kernel's relay. They now run
on the ledger's own thread.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time

from tf_remoting.client.session import RemoteKernel

HOLD_SECONDS = 4.0

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


async def test_channels_relay_while_another_process_holds_the_ledger(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, ttl_seconds=60)
        key = secrets.token_hex(16).encode()
        k = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, k.id, key)
        await remote.connect()
        try:
            await remote.wait_ready(timeout=60)
            assert (await remote.execute("1+1")).data() == "2"

            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(tf_worker.state_dir / "ledger.sqlite3"), str(HOLD_SECONDS)],
                stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "locked"
                locked_at = time.monotonic()
                renew = asyncio.create_task(client.renew(lease.id))  # a write: waits for the lock
                await asyncio.sleep(0.3)  # it has reached the worker
                slowest = 0.0
                for i in range(5):
                    began = time.monotonic()
                    result = await remote.execute(f"{i} * 10", timeout=HOLD_SECONDS + 10)
                    slowest = max(slowest, time.monotonic() - began)
                    assert result.data() == str(i * 10)
                still_locked = holder.poll() is None
                assert still_locked, "the round trips only finished after the lock was released"
                assert time.monotonic() - locked_at < HOLD_SECONDS
                assert slowest < 1.0, f"an execute round trip took {slowest:.1f} s while the ledger was locked"
                assert not renew.done()  # it really waited for the lock
                renewed = await asyncio.wait_for(renew, 40)  # and succeeds once the lock is gone
                assert renewed.id == lease.id
            finally:
                holder.kill()
                holder.wait(10)
                if holder.stdout is not None:
                    holder.stdout.close()
        finally:
            await remote.close()
            await client.release(lease.id)
