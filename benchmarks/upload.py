"""The worker's fixed HTTP/2 receive window vs. gRPC's probing (BDP) windows, side by side, in one run.

    python benchmarks/upload.py [--runs N] [--json PATH]

The worker receives with a fixed window of `RECEIVE_WINDOW` (4 MiB; `RECEIVE_WINDOW_OPTIONS` in
remoting/tf_remoting/worker/server.py) instead of gRPC's default, which probes the bandwidth-delay
product and grows every stream's window. The baseline is the same worker with gRPC's default windows
(started with `RECEIVE_WINDOW_OPTIONS` emptied). Two workers run side by side, each with a kernel:

- upload: PutFile of 16 MiB (`RuntimeClient.put_file`), median MiB/s, direct on 127.0.0.1 and through
  a proxy that delays every chunk by 5 ms each way (a 10 ms round trip, as between two hosts of one
  region); the windows only matter when there is a round trip to fill.
- flood: 120 parallel unauthenticated 15 MiB calls on one connection, each refused UNAUTHENTICATED
  before it is read (`tf_remoting.pytest_plugin.unauthenticated_flood`, the worker-auth test's
  flood); how far the worker's memory (RSS) rose, the worst of `--runs` floods: what a stranger who
  can reach the port can make the worker hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from _common import machine, median, versions  # noqa: E402

from tf_remoting.client import RuntimeClient  # noqa: E402
from tf_remoting.pytest_plugin import WorkerProcess, unauthenticated_flood  # noqa: E402
from tf_remoting.worker.server import RECEIVE_WINDOW  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
UPLOAD = 16 * MiB
FLOOD_CALLS, FLOOD_BODY = 120, 15 * MiB
ONE_WAY_DELAY = 0.005


class ProbingWorker(WorkerProcess):
    """The baseline: the same worker with gRPC's default (probing) receive windows."""

    def args(self) -> list[str]:
        argv = super().args()
        assert argv[1:3] == ["-m", "tf_remoting"], argv
        code = ("import sys; import tf_remoting.worker.server as s; s.RECEIVE_WINDOW_OPTIONS = []; "
                "from tf_remoting.worker.cli import main; sys.exit(main(prog='python -m tf_remoting'))")
        return [argv[0], "-c", code, *argv[3:]]


# ---------------------------------------------------------------------------------- delay proxy


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward what `reader` gives to `writer`, each chunk `delay` seconds later, in order."""
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            data = await reader.read(1 << 16)
            await chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(read(), write(), return_exceptions=True)


async def _proxy(port_file: str, upstream: str, delay: float) -> None:
    host, port = upstream.rsplit(":", 1)

    async def handle(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_pipe(down_r, up_w, delay), _pipe(up_r, down_w, delay), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delay_proxy(upstream: str, root: Path) -> Any:
    """A subprocess that forwards 127.0.0.1:<port> to `upstream`, ONE_WAY_DELAY each way; yields its address."""
    port_file = root / f"proxy-{secrets.token_hex(4)}"
    proc = subprocess.Popen([sys.executable, __file__, "--proxy", str(port_file), upstream, str(ONE_WAY_DELAY)],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the delay proxy did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text()}"
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------- figures


@contextlib.asynccontextmanager
async def kernel_dir(address: str, token: str) -> Any:
    """A client and a fresh kernel (whose directory PutFile writes to); yields (client, kernel id)."""
    async with RuntimeClient(address, token, timeout=60) as client:
        lease = await client.allocate(vram=GiB, compute=10)
        try:
            kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode(), timeout=60)
            yield client, kernel.id
        finally:
            await client.release(lease.id)


async def upload_rates(addresses: dict[str, str], tokens: dict[str, str], runs: int) -> dict[str, list[float]]:
    """MiB/s of `runs` PutFile calls of UPLOAD bytes per worker, the workers' runs interleaved so
    that drift on the machine hits both alike."""
    data = secrets.token_bytes(UPLOAD)
    rates: dict[str, list[float]] = {name: [] for name in addresses}
    async with contextlib.AsyncExitStack() as stack:
        targets = {name: await stack.enter_async_context(kernel_dir(address, tokens[name]))
                   for name, address in addresses.items()}
        for client, kernel_id in targets.values():
            await client.put_file(kernel_id, "warm-up", data)
        for i in range(runs):
            for name, (client, kernel_id) in targets.items():
                t0 = time.perf_counter()
                await client.put_file(kernel_id, f"upload-{i}", data)
                rates[name].append(UPLOAD / MiB / (time.perf_counter() - t0))
    return rates


async def flood_growth(worker: WorkerProcess) -> float:
    """MiB the worker's RSS rose (peak) while FLOOD_CALLS unauthenticated calls were refused."""
    codes, grown = await unauthenticated_flood(worker, FLOOD_CALLS, FLOOD_BODY)
    if codes != [grpc.StatusCode.UNAUTHENTICATED] * FLOOD_CALLS:
        raise RuntimeError(f"the flood was not refused as expected: {set(codes)}")
    return grown / MiB


async def bench(workers: dict[str, WorkerProcess], root: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"upload_mib_s": {}, "upload_samples": {}, "flood_growth_mib": {}, "flood_samples": {}}
    tokens = {name: worker.token for name, worker in workers.items()}
    for rtt, label in ((0.0, "loopback"), (2 * ONE_WAY_DELAY, "10 ms round trip")):
        with contextlib.ExitStack() as stack:
            addresses = {name: stack.enter_context(delay_proxy(worker.address, root)) if rtt else worker.address
                         for name, worker in workers.items()}
            rates = await upload_rates(addresses, tokens, runs)
        out["upload_samples"][label] = rates
        for name, samples in rates.items():
            out["upload_mib_s"].setdefault(label, {})[name] = median(samples)
            print(f"upload, {label}, {name} window: median {median(samples):.0f} MiB/s "
                  f"({', '.join(f'{r:.0f}' for r in samples)})", flush=True)
    for name, worker in workers.items():
        growth = [await flood_growth(worker) for _ in range(runs)]
        out["flood_samples"][name] = growth
        out["flood_growth_mib"][name] = max(growth)
        print(f"flood, {name} window: worst {max(growth):.0f} MiB ({', '.join(f'{g:.0f}' for g in growth)})",
              flush=True)
    return out


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        asyncio.run(_proxy(sys.argv[2], sys.argv[3], float(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="uploads per path and floods per worker (default 5)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    info = machine()
    print(f"machine: {info['cores']} cores, {info.get('cpu', '?')}; versions: "
          + ", ".join(f"{k} {v}" for k, v in versions("grpcio", "protobuf").items()))
    root = Path(tempfile.mkdtemp(prefix="tfbench-upload-"))
    workers = {"fixed": WorkerProcess(["--host-vram", "2Gi"]), "probing": ProbingWorker(["--host-vram", "2Gi"])}
    try:
        for worker in workers.values():
            worker.start()
        data = asyncio.run(asyncio.wait_for(bench(workers, root, args.runs), 600))
    except BaseException:
        for name, worker in workers.items():
            print(f"{name} worker log:\n{worker.log()[-3000:]}", file=sys.stderr)
        raise
    finally:
        for worker in workers.values():
            worker.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    data.update(window_mib=RECEIVE_WINDOW / MiB, runs=args.runs, upload_mib=UPLOAD // MiB, flood_calls=FLOOD_CALLS,
                flood_body_mib=FLOOD_BODY // MiB, machine=info)
    if args.json:
        Path(args.json).write_text(json.dumps(data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
