"""End-to-end kernel of scripts/gpu-check.sh (not a test): through a running worker, lease a slice,
start a kernel, compute on the GPU, compare the lease's VRAM with torch's counter, show `%vgpu`,
release. Writes a Markdown section; exit 0 when every step worked.

    python3 tests/gpu/e2e_kernel.py --address 127.0.0.1:PORT --token TOKEN --report e2e.md

On the host device (the dry run) the kernel computes in plain Python instead.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import secrets
import sys
import time

from tf_remoting.client import RuntimeClient
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb
from tf_remoting.quantities import format_bytes

GiB = 1 << 30

GPU_CELL = """
import torch, time
a = torch.randn(4096, 4096, device='cuda'); torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(50):
    c = a @ a
torch.cuda.synchronize()
dt = time.perf_counter() - t
x = torch.empty(2**30, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize()
(torch.cuda.get_device_name(0), round(50 * 2 * 4096**3 / dt / 1e12, 1), torch.cuda.memory_reserved())
"""
HOST_CELL = """
import time
t = time.perf_counter(); s = sum(i * i for i in range(10**6)); dt = time.perf_counter() - t
x = bytearray(256 * 2**20)
('host', round(1e6 / dt / 1e6, 1), len(x))
"""


async def run(address: str, token: str, lines: list[str]) -> bool:
    ok = True
    async with RuntimeClient(address, token) as client:
        t0 = time.monotonic()
        inv = await client.inventory()
        on_gpu = inv.backend == "nvml"
        lines.append(f"- worker {inv.version}, backend **{inv.backend}**, sample interval {inv.sample_interval_ms} ms")
        for d in inv.devices:
            modes = ", ".join(pb.IsolationMode.Name(m).removeprefix("ISOLATION_MODE_").lower() for m in d.modes)
            lines.append(f"- device {d.index}: {d.name} ({d.uuid}), {format_bytes(d.vram_total)}, "
                         f"{d.multiprocessors} {'SMs' if on_gpu else 'CPUs'}, modes {modes}")
        lease = await client.allocate(vram=4 * GiB if on_gpu else GiB, compute=50)
        remote: RemoteKernel | None = None
        try:
            key = secrets.token_hex(16).encode()
            t1 = time.monotonic()
            kernel = await client.start_kernel(lease.id, key=key)
            remote = RemoteKernel(client, kernel.id, key)
            await remote.connect()
            await remote.wait_ready(timeout=120)
            t2 = time.monotonic()
            lines.append(f"- lease {lease.id} ({format_bytes(lease.slices[0].vram)}, {lease.slices[0].compute} %), "
                         f"kernel answered {t2 - t1:.1f} s after StartKernel")
            result = await remote.execute(GPU_CELL if on_gpu else HOST_CELL, timeout=240)
            if result.status != "ok":
                content = result.reply["content"]
                lines.append(f"- **FAILED** cell: {content.get('ename')}: {content.get('evalue')}")
                return False
            name, rate, held = ast.literal_eval(result.data() or "")
            lines.append(f"- cell on {name}: {rate} {'TFLOP/s fp32 matmul' if on_gpu else 'M iterations/s'}, "
                         f"holds {format_bytes(held)}")
            await asyncio.sleep(1.5)  # a few samples
            leases = {x.id: x for x in await client.list_leases()}
            used = sum(s.vram_used for s in leases[lease.id].slices)
            close = abs(used - held) <= 0.05 * held + (1 * GiB if on_gpu else 64 << 20)  # + CUDA context
            ok &= close and used > 0
            lines.append(f"- lease VRAM used {format_bytes(used)} vs {format_bytes(held)} held in the kernel "
                         f"(+ CUDA context): {'ok' if close and used > 0 else '**MISMATCH**'}")
            shown = await remote.execute("%vgpu")
            lines += ["", "`%vgpu` in the kernel:", "", "```", (shown.data() or shown.stdout()).strip(), "```"]
            ok &= shown.status == "ok"
        finally:
            if remote is not None:
                await asyncio.wait_for(remote.close(), 10)
            await client.release(lease.id)
        lines.append(f"- released; whole run {time.monotonic() - t0:.1f} s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    lines = ["## End-to-end kernel through the worker", ""]
    try:
        ok = asyncio.run(asyncio.wait_for(run(args.address, args.token, lines), 300))
    except Exception as exc:  # the report says what broke; the script's exit status says that it did
        lines.append(f"- **FAILED**: {type(exc).__name__}: {exc}")
        ok = False
    lines.append(f"\nResult: **{'passed' if ok else 'FAILED'}**\n")
    with open(args.report, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
