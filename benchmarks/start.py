"""Start → ready as a notebook user sees it: a vGPU kernel vs. a local ipykernel, through one Jupyter server.

    python benchmarks/start.py [--runs N] [--json PATH]

One Jupyter server with tf_jupyter and one worker (host device, 1 Hz sampling). Each run is
``POST /api/kernels`` (``python3``: a local ipykernel; ``vgpu-small``: the launcher, placement,
``Allocate``, ``StartKernel`` on the worker, the relay) → WebSocket to ``/api/kernels/<id>/channels``
→ ``kernel_info_request`` until its ``kernel_info_reply`` arrives: what JupyterLab waits for before a
notebook shows the kernel as ready. Then the kernel is deleted (and, for vGPU, its lease is gone
from the worker) before the next run. One warm-up per kind, then ``--runs`` of each, interleaved.

Target (shared/design/BASELINES.md): vGPU start → ready ÷ local start → ready ≤ 1.15 (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Row, machine, median, table, versions, with_worker_and_server, write_json  # noqa: E402

from tf_jupyter.pytest_plugin import JupyterServerProcess, KernelWebSocket  # noqa: E402
from tf_remoting.pytest_plugin import WorkerProcess  # noqa: E402

TARGET = 1.15


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def start_to_ready(server: JupyterServerProcess, name: str, timeout: float = 120.0) -> tuple[float, str]:
    started = time.perf_counter()
    status, kernel = await server.request("POST", "/api/kernels", {"name": name}, timeout=timeout)
    if status != 201:
        raise RuntimeError(f"POST /api/kernels {name}: {status} {kernel}")
    # connect() returns at the first kernel_info_reply on this connection: the kernel is ready.
    ws = await KernelWebSocket.connect(server, kernel["id"], timeout=timeout)
    ready = time.perf_counter() - started
    ws.close()
    return ready, kernel["id"]


async def stop(server: JupyterServerProcess, worker: WorkerProcess, kernel_id: str) -> None:
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel_id}")
    if status != 204:
        raise RuntimeError(f"DELETE kernel {kernel_id}: {status}")
    async with worker.client() as client:
        deadline = time.monotonic() + 30
        while (await client.inventory()).leases:
            if time.monotonic() > deadline:
                raise RuntimeError("a lease is left on the worker after the kernel was deleted")
            await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, server: JupyterServerProcess,
                worker: WorkerProcess) -> dict[str, list[float]]:
    kinds = {"local": "python3", "vgpu": args.kernelspec}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for warm in (True, False):
        for n in range(1 if warm else args.runs):
            order = list(kinds) if n % 2 == 0 else list(reversed(kinds))
            for kind in order:
                seconds, kernel_id = await start_to_ready(server, kinds[kind])
                await stop(server, worker, kernel_id)
                if not warm:
                    times[kind].append(seconds)
                log(f"{'warm-up' if warm else f'run {n + 1}'} {kind}: {seconds * 1e3:.0f} ms")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per kind after one warm-up (default 5)")
    parser.add_argument("--kernelspec", default="vgpu-small", help="the vGPU kernelspec (default vgpu-small)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--timeout", type=float, default=400.0, help="bound on the whole run (s)")
    args = parser.parse_args()

    info = machine()
    vers = versions("jupyter_server", "jupyter_client", "ipykernel", "grpcio")
    print(f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info.get('cpu', '?')}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    started = time.monotonic()
    times = with_worker_and_server(["--host-vram", "8Gi", "--sample-interval", "1"],
                                   lambda worker, server: bench(args, server, worker), args.timeout)
    total = time.monotonic() - started

    row = Row(f"start → ready via Jupyter server ({args.kernelspec} vs python3; POST → kernel_info_reply)", "ms",
              median(times["local"]) * 1e3, median(times["vgpu"]) * 1e3, "lower", TARGET,
              samples={"direct": times["local"], "through": times["vgpu"]})
    print()
    print(table([row]).replace("| direct ", "| local  ").replace("through worker", "vGPU          "))
    print(f"\nmin/max: local {min(times['local']) * 1e3:.0f}/{max(times['local']) * 1e3:.0f} ms, "
          f"vGPU {min(times['vgpu']) * 1e3:.0f}/{max(times['vgpu']) * 1e3:.0f} ms")
    print(f"total {total:.1f} s")
    if args.json:
        write_json(args.json, [row], machine=info, versions=vers, total_seconds=total)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    sys.exit(main())
