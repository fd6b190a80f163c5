"""Placement: online best-fit bin-packing (PoolState) vs. first-fit-decreasing, in one run.

    python benchmarks/placement.py [--requests N] [--workers N] [--seed S] [--repeat N] [--json PATH]

A pool of 1,000 devices (125 workers of 8 identical devices; 24, 40, 48, 80 and 141 GiB models,
mixed) receives 10,000 random requests (seeded; 1 to 16 GiB, 1 to 9 % compute), one at a time,
each placed by ``PoolState.place_and_commit`` (binpack) and applied, so the pool fills as it would;
the time is the median of ``--repeat`` runs on a fresh pool.
The baseline is first-fit-decreasing over the same requests, which knows them all in advance:
requests sorted by size (largest first) into devices sorted by size (largest first), the strong
form of FFD for bins of several sizes. FFD with the devices in pool order is shown for information.
Targets (shared/design/BASELINES.md): all requests placed in <= 0.5 s, devices used <= 1.05 x FFD.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tf_jupyter.placement import DeviceView, PoolState, Request  # noqa: E402

GiB = 1 << 30
MODELS = {24: "NVIDIA L4 24GB", 40: "NVIDIA A100 40GB", 48: "NVIDIA L40S 48GB", 80: "NVIDIA H100 80GB",
          141: "NVIDIA H200 141GB"}
VRAM_CHOICES_GIB = [1, 1, 2, 2, 4, 4, 4, 8, 8, 16]
TIME_TARGET_S = 0.5
RATIO_TARGET = 1.05


def make_pool(workers: int, per_worker: int = 8) -> list[DeviceView]:
    sizes = sorted(MODELS)
    pool = []
    for w in range(workers):
        size = sizes[w % len(sizes)]
        for k in range(per_worker):
            pool.append(DeviceView(f"worker-{w:03d}", f"GPU-{w:03d}-{k}", MODELS[size], size * GiB, size * GiB,
                                   100, 100))
    return pool


def make_requests(n: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    return [Request(rng.choice(VRAM_CHOICES_GIB) * GiB, rng.randint(1, 9)) for _ in range(n)]


def first_fit_decreasing(pool: list[DeviceView], requests: list[Request]) -> tuple[int, int, float]:
    """(placed, devices used, seconds); devices are tried in the order given."""
    free = [[d.vram_total, d.compute_free] for d in pool]
    used = set()
    placed = 0
    start = time.perf_counter()
    for r in sorted(requests, key=lambda r: (r.vram, r.compute), reverse=True):
        for i, f in enumerate(free):
            if f[0] >= r.vram and f[1] >= r.compute:
                f[0] -= r.vram
                f[1] -= r.compute
                used.add(i)
                placed += 1
                break
    return placed, len(used), time.perf_counter() - start


def binpack(pool: list[DeviceView], requests: list[Request]) -> tuple[int, int, float]:
    state = PoolState(pool)
    start = time.perf_counter()
    placed = sum(1 for r in requests if state.place_and_commit(r) is not None)
    elapsed = time.perf_counter() - start
    return placed, state.devices_used(), elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=125, help="workers of 8 devices each (default 125)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="binpack runs; the median time counts (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    pool = make_pool(args.workers)
    requests = make_requests(args.requests, args.seed)
    load_vram = sum(r.vram for r in requests) / sum(d.vram_total for d in pool)
    load_compute = sum(r.compute for r in requests) / sum(d.compute_capacity for d in pool)

    runs = [binpack(pool, requests) for _ in range(max(args.repeat, 1))]
    bp_placed, bp_used, _ = runs[0]
    times = sorted(run[2] for run in runs)
    bp_s = times[len(times) // 2]
    ffd_placed, ffd_used, ffd_s = first_fit_decreasing(sorted(pool, key=lambda d: -d.vram_total), requests)
    ffd_order_placed, ffd_order_used, _ = first_fit_decreasing(pool, requests)
    ratio = bp_used / ffd_used if ffd_used else float("nan")
    time_met = bp_s <= TIME_TARGET_S and bp_placed == len(requests)
    ratio_met = ratio <= RATIO_TARGET and bp_placed >= ffd_placed

    print(f"{len(requests):,} requests over {len(pool):,} devices ({args.workers} workers); demand is "
          f"{load_vram:.0%} of the pool's VRAM and {load_compute:.0%} of its compute; seed {args.seed}")
    print(f"binpack (PoolState, online)     placed {bp_placed:>6,}  devices used {bp_used:>5}  "
          f"time {bp_s * 1000:7.1f} ms  ({bp_s / max(len(requests), 1) * 1e6:.1f} us/request, median of {len(runs)})")
    print(f"FFD (offline, largest devices)  placed {ffd_placed:>6,}  devices used {ffd_used:>5}  "
          f"time {ffd_s * 1000:7.1f} ms")
    print(f"FFD (offline, pool order; info) placed {ffd_order_placed:>6,}  devices used {ffd_order_used:>5}")
    print(f"time {bp_s:.3f} s (target <= {TIME_TARGET_S} s): {'met' if time_met else 'NOT MET'}")
    print(f"devices used / FFD = {ratio:.3f} (target <= {RATIO_TARGET}): {'met' if ratio_met else 'NOT MET'}")

    if args.json:
        result = {
            "requests": len(requests), "devices": len(pool), "workers": args.workers, "seed": args.seed,
            "load_vram": load_vram, "load_compute": load_compute,
            "binpack": {"placed": bp_placed, "devices_used": bp_used, "seconds": bp_s, "runs_seconds": times},
            "ffd": {"placed": ffd_placed, "devices_used": ffd_used, "seconds": ffd_s},
            "ffd_pool_order": {"placed": ffd_order_placed, "devices_used": ffd_order_used},
            "ratio_devices_used": ratio, "targets": {"seconds": TIME_TARGET_S, "ratio": RATIO_TARGET},
            "met": {"time": time_met, "ratio": ratio_met},
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
