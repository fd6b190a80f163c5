"""The Jupyter tunnel through the worker vs. a direct local kernel, side by side, in one run.

    python benchmarks/tunnel.py [--quick] [--runs N] [--json PATH]

Both sides run the same kernel, `python -m tf_remoting.kernel` (ipykernel plus the vGPU startup
module): the direct side through a temporary kernelspec and jupyter_client's AsyncKernelManager /
AsyncKernelClient (plain ZMQ), the other through a worker started for this run
(`tf_remoting.pytest_plugin.WorkerProcess`, host device) and `tf_remoting.session.RemoteKernel`
(gRPC Channels stream -> worker -> nanny -> ZMQ). Runs of the two sides are interleaved so that
drift on the machine hits both alike. Every figure is a median; the table gives ratios
(through worker / direct) and the targets from shared/design/BASELINES.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, machine, median, table, versions, write_json  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

from tf_remoting.client import RuntimeClient, pb  # noqa: E402
from tf_remoting.pytest_plugin import WorkerProcess  # noqa: E402
from tf_remoting.session import RemoteKernel  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
KERNEL_NAME = "tfbench"
EXECUTE_CONTENT = {"silent": False, "store_history": False, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}

LATE_WINDOW = 0.3  # after a flood's idle, how long to wait for stray output of the same cell

now = time.perf_counter


def flood_code(lines: int) -> str:
    # ~100 B of text per line, one iopub stream message per line (flush=True).
    return f"for i in range({lines}):\n    print(f'{{i:>8}}', 'x' * 90, flush=True)\n"


def big_code(size: int) -> str:
    return ("from IPython.display import display\n"
            f"display({{'text/plain': 'x' * {size}}}, raw=True)\n")


# ---------------------------------------------------------------------------------------- direct


class Direct:
    """A local kernel over plain ZMQ (jupyter_client), same argv as the worker's kernels."""

    def __init__(self, ksm: KernelSpecManager) -> None:
        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        self.kc: Any = None

    async def start(self, timeout: float) -> tuple[float, float]:
        """(seconds to the first kernel_info_reply, seconds to jupyter_client's wait_for_ready)."""
        t0 = now()
        await asyncio.wait_for(self.km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), timeout)
        self.kc = self.km.client()
        self.kc.start_channels()
        deadline = t0 + timeout
        while True:  # kernel_info until it answers: the same test RemoteKernel.wait_ready makes
            msg_id = self.kc.kernel_info()
            try:
                while True:
                    reply = await self.kc.get_shell_msg(timeout=min(2.0, max(0.01, deadline - now())))
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                break
            except queue.Empty:
                if now() > deadline:
                    raise TimeoutError("direct kernel did not answer kernel_info") from None
        t_info = now() - t0
        # jupyter_client's own notion of ready adds an iopub check and 0.2 s of iopub quiet.
        await self.kc.wait_for_ready(timeout=timeout)
        return t_info, now() - t0

    async def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.km.shutdown_kernel(now=True), 15)

    async def _until_idle(self, msg_id: str, deadline: float, on_msg: Any = None) -> None:
        while True:
            msg = await self.kc.get_iopub_msg(timeout=max(0.01, deadline - now()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return
            if on_msg is not None:
                on_msg(msg)

    async def _reply(self, msg_id: str, deadline: float) -> dict[str, Any]:
        while True:
            msg = await self.kc.get_shell_msg(timeout=max(0.01, deadline - now()))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    async def execute_rtt(self, code: str, timeout: float) -> float:
        deadline = now() + timeout
        t0 = now()
        msg_id = self.kc.execute(code, **EXECUTE_CONTENT)
        reply = await self._reply(msg_id, deadline)
        rtt = now() - t0
        assert reply["content"]["status"] == "ok", reply["content"]
        await self._until_idle(msg_id, deadline)  # not timed: leave the kernel quiet for the next one
        return rtt

    async def flood(self, code: str, timeout: float) -> tuple[int, int, int, float]:
        deadline = now() + timeout
        count = lines = 0

        def on_msg(msg: dict[str, Any]) -> None:
            nonlocal count, lines
            if msg["msg_type"] == "stream":
                count += 1
                lines += msg["content"]["text"].count("\n")

        t0 = now()
        msg_id = self.kc.execute(code, **EXECUTE_CONTENT)
        await self._until_idle(msg_id, deadline, on_msg)
        elapsed = now() - t0
        await self._reply(msg_id, deadline)
        on_time = lines
        with contextlib.suppress(queue.Empty):  # output of this cell published after its idle
            while True:
                msg = await self.kc.get_iopub_msg(timeout=LATE_WINDOW)
                if msg["parent_header"].get("msg_id") == msg_id:
                    on_msg(msg)
        return count, on_time, lines - on_time, elapsed

    async def big_output(self, code: str, size: int, timeout: float) -> float:
        deadline = now() + timeout
        got: list[float] = []

        def on_msg(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "display_data" and len(msg["content"]["data"]["text/plain"]) == size:
                got.append(now())

        t0 = now()
        msg_id = self.kc.execute(code, **EXECUTE_CONTENT)
        await self._until_idle(msg_id, deadline, on_msg)
        await self._reply(msg_id, deadline)
        if not got:
            raise RuntimeError("direct: the big display_data did not arrive")
        return got[0] - t0


# ---------------------------------------------------------------------------------------- worker


class Through:
    """A kernel through the worker: lease, StartKernel, Channels stream, RemoteKernel."""

    def __init__(self, worker: WorkerProcess, client: RuntimeClient) -> None:
        self.worker = worker
        self.client = client
        self.rk: RemoteKernel | None = None
        self.lease_id = ""
        self.kernel_id = ""
        self._renewer: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> float:
        t0 = now()
        lease = await self.client.allocate(vram=GiB, compute=10)
        self.lease_id = lease.id
        self._renewer = asyncio.create_task(self._renew(max(1.0, lease.ttl_seconds / 4)))
        key = secrets.token_hex(16).encode()
        kernel = await self.client.start_kernel(lease.id, key=key, timeout=timeout)
        self.kernel_id = kernel.id
        self.rk = RemoteKernel(self.client, kernel.id, key)
        await self.rk.connect(timeout=timeout)
        await self.rk.wait_ready(timeout=timeout)
        return now() - t0

    async def _renew(self, every: float) -> None:
        """Heartbeat the lease, as any real client does (the worker reclaims silent leases)."""
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await self.client.renew(self.lease_id)

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self.rk is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.rk.close(), 10)
        if self.lease_id:
            with contextlib.suppress(Exception):
                await self.client.release(self.lease_id)
        # Wait for the nanny and kernel to be gone, so the next start has the CPUs to itself.
        deadline = now() + 15
        while self.kernel_id and now() < deadline:
            state = self.worker.kernel_states().get(self.kernel_id, {})
            if state.get("status") == "exited":
                break
            await asyncio.sleep(0.05)

    async def _until_idle(self, msg_id: str, deadline: float, on_msg: Any = None) -> None:
        assert self.rk is not None
        while True:
            msg = await asyncio.wait_for(self.rk.iopub.get(), max(0.01, deadline - now()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return
            if on_msg is not None:
                on_msg(msg)

    async def _send(self, code: str, deadline: float) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """execute_request with the same content as the direct side; the reply comes as a future."""
        assert self.rk is not None
        msg = self.rk.session.msg("execute_request", {"code": code, **EXECUTE_CONTENT})
        msg_id = msg["header"]["msg_id"]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.rk._replies[msg_id] = fut
        await self.rk.channels.send(pb.CHANNEL_SHELL, self.rk.session.serialize(msg, ident=self.rk.identity))
        return msg_id, fut

    async def execute_rtt(self, code: str, timeout: float) -> float:
        assert self.rk is not None
        deadline = now() + timeout
        t0 = now()
        # RemoteKernel.request: sign, send on shell, await the reply with that parent.
        reply = await self.rk.request("execute_request", {"code": code, **EXECUTE_CONTENT}, timeout=timeout)
        rtt = now() - t0
        assert reply["content"]["status"] == "ok", reply["content"]
        await self._until_idle(reply["parent_header"]["msg_id"], deadline)
        return rtt

    async def flood(self, code: str, timeout: float) -> tuple[int, int, int, float]:
        deadline = now() + timeout
        count = lines = 0

        def on_msg(msg: dict[str, Any]) -> None:
            nonlocal count, lines
            if msg["msg_type"] == "stream":
                count += 1
                lines += msg["content"]["text"].count("\n")

        t0 = now()
        msg_id, fut = await self._send(code, deadline)
        await self._until_idle(msg_id, deadline, on_msg)
        elapsed = now() - t0
        await asyncio.wait_for(fut, max(0.01, deadline - now()))
        on_time = lines
        with contextlib.suppress(TimeoutError):  # output of this cell published after its idle
            while True:
                msg = await asyncio.wait_for(self.rk.iopub.get(), LATE_WINDOW)
                if msg["parent_header"].get("msg_id") == msg_id:
                    on_msg(msg)
        return count, on_time, lines - on_time, elapsed

    async def big_output(self, code: str, size: int, timeout: float) -> float:
        deadline = now() + timeout
        got: list[float] = []

        def on_msg(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "display_data" and len(msg["content"]["data"]["text/plain"]) == size:
                got.append(now())

        t0 = now()
        msg_id, fut = await self._send(code, deadline)
        await self._until_idle(msg_id, deadline, on_msg)
        await asyncio.wait_for(fut, max(0.01, deadline - now()))
        if not got:
            raise RuntimeError("through worker: the big display_data did not arrive")
        return got[0] - t0


# ---------------------------------------------------------------------------------------- run


def make_kernelspec(root: Path) -> KernelSpecManager:
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "tf_remoting.kernel", "-f", "{connection_file}"],
        "display_name": "tf-remoting benchmark kernel", "language": "python",
    }))
    return KernelSpecManager(kernel_dirs=[str(root / "kernels")], ensure_native_kernel=False)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def bench(args: argparse.Namespace, worker: WorkerProcess, ksm: KernelSpecManager) -> list[Row]:
    rows: list[Row] = []
    t_to = args.timeout_each
    async with worker.client() as client:
        # 1. start -> ready, interleaved (alternating which side goes first), after one warm-up each.
        d_info: list[float] = []
        d_ready: list[float] = []
        r_start: list[float] = []
        for i in range(args.runs + 1):
            for side in (("d", "r") if i % 2 == 0 else ("r", "d")):
                if side == "d":
                    direct = Direct(ksm)
                    try:
                        info, ready = await direct.start(t_to)
                    finally:
                        await direct.stop()
                    if i:
                        d_info.append(info)
                        d_ready.append(ready)
                else:
                    through = Through(worker, client)
                    try:
                        elapsed = await asyncio.wait_for(through.start(t_to), t_to)
                    finally:
                        await through.stop()
                    if i:
                        r_start.append(elapsed)
            log(f"start -> ready: run {i}/{args.runs} done" + (" (warm-up)" if i == 0 else ""))
        rows.append(Row("start → ready (kernel_info reply; through: allocate+StartKernel+open)", "ms",
                        median(d_info) * 1e3, median(r_start) * 1e3, "lower", 1.15,
                        {"direct": d_info, "through": r_start}))
        rows.append(Row("  same, direct side = jupyter_client wait_for_ready (+0.2 s iopub quiet)", "ms",
                        median(d_ready) * 1e3, median(r_start) * 1e3, "lower", None,
                        {"direct": d_ready, "through": r_start}))

        # One long-lived kernel per side for the steady-state figures.
        direct = Direct(ksm)
        through = Through(worker, client)
        try:
            await direct.start(t_to)
            await asyncio.wait_for(through.start(t_to), t_to)

            # 2. execute round trip, interleaved one by one.
            for _ in range(args.warmup):
                await direct.execute_rtt("1+1", t_to)
                await through.execute_rtt("1+1", t_to)
            d_rtt: list[float] = []
            r_rtt: list[float] = []
            for i in range(args.executes):
                if i % 2 == 0:
                    d_rtt.append(await direct.execute_rtt("1+1", t_to))
                    r_rtt.append(await through.execute_rtt("1+1", t_to))
                else:
                    r_rtt.append(await through.execute_rtt("1+1", t_to))
                    d_rtt.append(await direct.execute_rtt("1+1", t_to))
            rows.append(Row(f"execute '1+1' → execute_reply (n={args.executes})", "ms",
                            median(d_rtt) * 1e3, median(r_rtt) * 1e3, "lower", 1.10,
                            {"direct": d_rtt, "through": r_rtt}))
            log("execute round trip done")

            # 3. iopub flood.
            code = flood_code(args.lines)
            d_rate: list[float] = []
            r_rate: list[float] = []
            msgs: dict[str, list[int]] = {"d": [], "r": []}
            late_lines: dict[str, list[int]] = {"d": [], "r": []}
            for i in range(args.floods):
                for side in (("d", "r") if i % 2 == 0 else ("r", "d")):
                    runner = direct if side == "d" else through
                    count, lines, late, elapsed = await runner.flood(code, args.timeout_flood)
                    if lines + late != args.lines:
                        raise RuntimeError(f"{side}: {lines} + {late} (after idle) lines of output "
                                           f"instead of {args.lines}")
                    msgs[side].append(count)
                    late_lines[side].append(late)
                    # Rate of the work done (lines); ipykernel may split a few prints into two
                    # stream messages, so the message count is reported beside it.
                    (d_rate if side == "d" else r_rate).append(args.lines / elapsed)
            rows.append(Row(f"iopub flood, {args.lines:,} prints (1 stream msg each) → idle", "msg/s",
                            median(d_rate), median(r_rate), "higher", 0.90,
                            {"direct": d_rate, "through": r_rate},
                            note=f"stream messages received: direct {msgs['d']}, through {msgs['r']}; lines "
                                 f"published after the idle status: direct {late_lines['d']}, "
                                 f"through {late_lines['r']}"))
            log("iopub flood done")

            # 4. 16 MiB output.
            code = big_code(args.big)
            for _ in range(1):  # warm-up: first big allocation on each side
                await direct.big_output(code, args.big, t_to)
                await through.big_output(code, args.big, t_to)
            d_tp: list[float] = []
            r_tp: list[float] = []
            for i in range(args.bigs):
                for side in (("d", "r") if i % 2 == 0 else ("r", "d")):
                    runner = direct if side == "d" else through
                    elapsed = await runner.big_output(code, args.big, t_to)
                    (d_tp if side == "d" else r_tp).append(args.big / MiB / elapsed)
            rows.append(Row(f"{args.big // MiB} MiB display_data, request → received", "MiB/s",
                            median(d_tp), median(r_tp), "higher", 0.50,
                            {"direct": d_tp, "through": r_tp}))
            log("big output done")
        finally:
            await direct.stop()
            await through.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke)")
    parser.add_argument("--runs", type=int, help="start -> ready runs per side (default 5; quick 2)")
    parser.add_argument("--executes", type=int, help="execute round trips per side (default 200; quick 40)")
    parser.add_argument("--floods", type=int, help="flood runs per side (default 3; quick 1)")
    parser.add_argument("--lines", type=int, help="stream messages per flood (default 20000; quick 5000)")
    parser.add_argument("--bigs", type=int, help="16 MiB runs per side (default 5; quick 2)")
    parser.add_argument("--big", type=int, default=16 * MiB, help="size of the big output in bytes")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (s)")
    args = parser.parse_args()
    q = args.quick
    args.runs = args.runs or (2 if q else 5)
    args.executes = args.executes or (40 if q else 200)
    args.warmup = 10 if q else 20
    args.floods = args.floods or (1 if q else 3)
    args.lines = args.lines or (5000 if q else 20_000)
    args.bigs = args.bigs or (2 if q else 5)
    args.timeout_each = 60.0
    args.timeout_flood = 120.0

    info = machine()
    vers = versions("grpcio", "protobuf", "pyzmq", "jupyter_client", "ipykernel")
    print(f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info.get('cpu', '?')}, "
          f"{info['platform']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print("kernel (both sides): python -m tf_remoting.kernel -f {connection_file}")
    print(f"mode: {'quick' if q else 'full'}; start runs {args.runs}, executes {args.executes}, "
          f"floods {args.floods} × {args.lines}, big {args.bigs} × {args.big // MiB} MiB")

    root = Path(tempfile.mkdtemp(prefix="tfbench-"))
    ksm = make_kernelspec(root)
    worker = WorkerProcess(["--host-vram", "4Gi"])
    started = now()
    try:
        worker.start()
        rows = asyncio.run(asyncio.wait_for(bench(args, worker, ksm), args.timeout))
    except BaseException:
        log(f"worker log ({worker.log_path}):\n{worker.log()[-4000:]}")
        raise
    finally:
        worker.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    total = now() - started

    print()
    print(table(rows))
    print()
    for r in rows:
        if "direct" in r.samples and len(r.samples["direct"]) > 2:
            d, t = sorted(r.samples["direct"]), sorted(r.samples["through"])
            scale = 1e3 if r.unit == "ms" else 1.0
            print(f"{r.figure.strip()[:40]:40}  direct min/max {d[0] * scale:.4g}/{d[-1] * scale:.4g}  "
                  f"through min/max {t[0] * scale:.4g}/{t[-1] * scale:.4g} {r.unit}")
    for r in rows:
        if r.note:
            print(f"{r.figure.strip()[:40]:40}  {r.note}")
    print(f"\ntotal {total:.1f} s")
    if args.json:
        write_json(args.json, rows, machine=info, versions=vers, mode="quick" if q else "full",
                   total_seconds=total)
    missed = [r.figure for r in rows if r.met is False]
    if missed:
        print("targets missed: " + "; ".join(m.strip() for m in missed))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    sys.exit(main())
