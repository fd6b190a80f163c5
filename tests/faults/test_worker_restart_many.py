"""SIGKILL the worker while 10 kernels live and two of them print; restart it on the same port.

All 10 kernels are re-adopted, both printing kernels deliver every line exactly once, and every
lease is still there with its id and size.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb

KERNELS = 10
LINES = 600
GiB = 1 << 30

PRINTER = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(0.01)\n"


async def collect(remote: RemoteKernel, msg_id: str, lines: list[int], progress: asyncio.Event,
                  at_least: int) -> None:
    """Numbered lines of one execute request, until the kernel goes idle after it."""
    buf = ""
    while True:
        msg = await remote.iopub.get()
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            buf += msg["content"]["text"]
            *whole, buf = buf.split("\n")
            lines.extend(int(x) for x in whole if x)
            if len(lines) >= at_least:
                progress.set()
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            assert buf == ""
            return


async def test_sigkill_with_ten_kernels_readopts_all_and_loses_nothing(tf_worker_factory):
    worker = tf_worker_factory(["--host-vram", "16Gi"]).start()
    async with worker.client() as client:
        leases = [await client.allocate(vram=GiB, compute=5) for _ in range(KERNELS)]
        keys = [secrets.token_hex(16).encode() for _ in range(KERNELS)]
        kernels = await asyncio.gather(*(client.start_kernel(lease.id, key=key, timeout=90)
                                         for lease, key in zip(leases, keys, strict=True)))
        remotes = [RemoteKernel(client, k.id, key, reconnect_timeout=60) for k, key in zip(kernels, keys, strict=True)]
        try:
            for remote in remotes:
                await remote.connect(timeout=30)
            await asyncio.gather(*(r.wait_ready(timeout=90) for r in remotes))

            printers = remotes[:2]
            msg_ids = [await r.send_execute(PRINTER) for r in printers]
            lines: list[list[int]] = [[], []]
            progress = [asyncio.Event(), asyncio.Event()]
            readers = [asyncio.create_task(collect(r, m, out, ev, 100))
                       for r, m, out, ev in zip(printers, msg_ids, lines, progress, strict=True)]

            # Mid-stream: both printers are past line 100 (of 600, 10 ms apart: ~5 s left).
            await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in progress)), 60)
            worker.kill()
            killed_at = [len(x) for x in lines]
            await asyncio.sleep(1.5)  # the kernels keep printing into their nannies' buffers meanwhile
            assert worker.proc is not None and worker.proc.returncode == -9
            started = time.monotonic()
            worker.start()
            restart_s = time.monotonic() - started
            assert f"re-adopted {KERNELS} kernel(s)" in worker.log(), worker.log()[-3000:]

            await asyncio.wait_for(asyncio.gather(*readers), 90)
            for out, before in zip(lines, killed_at, strict=True):
                assert before < LINES, "the worker was killed after the output ended: not mid-stream"
                assert out == list(range(LINES))  # every line exactly once, in order
            for remote in printers:
                assert any(state == "disconnected" for state, _ in remote.states), remote.states
                assert any(state == "resumed" for state, _ in remote.states), remote.states
            for remote in remotes:
                assert sum(remote.channels.dropped.values()) == 0

            # Every kernel re-adopted and running.
            for k in kernels:
                assert (await client.kernel_state(k.id)).status == pb.KERNEL_STATUS_RUNNING

            # Leases intact: same ids, same sizes, each with its one kernel.
            after = {x.id: x for x in await client.list_leases()}
            assert set(after) == {x.id for x in leases}
            for before_lease, k in zip(leases, kernels, strict=True):
                lease = after[before_lease.id]
                assert [(s.vram, s.compute) for s in lease.slices] == [(GiB, 5)]
                assert [x.id for x in lease.kernels] == [k.id]
            inventory = await client.inventory()
            assert inventory.devices[0].vram_leased == KERNELS * GiB
            assert restart_s < 30

            # ... and each still executes a cell over the stream it had before the kill.
            results = await asyncio.gather(*(r.execute("1+1", timeout=20) for r in remotes), return_exceptions=True)
            answered = [not isinstance(r, BaseException) and r.data() == "2" for r in results]
            assert answered == [True] * KERNELS, f"kernels that did not answer 1+1: {answered}"
        finally:
            for remote in remotes:
                await remote.close()
        for lease in leases:
            await client.release(lease.id)
