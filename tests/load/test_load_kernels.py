"""Load: 50 concurrent vGPU kernels on the host device from one Jupyter server, each running cells for 60 s.

Every kernel is a notebook session (POST /api/sessions) on a small custom profile (256 MiB, 1 %),
started five at a time. Then all 50 execute `print(i)` in a loop for 60 s through the server's
kernel WebSockets (browser → server → launcher → worker → nanny → kernel and back). Every reply
must be ok with the right execution count, and for every request the iopub stream must carry
exactly one busy, one execute_input, one idle, and stream output that reads the right number
once: nothing lost,
nothing twice. The worker's CPU share and peak RSS are measured with psutil and printed (only
generous sanity bounds are asserted). At the end every session is deleted and no lease is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from typing import Any

import psutil
import pytest

from tf_jupyter.pool.kernels import KERNEL_LABEL
from tf_jupyter.profiles import Profile, kernelspec
from tf_jupyter.pytest_plugin import KernelWebSocket, text_of

MiB = 1 << 20
GiB = 1 << 30
KERNELS = 50
START_CONCURRENCY = 5
LOOP_SECONDS = 60.0


class Usage:
    """psutil samples of one process at ~1 Hz: CPU time per phase and peak RSS."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.rss_peak = 0
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, rss)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> tuple[float, float]:
        with self.proc.oneshot():
            cpu = self.proc.cpu_times()
            rss = self.proc.memory_info().rss
        now = time.monotonic()
        self.rss_peak = max(self.rss_peak, rss)
        self.samples.append((now, cpu.user + cpu.system, rss))
        return now, cpu.user + cpu.system

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


async def loop_cells(ws: KernelWebSocket, until: float) -> list[tuple[str, int]]:
    """Execute print(i) until `until`; returns (msg_id, i) of every request, each checked on the way."""
    sent: list[tuple[str, int]] = []
    i = 0
    first_count = None
    while time.monotonic() < until:
        result = await ws.execute(f"print({i})", timeout=60)
        reply = result["reply"]
        msg_id = reply["parent_header"]["msg_id"]
        assert reply["content"]["status"] == "ok", reply["content"]
        count = reply["content"]["execution_count"]
        if first_count is None:
            first_count = count - i
        assert count == first_count + i, (count, first_count, i)
        # ipykernel may publish "i" and "\n" as two stream messages (its flush timer fires between the writes).
        streams = [m["content"]["text"] for m in result["outputs"] if m["msg_type"] == "stream"]
        assert "".join(streams) == f"{i}\n", (i, streams)
        sent.append((msg_id, i))
        i += 1
    return sent


async def drain(ws: KernelWebSocket, quiet: float = 1.0) -> None:
    """Receive until nothing arrives for `quiet` seconds (late iopub would be counted below)."""
    with contextlib.suppress(TimeoutError):
        while True:
            await ws.recv(timeout=quiet)


def check_exactly_once(ws: KernelWebSocket, sent: list[tuple[str, int]], earlier: set[str]) -> None:
    """Per request: one execute_reply; on iopub one busy, one execute_input, stream text 'i\\n', one idle."""
    ours = {msg_id: i for msg_id, i in sent}
    per: dict[str, Counter[str]] = {msg_id: Counter() for msg_id in ours}
    texts: dict[str, list[str]] = {msg_id: [] for msg_id in ours}
    for msg in ws.messages:
        parent = msg.get("parent_header", {}).get("msg_id")
        if parent not in ours:
            assert msg["msg_type"] != "stream" or parent in earlier, f"stream output of a request not ours: {msg}"
            continue
        kind = msg["msg_type"]
        if kind == "status":
            kind = f"status:{msg['content']['execution_state']}"
        per[parent][f"{msg['channel']}:{kind}"] += 1
        if msg["msg_type"] == "stream":
            texts[parent].append(msg["content"]["text"])
    expected = Counter({"shell:execute_reply": 1, "iopub:status:busy": 1, "iopub:execute_input": 1,
                        "iopub:status:idle": 1})
    for msg_id, i in ours.items():
        streams = per[msg_id].pop("iopub:stream", 0)
        assert per[msg_id] == expected, (i, per[msg_id])
        assert streams == len(texts[msg_id]) >= 1 and "".join(texts[msg_id]) == f"{i}\n", (i, texts[msg_id])


@pytest.mark.timeout(480)
async def test_50_kernels_execute_for_60s_nothing_lost(tf_worker_factory, jupyter_server_factory):
    worker = tf_worker_factory(["--host-vram", "16Gi", "--sample-interval", "1"]).start()
    assert worker.proc is not None
    server = jupyter_server_factory(workers=[worker], settings={"queue_timeout": 120.0})
    spec_dir = server.root / "data" / "kernels" / "vgpu-tiny"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(Profile("tiny", vram=256 * MiB, compute=1))))
    server.start()
    assert server.proc is not None

    usage = Usage(worker.proc.pid)
    server_usage = Usage(server.proc.pid)
    usage.start()
    server_usage.start()
    sessions: list[dict[str, Any]] = []
    sockets: list[KernelWebSocket] = []
    earlier: dict[int, set[str]] = {}
    try:
        # ---- start 50 sessions, five at a time
        started = time.monotonic()
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start_one(n: int) -> dict[str, Any]:
            async with gate:
                status, s = await server.request("POST", "/api/sessions", {
                    "path": f"load-{n}.ipynb", "type": "notebook", "name": f"load-{n}.ipynb",
                    "kernel": {"name": "vgpu-tiny"}}, timeout=180)
                assert status == 201, (status, s, server.log()[-3000:])
                sessions.append(s)
                try:
                    sockets.append(ws := await KernelWebSocket.connect(server, s["kernel"]["id"]))
                    first = await ws.execute("import os; print(os.environ.get('TF_VGPU_LEASE_ID', 'none'))",
                                             timeout=120)
                except (TimeoutError, ConnectionError) as exc:
                    kid = s["kernel"]["id"]
                    async with worker.client() as client:
                        mine = [k for lease in await client.list_leases() for k in lease.kernels
                                if lease.labels.get(KERNEL_LABEL) == kid]
                    logs = {k.id: (str(k).replace("\n", " "),
                                   {f.name: f.read_text(errors="replace")[-1500:]
                                    for f in (worker.state_dir / "kernels" / k.id).glob("*.log")})
                            for k in mine}
                    raise AssertionError(f"kernel {kid}: no kernel_info or first-cell reply in 120 s ({exc!r})\n"
                                         f"kernel dirs: {logs}\nserver log on this kernel:\n"
                                         f"{chr(10).join(x for x in server.log().splitlines() if kid in x)[-6000:]}\n"
                                         f"server log:\n{server.log()[-6000:]}\n"
                                         f"worker log:\n{worker.log()[-4000:]}") from None
                assert first["reply"]["content"]["status"] == "ok", first["reply"]["content"]
                assert text_of(first).startswith("lease-"), first
                earlier[id(ws)] = {first["reply"]["parent_header"]["msg_id"]}
                return s

        async with asyncio.TaskGroup() as starts:  # one start failing cancels the others (nothing left running)
            for n in range(KERNELS):
                starts.create_task(start_one(n))
        start_s = time.monotonic() - started
        assert len({s["kernel"]["id"] for s in sessions}) == KERNELS
        async with worker.client() as client:
            inv = await client.inventory()
        assert len(inv.leases) == KERNELS
        assert inv.devices[0].vram_leased == KERNELS * 256 * MiB
        assert inv.devices[0].compute_leased == KERNELS
        nanny_pids = [int(st["nanny_pid"]) for st in worker.kernel_states().values() if st.get("nanny_pid")]
        kernel_pids = [int(st["kernel_pid"]) for st in worker.kernel_states().values() if st.get("kernel_pid")]

        # ---- all 50 loop for 60 s
        t0, cpu0 = usage.sample()
        s_t0, s_cpu0 = server_usage.sample()
        until = time.monotonic() + LOOP_SECONDS
        sent = await asyncio.wait_for(asyncio.gather(*(loop_cells(ws, until) for ws in sockets)),
                                      LOOP_SECONDS + 120)
        t1, cpu1 = usage.sample()
        s_t1, s_cpu1 = server_usage.sample()
        await asyncio.gather(*(drain(ws) for ws in sockets))
        for ws, done in zip(sockets, sent, strict=True):
            check_exactly_once(ws, done, earlier[id(ws)])
        total = sum(len(done) for done in sent)

        cpu_share = (cpu1 - cpu0) / (t1 - t0)
        server_share = (s_cpu1 - s_cpu0) / (s_t1 - s_t0)
        per_kernel = sorted(len(done) for done in sent)
        print(f"\n{KERNELS} kernels started in {start_s:.1f} s ({START_CONCURRENCY} at a time); "
              f"loop {t1 - t0:.1f} s: {total} cells, {total / (t1 - t0):.0f} cells/s "
              f"(per kernel min {per_kernel[0]}, median {per_kernel[len(per_kernel) // 2]}, max {per_kernel[-1]}), "
              "every reply ok, every output exactly once")
        print(f"worker (pid {worker.proc.pid}): CPU {cpu_share * 100:.1f} % of a core during the loop; "
              f"RSS peak {usage.rss_peak / MiB:.0f} MiB (over start and loop, {len(usage.samples)} samples)")
        print(f"jupyter server: CPU {server_share * 100:.1f} % of a core during the loop; "
              f"RSS peak {server_usage.rss_peak / MiB:.0f} MiB")
        print(f"on the worker's side: {len(nanny_pids)} nannies RSS {rss_of(nanny_pids) / MiB:.0f} MiB, "
              f"{len(kernel_pids)} kernels RSS {rss_of(kernel_pids) / MiB:.0f} MiB")
        assert min(per_kernel) >= 10, per_kernel  # every kernel really looped
        # Sanity bounds only (no timing targets): the worker does not spin nor balloon.
        assert cpu_share < 1.9, cpu_share
        assert usage.rss_peak < 2 * GiB, usage.rss_peak
    finally:
        await usage.stop()
        await server_usage.stop()
        for ws in sockets:
            ws.close()

    # ---- delete every session: every lease released
    gate = asyncio.Semaphore(10)

    async def delete(s: dict[str, Any]) -> int:
        async with gate:
            status, _ = await server.request("DELETE", f"/api/sessions/{s['id']}", timeout=120)
            return status

    assert set(await asyncio.gather(*(delete(s) for s in sessions))) == {204}
    async with worker.client() as client:
        deadline = time.monotonic() + 60
        while (inv := await client.inventory()).leases and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert not inv.leases, f"{len(inv.leases)} leases left"
        assert (inv.devices[0].vram_leased, inv.devices[0].compute_leased) == (0, 0)
    status, body = await server.request("GET", "/tf-vgpu/api/kernels")
    assert status == 200 and body["kernels"] == []
    assert worker.proc.poll() is None and server.proc.poll() is None
    assert "Traceback" not in worker.log(), worker.log()[-4000:]
    assert "Traceback" not in server.log(), server.log()[-4000:]
