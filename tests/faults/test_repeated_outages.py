"""Defect 10: short network outages spaced far apart must never add up to one long outage.

The client reaches the worker only through a TCP proxy. While a cell prints numbered lines, the
proxy cuts the network three times, each cut shorter than the client's `reconnect_timeout` and
each more than `reconnect_timeout` after the previous one. During each cut the client also sends a
cell that counts itself. The Channels stream resumes after every cut: every line arrives exactly
once, in order, each counting cell runs exactly once, and the kernel is still the same kernel
(its variables are still there). Before the fix the client measured the second cut from the
start of the first and gave up at once ("worker unreachable for 3 s").
"""

from __future__ import annotations

import asyncio
import secrets
import time

from tcp_proxy import TcpProxy

from tf_remoting.client import KernelClosed, RuntimeClient, Unavailable
from tf_remoting.client.session import RemoteKernel

RECONNECT_TIMEOUT = 3.0
CUT = 1.0  # seconds the proxy refuses connections; gRPC's own reconnect adds up to ~1 s more
SPACING = RECONNECT_TIMEOUT + 2.0  # from one restore to the next cut
CUTS = 3
LINES = 2000
PRINTER = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(0.01)\n"


async def test_three_short_outages_far_apart_lose_nothing(tf_worker):
    proxy = await TcpProxy(tf_worker.address).start()
    client = RuntimeClient(proxy.address, tf_worker.token)
    remote: RemoteKernel | None = None
    try:
        lease = await client.allocate(vram=1 << 30, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, kernel.id, key, reconnect_timeout=RECONNECT_TIMEOUT)
        await remote.connect()
        await remote.wait_ready(timeout=60)
        assert (await remote.execute("counted = 0")).status == "ok"

        msg_id = await remote.send_execute(PRINTER)
        lines: list[int] = []
        buf = ""
        idle = False

        async def collect() -> None:
            nonlocal buf, idle
            while True:
                msg = await remote.iopub.get()
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    buf += msg["content"]["text"]
                    *whole, buf = buf.split("\n")
                    lines.extend(int(x) for x in whole if x)
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                    return

        reader = asyncio.create_task(collect())
        deadline = time.monotonic() + 120
        outages: list[tuple[float, float]] = []
        try:
            while len(lines) < 100:  # the cell is printing
                assert time.monotonic() < deadline and not reader.done()
                await asyncio.sleep(0.05)
            for n in range(CUTS):
                if outages:
                    # well past reconnect_timeout since the last outage ended
                    await asyncio.sleep(max(0.0, outages[-1][1] + SPACING - time.monotonic()))
                assert not reader.done(), f"the cell ended before cut {n + 1}: make it print longer"
                assert remote.channels.reconnects == n, remote.states
                seen = len(lines)
                assert await proxy.cut() > 0
                cut_at = time.monotonic()
                await remote.send_execute("counted += 1")  # sent while the network is down
                await asyncio.sleep(CUT)
                proxy.restore()
                # Wait until the stream has really resumed (lines flow again) before the next cut.
                while remote.channels.reconnects == n or len(lines) <= seen:
                    assert time.monotonic() < deadline, remote.states
                    assert not remote.channels._closed, f"the client gave up after cut {n + 1}: {remote.states}"
                    await asyncio.sleep(0.05)
                outages.append((cut_at, time.monotonic()))
            await asyncio.wait_for(reader, max(1.0, deadline - time.monotonic()))
        finally:
            reader.cancel()
        assert idle
        assert proxy.refused > 0
        for start, end in outages:
            assert end - start < RECONNECT_TIMEOUT, outages  # each outage shorter than the limit
        for (_, end), (start, _) in zip(outages, outages[1:], strict=False):
            assert start - end > RECONNECT_TIMEOUT, outages  # and further apart than it

        assert lines == list(range(LINES)), f"{len(set(range(LINES)) - set(lines))} line(s) missing"
        assert remote.channels.reconnects == CUTS, remote.states
        assert remote.channels.dropped == {c: 0 for c in remote.channels.dropped}
        assert not any(state == "dropped" for state, _ in remote.states), remote.states
        # Each cell sent during a cut ran exactly once, in the same kernel.
        result = await remote.execute("counted", timeout=30)
        assert result.data() == str(CUTS), (result.data(), remote.states)
    except (Unavailable, KernelClosed) as exc:
        raise AssertionError(f"the client gave up: {exc}; states {remote.states if remote else None}") from exc
    finally:
        if remote is not None:
            await remote.close()
        await client.close()
        await proxy.close()
