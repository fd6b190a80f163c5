"""The `tf-jupyter` command.

    tf-jupyter worker [...]                       run the remoting runtime on this host
    tf-jupyter pool --worker ADDR --token-file F  show a worker's devices, leases and kernels
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from tf_remoting.client import RemotingError, RuntimeClient
from tf_remoting.proto import pb
from tf_remoting.quantities import format_bytes


def read_token(path: str) -> str:
    """The first token in a token file (the `TOKEN` or `PRINCIPAL TOKEN` format)."""
    with open(path) as f:
        for line in f:
            words = line.split()
            if words and not words[0].startswith("#"):
                return words[-1]
    raise ValueError(f"no token in {path}")


async def fetch_inventory(args: argparse.Namespace) -> pb.Inventory:
    client = RuntimeClient(args.worker, read_token(args.token_file), tls_ca=args.tls_ca,
                           client_cert=args.tls_cert, client_key=args.tls_key, timeout=args.timeout)
    async with client:
        return await client.inventory()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def format_inventory(inv: pb.Inventory) -> str:
    mode = pb.IsolationMode.Name(inv.default_mode).removeprefix("ISOLATION_MODE_").lower()
    out = [f"worker {inv.worker_id} (tf-jupyter {inv.version}), backend {inv.backend}, default isolation "
           f"{mode}, compute oversubscription x{inv.oversubscription:g}", "", "DEVICES"]
    rows = [["#", "DEVICE", "KIND", "VRAM LEASED / USED / TOTAL", "COMPUTE LEASED", "UTIL", "MEMORY BY"]]
    for d in inv.devices:
        kind = "host device (no GPU)" if d.kind == pb.DEVICE_KIND_HOST else "GPU"
        rows.append([str(d.index), f"{d.name} {d.uuid}", kind,
                     f"{format_bytes(d.vram_leased)} / {format_bytes(d.vram_used)} / {format_bytes(d.vram_total)}",
                     f"{d.compute_leased} / {d.compute_capacity} %", f"{d.utilization:.0f} %",
                     pb.MemoryEnforcement.Name(d.memory_enforcement).removeprefix("MEMORY_ENFORCEMENT_").lower()])
    out.append(_table(rows))
    out += ["", "LEASES"]
    if not inv.leases:
        out.append("(none)")
    else:
        rows = [["LEASE", "PRINCIPAL", "PROFILE", "SLICE", "USED", "QOS", "EXPIRES", "KERNELS"]]
        for lease in inv.leases:
            s = lease.slices[0]
            kernels = ", ".join(f"{k.id} ({pb.KernelStatus.Name(k.status).removeprefix('KERNEL_STATUS_').lower()})"
                                for k in lease.kernels) or "-"
            rows.append([lease.id, lease.principal, lease.profile or "-",
                         f"{format_bytes(s.vram)} / {s.compute} % x{len(lease.slices)}",
                         format_bytes(sum(x.vram_used for x in lease.slices)),
                         pb.Qos.Name(lease.qos).removeprefix("QOS_").lower(),
                         datetime.fromtimestamp(lease.expires_at).strftime("%H:%M:%S"), kernels])
        out.append(_table(rows))
    return "\n".join(out)


def cmd_pool(args: argparse.Namespace) -> int:
    try:
        inv = asyncio.run(fetch_inventory(args))
    except (RemotingError, OSError, ValueError) as exc:
        print(f"tf-jupyter pool: {args.worker}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        data: dict[str, Any] = MessageToDict(inv, preserving_proto_field_name=True)
        print(json.dumps(data, indent=2))
    else:
        print(format_inventory(inv))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from tf_remoting.cli import main as worker_main

        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(prog="tf-jupyter", description="Fractional GPUs for Jupyter kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run the remoting runtime on this host (see tf-jupyter worker --help)")
    pool = sub.add_parser("pool", help="show a worker's devices, leases and kernels")
    pool.add_argument("--worker", required=True, help="worker address, HOST:PORT or unix:/path")
    pool.add_argument("--token-file", required=True, help="file holding the token to use")
    pool.add_argument("--tls-ca", help="CA bundle to verify the worker's certificate (turns TLS on)")
    pool.add_argument("--tls-cert", help="client certificate for mTLS")
    pool.add_argument("--tls-key", help="client key for mTLS")
    pool.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the worker")
    pool.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pool.set_defaults(func=cmd_pool)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
