"""The Jupyter tunnel through the worker vs. a direct local kernel, side by side, in one run.

    python benchmarks/tunnel.py [--quick] [--runs N] [--json PATH]

All three paths run the same kernel, `python -m tf_remoting.kernel` (ipykernel plus the vGPU
startup module):
- direct: a temporary kernelspec and jupyter_client's AsyncKernelManager / AsyncKernelClient
  (plain ZMQ);
- through worker: a worker started for this run (`tf_remoting.pytest_plugin.WorkerProcess`, host
  device) and `tf_remoting.client.session.RemoteKernel` (gRPC Channels stream -> worker -> nanny -> ZMQ);
- through launcher: the installed `vgpu-small` kernelspec (`python -m tf_jupyter.launcher`) started
  by the same AsyncKernelManager and spoken to by the same AsyncKernelClient (ZMQ -> launcher relay
  -> gRPC -> worker -> nanny -> ZMQ); the launcher finds the benchmark's worker through a temporary
  JUPYTER_CONFIG_DIR (`c.TfVgpu.workers`), allocates its own lease and releases it when it exits.
Runs of the paths are interleaved so that drift on the machine hits all alike. Every figure is a
median; the table gives ratios (path / direct) and the targets from shared/design/BASELINES.md.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
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
from tf_remoting.client.session import RemoteKernel  # noqa: E402
from tf_remoting.pytest_plugin import WorkerProcess  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
KERNEL_NAME = "tfbench"
LAUNCHER_KERNEL = "vgpu-small"  # the installed kernelspec: python -m tf_jupyter.launcher --profile small
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

    name = "direct"

    def __init__(self, ksm: KernelSpecManager) -> None:
        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
        self.kc: Any = None

    def _launch_kwargs(self) -> dict[str, Any]:
        return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    async def start(self, timeout: float) -> tuple[float, float]:
        """(seconds to the first kernel_info_reply, seconds to jupyter_client's wait_for_ready)."""
        t0 = now()
        await asyncio.wait_for(self.km.start_kernel(**self._launch_kwargs()), timeout)
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
                    raise TimeoutError(f"{self.name}: the kernel did not answer kernel_info") from None
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
            raise RuntimeError(f"{self.name}: the big display_data did not arrive")
        return got[0] - t0


# ---------------------------------------------------------------------------------------- launcher


class Launched(Direct):
    """The vgpu-small kernelspec: the same jupyter_client calls as Direct, to the launcher's ports.

    The launcher allocates its lease on the benchmark's worker (found through JUPYTER_CONFIG_DIR),
    starts the kernel there and relays; `stop` shuts it down the way a Jupyter client does
    (shutdown_request on control, then wait for the process) and checks that the launcher exited,
    its kernel exited and its lease is gone.
    """

    name = "through launcher"

    def __init__(self, worker: WorkerProcess, client: RuntimeClient, log_dir: Path) -> None:
        # The default KernelSpecManager: the kernelspec as installed, provisioner metadata included
        # (outside a Jupyter server the tf-vgpu provisioner acts as a LocalProvisioner).
        self.km = AsyncKernelManager(kernel_name=LAUNCHER_KERNEL)
        self.kc = None
        self.worker = worker
        self.client = client
        self.stderr_path = log_dir / f"launcher-{secrets.token_hex(4)}.log"
        self.pid: int | None = None
        self.kernel_id = ""
        self.lease_id = ""
        self.exit_code: int | None = None
        self.shutdown_s = float("nan")
        self._stderr: Any = None

    def _launch_kwargs(self) -> dict[str, Any]:
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115 (closed once the launcher has it)
        return {"stdout": subprocess.DEVNULL, "stderr": self._stderr}

    async def start(self, timeout: float) -> tuple[float, float]:
        try:
            return await super().start(timeout)
        finally:
            if self._stderr is not None:
                self._stderr.close()
            process = getattr(self.km.provisioner, "process", None)
            if process is not None:
                self.pid = process.pid
            self._read_ids()

    def _read_ids(self) -> None:
        """Kernel and lease id from the launcher's line `tf-vgpu: kernel K in lease L on ADDRESS`."""
        with contextlib.suppress(OSError):
            found = re.search(r"tf-vgpu: kernel (\S+) in lease (\S+) on", self.stderr_path.read_text(errors="replace"))
            if found:
                self.kernel_id, self.lease_id = found.group(1), found.group(2)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    async def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        self._read_ids()
        process = getattr(self.km.provisioner, "process", None)
        t0 = now()
        try:
            # shutdown_request on control -> kernel exits -> the launcher's relay ends -> it
            # releases its lease and exits (jupyter_client escalates to SIGTERM after 2.5 s).
            await asyncio.wait_for(self.km.shutdown_kernel(now=False), 30)
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.km.shutdown_kernel(now=True), 10)
            raise
        finally:
            self.shutdown_s = now() - t0
            if process is not None:
                self.exit_code = process.poll()
        if process is not None and self.exit_code is None:
            raise RuntimeError(f"launcher {process.pid} still running after shutdown_kernel")
        if not self.lease_id:
            return  # never got as far as a lease
        deadline = now() + 15
        while True:
            leases = {lease.id for lease in await self.client.list_leases()}
            state = self.worker.kernel_states().get(self.kernel_id, {})
            if self.lease_id not in leases and (not self.kernel_id or state.get("status") == "exited"):
                return
            if now() > deadline:
                raise RuntimeError(f"launcher exited ({self.exit_code}) but left lease {self.lease_id} "
                                   f"(kernel {self.kernel_id}: {state.get('status')}):\n{self.stderr()[-2000:]}")
            await asyncio.sleep(0.05)


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


def order(i: int) -> list[str]:
    """Which path goes first in round i: d r l, r l d, l d r, ..."""
    sides = ["d", "r", "l"]
    return sides[i % 3:] + sides[:i % 3]


async def bench(args: argparse.Namespace, worker: WorkerProcess, ksm: KernelSpecManager, root: Path,
                cleanup: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    launchers: list[Launched] = []
    async with worker.client() as client:

        def launched() -> Launched:
            runner = Launched(worker, client, root)
            launchers.append(runner)
            return runner

        try:
            await _bench(args, worker, client, ksm, launched, rows)
        finally:
            # Every lease released, every kernel and launcher gone (checked, not assumed).
            leases = await client.list_leases()
            cleanup["leases_left"] = [lease.id for lease in leases]
            for lease in leases:
                with contextlib.suppress(Exception):
                    await client.release(lease.id)
            deadline = now() + 15
            while now() < deadline:
                states = worker.kernel_states()
                if all(st.get("status") == "exited" for st in states.values()):
                    break
                await asyncio.sleep(0.1)
            states = worker.kernel_states()
            cleanup["kernels"] = len(states)
            cleanup["kernels_running"] = [k for k, st in states.items() if st.get("status") != "exited"]
            cleanup["launchers"] = len(launchers)
            cleanup["launchers_alive"] = [r.pid for r in launchers if r.pid and _alive(r.pid)]
            cleanup["launcher_exit_codes"] = sorted({r.exit_code for r in launchers}, key=str)
            cleanup["launcher_shutdown_s"] = [round(r.shutdown_s, 3) for r in launchers]
    return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (jupyter_client reaps its own children).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


async def _bench(args: argparse.Namespace, worker: WorkerProcess, client: RuntimeClient, ksm: KernelSpecManager,
                 launched: Any, rows: list[Row]) -> None:
    t_to = args.timeout_each

    # 1. start -> ready, interleaved (rotating which path goes first), after one warm-up each.
    d_info: list[float] = []
    d_ready: list[float] = []
    r_start: list[float] = []
    l_info: list[float] = []
    l_ready: list[float] = []
    for i in range(args.runs + 1):
        for side in order(i):
            if side == "r":
                through = Through(worker, client)
                try:
                    elapsed = await asyncio.wait_for(through.start(t_to), t_to)
                finally:
                    await through.stop()
                if i:
                    r_start.append(elapsed)
                continue
            runner = Direct(ksm) if side == "d" else launched()
            try:
                info, ready = await runner.start(t_to)
            finally:
                await runner.stop()
            if i:
                (d_info if side == "d" else l_info).append(info)
                (d_ready if side == "d" else l_ready).append(ready)
        log(f"start -> ready: run {i}/{args.runs} done" + (" (warm-up)" if i == 0 else ""))
    rows.append(Row("start → ready (kernel_info reply; worker: allocate+StartKernel+open; launcher: "
                    "start_kernel → reply)", "ms",
                    median(d_info) * 1e3, median(r_start) * 1e3, "lower", 1.15,
                    {"direct": d_info, "through": r_start, "launcher": l_info}, launcher=median(l_info) * 1e3))
    rows.append(Row("  same, direct and launcher = jupyter_client wait_for_ready (+0.2 s iopub quiet)", "ms",
                    median(d_ready) * 1e3, median(r_start) * 1e3, "lower", None,
                    {"direct": d_ready, "through": r_start, "launcher": l_ready}, launcher=median(l_ready) * 1e3))

    # One long-lived kernel per path for the steady-state figures.
    direct = Direct(ksm)
    through = Through(worker, client)
    launcher = launched()
    runners: dict[str, Any] = {"d": direct, "r": through, "l": launcher}
    try:
        await direct.start(t_to)
        await asyncio.wait_for(through.start(t_to), t_to)
        await launcher.start(t_to)
        log(f"steady-state kernels up (launcher pid {launcher.pid})")

        # 2. execute round trip, interleaved one by one.
        for _ in range(args.warmup):
            for side in "drl":
                await runners[side].execute_rtt("1+1", t_to)
        rtt: dict[str, list[float]] = {"d": [], "r": [], "l": []}
        for i in range(args.executes):
            for side in order(i):
                rtt[side].append(await runners[side].execute_rtt("1+1", t_to))
        rows.append(Row(f"execute '1+1' → execute_reply (n={args.executes})", "ms",
                        median(rtt["d"]) * 1e3, median(rtt["r"]) * 1e3, "lower", 1.10,
                        {"direct": rtt["d"], "through": rtt["r"], "launcher": rtt["l"]},
                        launcher=median(rtt["l"]) * 1e3))
        log("execute round trip done")

        # 3. iopub flood.
        code = flood_code(args.lines)
        rate: dict[str, list[float]] = {"d": [], "r": [], "l": []}
        msgs: dict[str, list[int]] = {"d": [], "r": [], "l": []}
        late_lines: dict[str, list[int]] = {"d": [], "r": [], "l": []}
        for i in range(args.floods):
            for side in order(i):
                count, lines, late, elapsed = await runners[side].flood(code, args.timeout_flood)
                if lines + late != args.lines:
                    raise RuntimeError(f"{side}: {lines} + {late} (after idle) lines of output "
                                       f"instead of {args.lines}")
                msgs[side].append(count)
                late_lines[side].append(late)
                # Rate of the work done (lines); ipykernel may split a few prints into two
                # stream messages, so the message count is reported beside it.
                rate[side].append(args.lines / elapsed)
        rows.append(Row(f"iopub flood, {args.lines:,} prints (1 stream msg each) → idle", "msg/s",
                        median(rate["d"]), median(rate["r"]), "higher", 0.90,
                        {"direct": rate["d"], "through": rate["r"], "launcher": rate["l"]},
                        note=f"stream messages received: direct {msgs['d']}, worker {msgs['r']}, launcher "
                             f"{msgs['l']}; lines published after the idle status: direct {late_lines['d']}, "
                             f"worker {late_lines['r']}, launcher {late_lines['l']}",
                        launcher=median(rate["l"])))
        log("iopub flood done")

        # 4. 16 MiB output.
        code = big_code(args.big)
        for side in "drl":  # warm-up: first big allocation on each path
            await runners[side].big_output(code, args.big, t_to)
        tp: dict[str, list[float]] = {"d": [], "r": [], "l": []}
        for i in range(args.bigs):
            for side in order(i):
                elapsed = await runners[side].big_output(code, args.big, t_to)
                tp[side].append(args.big / MiB / elapsed)
        rows.append(Row(f"{args.big // MiB} MiB display_data, request → received", "MiB/s",
                        median(tp["d"]), median(tp["r"]), "higher", 0.50,
                        {"direct": tp["d"], "through": tp["r"], "launcher": tp["l"]}, launcher=median(tp["l"])))
        log("big output done")
    finally:
        await direct.stop()
        await through.stop()
        await launcher.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke)")
    parser.add_argument("--runs", type=int, help="start -> ready runs per path (default 5; quick 2)")
    parser.add_argument("--executes", type=int, help="execute round trips per path (default 200; quick 40)")
    parser.add_argument("--floods", type=int, help="flood runs per path (default 2; quick 1)")
    parser.add_argument("--lines", type=int, help="stream messages per flood (default 20000; quick 3000)")
    parser.add_argument("--bigs", type=int, help="16 MiB runs per path (default 5; quick 2)")
    parser.add_argument("--big", type=int, default=16 * MiB, help="size of the big output in bytes")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (s)")
    args = parser.parse_args()
    q = args.quick
    args.runs = args.runs or (2 if q else 5)
    args.executes = args.executes or (40 if q else 200)
    args.warmup = 10 if q else 20
    args.floods = args.floods or (1 if q else 2)
    args.lines = args.lines or (3000 if q else 20_000)
    args.bigs = args.bigs or (2 if q else 5)
    args.timeout_each = 60.0
    args.timeout_flood = 120.0

    try:
        launcher_argv = KernelSpecManager().get_kernel_spec(LAUNCHER_KERNEL).argv
    except Exception as exc:
        print(f"kernelspec {LAUNCHER_KERNEL} not found ({exc}): install the profiles first "
              "(pip install -e . does; see tf-jupyter profiles list)", file=sys.stderr)
        return 2
    info = machine()
    vers = versions("grpcio", "protobuf", "pyzmq", "jupyter_client", "ipykernel")
    print(f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info.get('cpu', '?')}, "
          f"{info['platform']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print("kernel (all paths): python -m tf_remoting.kernel -f {connection_file}; launcher: kernelspec "
          f"{LAUNCHER_KERNEL} = {' '.join(launcher_argv)}")
    print(f"mode: {'quick' if q else 'full'}; start runs {args.runs}, executes {args.executes}, "
          f"floods {args.floods} × {args.lines}, big {args.bigs} × {args.big // MiB} MiB")

    root = Path(tempfile.mkdtemp(prefix="tfbench-"))
    ksm = make_kernelspec(root)
    # Room for the worker path's 1 GiB lease and the launcher's vgpu-small (4 GiB) side by side.
    worker = WorkerProcess(["--host-vram", "8Gi"])
    cleanup: dict[str, Any] = {}
    started = now()
    try:
        worker.start()
        # What the launcher reads outside a Jupyter server: c.TfVgpu.* from the Jupyter config path.
        config_dir = root / "jupyter-config"
        config_dir.mkdir()
        (config_dir / "jupyter_server_config.json").write_text(json.dumps({"TfVgpu": {
            "workers": [worker.address], "token_file": str(worker.token_file), "embedded_worker": "off"}}))
        os.environ["JUPYTER_CONFIG_DIR"] = str(config_dir)
        rows = asyncio.run(asyncio.wait_for(bench(args, worker, ksm, root, cleanup), args.timeout))
    except BaseException:
        log(f"worker log ({worker.log_path}):\n{worker.log()[-4000:]}")
        for path in sorted(root.glob("launcher-*.log"))[-2:]:
            log(f"{path.name}:\n{path.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        worker.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    total = now() - started

    print()
    print(table(rows))
    print()
    for r in rows:
        if "direct" in r.samples and len(r.samples["direct"]) >= 2:
            scale = 1e3 if r.unit == "ms" else 1.0
            spans = []
            for key, label in (("direct", "direct"), ("through", "worker"), ("launcher", "launcher")):
                v = sorted(r.samples.get(key) or [])
                if v:
                    spans.append(f"{label} {v[0] * scale:.4g}/{v[-1] * scale:.4g}")
            print(f"{r.figure.strip()[:40]:40}  min/max: {', '.join(spans)} {r.unit}")
    for r in rows:
        if r.note:
            print(f"{r.figure.strip()[:40]:40}  {r.note}")
    shut = cleanup.get("launcher_shutdown_s") or []
    print(f"cleanup: {cleanup.get('launchers', 0)} launchers, exit codes {cleanup.get('launcher_exit_codes')}, "
          f"still alive {cleanup.get('launchers_alive')}; shutdown_kernel → launcher gone, lease released: "
          f"median {median(shut):.2f} s (max {max(shut, default=float('nan')):.2f} s); worker kernels "
          f"{cleanup.get('kernels', 0)}, still running {cleanup.get('kernels_running')}; leases left at the end "
          f"{cleanup.get('leases_left')}")
    print(f"\ntotal {total:.1f} s")
    if args.json:
        write_json(args.json, rows, machine=info, versions=vers, mode="quick" if q else "full",
                   total_seconds=total)
    missed = [f"{r.figure.strip()} ({path})" for r in rows
              for path, met in (("worker", r.met), ("launcher", r.launcher_met)) if met is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    if cleanup.get("leases_left") or cleanup.get("kernels_running") or cleanup.get("launchers_alive"):
        print("cleanup FAILED: see the line above")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    sys.exit(main())
