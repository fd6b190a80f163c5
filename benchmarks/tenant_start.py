"""Start → ready of a kernel under its principal's own Unix uid ÷ the same kernel as the worker's user.

    sudo python benchmarks/tenant_start.py [--runs N] [--json PATH]

Two workers side by side (host device), one with ``--tenant-uids``, one without; each run on each is
``Allocate`` → ``StartKernel`` → open the kernel's Channels → ``kernel_info_request`` until its reply,
then the lease is released. One warm-up each, then ``--runs`` of each, interleaved; medians compared.
Root only (tenant uids need it): elsewhere it says why and records the figure as skipped. Where other
users cannot enter the directories of this Python (e.g. under /root), they are given o+x for the run,
as an administrator would for tenant uids, and restored afterwards.

Target (shared/design/BASELINES.md): ratio ≤ 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from tf_remoting.client import RuntimeClient
from tf_remoting.pytest_plugin import WorkerProcess, python_open_to_tenants, ready_kernel, tenant_worker


async def start_to_ready(worker: WorkerProcess) -> float:
    async with RuntimeClient(worker.address, worker.token) as client:
        began = time.perf_counter()
        lease = await client.allocate(vram=64 << 20, compute=5, ttl_seconds=120)
        async with ready_kernel(client, lease.id):
            took = time.perf_counter() - began
        await client.release(lease.id)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if os.geteuid() != 0:
        result = {"skipped": "not root: a worker with --tenant-uids needs root (or its capabilities)"}
        print("tenant_start: skipped: " + result["skipped"])
    else:
        workers = {"tenant": tenant_worker(["--tenant-uids", "21000-21099"]),
                   "plain": WorkerProcess(["--host-vram", "4Gi"])}
        try:
            with python_open_to_tenants():
                for worker in workers.values():
                    worker.start()
                times: dict[str, list[float]] = {"tenant": [], "plain": []}
                for run in range(args.runs + 1):
                    for name, worker in workers.items():
                        took = asyncio.run(start_to_ready(worker))
                        if run:  # the first is a warm-up
                            times[name].append(took)
        finally:
            for worker in workers.values():
                worker.cleanup()
        tenant, plain = statistics.median(times["tenant"]), statistics.median(times["plain"])
        result = {"tenant_ms": tenant * 1000, "plain_ms": plain * 1000, "ratio": tenant / plain, "runs": args.runs,
                  "all_ms": {k: [round(t * 1000, 1) for t in v] for k, v in times.items()}}
        print(f"start → ready as the tenant's uid {tenant * 1000:.0f} ms, as the worker's user {plain * 1000:.0f} ms "
              f"(medians of {args.runs}): ratio {tenant / plain:.3f} (target ≤ 1.05)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
