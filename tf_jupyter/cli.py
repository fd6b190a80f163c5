"""The `tf-jupyter` command.

    tf-jupyter lab [JUPYTERLAB ARGS...]            JupyterLab with vGPU kernels (embedded worker by default)
    tf-jupyter profiles list [--json]              the vGPU profiles (vgpu-* kernelspecs) installed
    tf-jupyter profiles add NAME --vram 8Gi --compute 25 [--count 2] [--qos high] [--replace]
    tf-jupyter profiles remove NAME
    tf-jupyter worker [...]                        run the remoting runtime on this host
    tf-jupyter pool --worker ADDR --token-file F   show a worker's devices, leases and kernels

`lab` and `worker` pass every argument after them through (to JupyterLab and to the worker's own
command line); `tf-jupyter lab --help` shows JupyterLab's options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tf_remoting.proto import pb

LAB_PREFACE = """\
tf-jupyter lab: JupyterLab with vGPU kernels (the vgpu-* kernelspecs in the launcher and kernel picker).
With no workers configured (c.TfVgpu.workers / workers_dns) the tf_jupyter server extension starts
an embedded worker on this machine (device auto) and logs which device backend serves it.
`tf-jupyter lab --help-all` lists every c.TfVgpu setting first. JupyterLab's own options follow.
"""


# --- pool -------------------------------------------------------------------------------------

async def fetch_inventory(args: argparse.Namespace) -> pb.Inventory:
    from tf_jupyter.tokens import read_token
    from tf_remoting.client import RuntimeClient

    client = RuntimeClient(args.worker, read_token(args.token_file), tls_ca=args.tls_ca,
                           client_cert=args.tls_cert, client_key=args.tls_key, timeout=args.timeout)
    async with client:
        return await client.inventory()


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def view_line(inv: pb.Inventory) -> str:
    """Which leases the worker showed this token (Inventory.view)."""
    from tf_remoting.proto import pb

    if inv.view == pb.INVENTORY_VIEW_OWN:
        return (f"view: own leases (principal {inv.viewer}); others as used capacity "
                "(in the devices' LEASED totals, without ids or names)")
    if inv.view == pb.INVENTORY_VIEW_ALL:
        return f"view: all principals (admin: principal {inv.viewer})"
    return "view: not stated by this worker (an older version: every principal's leases)"


def format_inventory(inv: pb.Inventory) -> str:
    from tf_jupyter.qos import qos_name
    from tf_remoting.proto import enum_name, pb
    from tf_remoting.quantities import format_bytes, utilization_text

    mode = enum_name(pb.IsolationMode, inv.default_mode)
    out = [f"worker {inv.worker_id} (tf-jupyter {inv.version}), backend {inv.backend}, default isolation "
           f"{mode}, compute oversubscription x{inv.oversubscription:g}", view_line(inv), "", "DEVICES"]
    rows = [["#", "DEVICE", "KIND", "VRAM LEASED / USED / TOTAL", "COMPUTE LEASED", "UTILIZATION", "MEMORY BY"]]
    for d in inv.devices:
        kind = "host device (no GPU)" if d.kind == pb.DEVICE_KIND_HOST else "GPU"
        rows.append([str(d.index), f"{d.name} {d.uuid}", kind,
                     f"{format_bytes(d.vram_leased)} / {format_bytes(d.vram_used)} / {format_bytes(d.vram_total)}",
                     f"{d.compute_leased} / {d.compute_capacity} %",
                     utilization_text(d.utilization, host=d.kind == pb.DEVICE_KIND_HOST),
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
                         qos_name(lease.qos),
                         datetime.fromtimestamp(lease.expires_at).strftime("%H:%M:%S"), kernels])
        out.append(_table(rows))
    return "\n".join(out)


def cmd_pool(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from tf_remoting.client import RemotingError

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


# --- profiles ---------------------------------------------------------------------------------

def profiles_dir(args: argparse.Namespace) -> Path:
    """--kernels-dir, else c.TfVgpu.profiles_dir from the Jupyter config, else this environment's kernels dir."""
    from tf_jupyter.profiles import env_kernels_dir

    if args.kernels_dir:
        return Path(args.kernels_dir)
    try:
        from tf_jupyter.config import TfVgpu, load_jupyter_config

        configured = TfVgpu(config=load_jupyter_config()).profiles_dir
    except Exception:  # a broken config file must not stop `profiles list`; Jupyter reports it itself
        configured = ""
    return Path(configured).expanduser() if configured else env_kernels_dir()


def _profile_row(p: Any) -> dict[str, Any]:
    return {**p.to_metadata(), "kernelspec": p.kernelspec_name, "display_name": p.display_name,
            "slice": p.slice_text}


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from tf_jupyter.profiles import ProfileError, ProfileStore

    directory = profiles_dir(args)
    try:
        found = ProfileStore(directory).list()
    except ProfileError as exc:
        print(f"tf-jupyter profiles list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"kernels_dir": str(directory), "profiles": [_profile_row(p) for p in found]},
                         indent=2, ensure_ascii=False))
        return 0
    if not found:
        print(f"no vGPU profiles in {directory} (add one: tf-jupyter profiles add NAME --vram 8Gi --compute 25)")
        return 0
    rows = [["NAME", "KERNELSPEC", "SLICE", "COUNT", "QOS", "DESCRIPTION"]]
    for p in found:
        what = "whole device" if p.whole_device else f"{_bytes(p.vram)} · {p.compute} %"
        rows.append([p.name, p.kernelspec_name, what, str(p.count), p.qos, p.description or "-"])
    print(_table(rows))
    print(f"\n({directory})")
    return 0


def _bytes(n: int) -> str:
    from tf_remoting.quantities import format_bytes

    return format_bytes(n)


def cmd_profiles_add(args: argparse.Namespace) -> int:
    from tf_jupyter.profiles import ProfileError, ProfileStore, QuantityError, parse_profile_spec

    try:
        profile = parse_profile_spec(args.name, args.vram, args.compute, args.count, args.qos,
                                     whole_device=args.whole_device, description=args.description)
        path = ProfileStore(profiles_dir(args)).add(profile, replace=args.replace)
    except (ProfileError, QuantityError) as exc:
        hint = " (use --replace to overwrite it)" if "already exists" in str(exc) else ""
        print(f"tf-jupyter profiles add: {exc}{hint}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tf-jupyter profiles add: cannot write the kernelspec: {exc}", file=sys.stderr)
        return 1
    print(f"added profile {profile.name!r}: kernelspec {profile.kernelspec_name} "
          f"\"{profile.display_name}\" ({path})")
    _warn_if_not_on_kernel_path(path.parent.parent)
    return 0


def _warn_if_not_on_kernel_path(directory: Path) -> None:
    from jupyter_core.paths import jupyter_path

    searched = {Path(p).resolve() for p in jupyter_path("kernels")}
    if directory.resolve() not in searched:
        print(f"note: Jupyter does not look for kernelspecs in {directory}, so this profile will not show in the "
              "kernel picker; use a directory on `jupyter kernelspec list`'s path (e.g. JUPYTER_DATA_DIR/kernels)",
              file=sys.stderr)


def cmd_profiles_remove(args: argparse.Namespace) -> int:
    from tf_jupyter.profiles import ProfileError, ProfileStore

    try:
        path = ProfileStore(profiles_dir(args)).remove(args.name)
    except ProfileError as exc:
        print(f"tf-jupyter profiles remove: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tf-jupyter profiles remove: {exc}", file=sys.stderr)
        return 1
    print(f"removed profile {args.name!r} ({path})")
    return 0


# --- lab --------------------------------------------------------------------------------------

def lab_argv(rest: list[str]) -> list[str]:
    """`python -m jupyterlab` with the tf_jupyter extension enabled whatever the install's config says.

    As root (containers, CI machines) JupyterLab refuses to start without --allow-root; add it and say so.
    """
    extra = []
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in rest:
        print("tf-jupyter lab: running as root, so passing --allow-root to JupyterLab", file=sys.stderr)
        extra.append("--allow-root")
    return [sys.executable, "-m", "jupyterlab", "--ServerApp.jpserver_extensions=tf_jupyter=True", *extra, *rest]


def cmd_lab(rest: list[str]) -> int:
    if any(a in ("-h", "--help", "--help-all") for a in rest):
        sys.stdout.write(LAB_PREFACE + "\n")
        if "--help-all" in rest:
            from tf_jupyter.config import TfVgpu

            sys.stdout.write(TfVgpu.class_get_help() + "\n\n")
    else:
        print("tf-jupyter lab: starting JupyterLab; vGPU kernels are the vgpu-* kernelspecs (the server log says "
              "which workers and device backend serve them)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = lab_argv(rest)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"tf-jupyter lab: cannot run JupyterLab ({' '.join(argv[:3])}): {exc}", file=sys.stderr)
        return 1
    return 0  # pragma: no cover - execv does not return


# --- main -------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from tf_jupyter.qos import DEFAULT_QOS, QOS_NAMES

    parser = argparse.ArgumentParser(prog="tf-jupyter", description="Fractional GPUs for Jupyter kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("lab", help="run JupyterLab with vGPU kernels; with no workers configured an embedded "
                   "worker on this machine serves them (arguments go to JupyterLab; see tf-jupyter lab --help)")
    sub.add_parser("worker", help="run the remoting runtime on this host (see tf-jupyter worker --help)")

    profiles = sub.add_parser("profiles", help="list, add or remove vGPU profiles (the vgpu-* kernelspecs)")
    psub = profiles.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    kernels_dir_help = ("kernelspec directory to use (default: c.TfVgpu.profiles_dir, else this environment's "
                        "share/jupyter/kernels)")

    plist = psub.add_parser("list", help="show the vGPU profiles: name, kernelspec, slice, count, QoS")
    plist.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plist.add_argument("--kernels-dir", help=kernels_dir_help)
    plist.set_defaults(func=cmd_profiles_list)

    padd = psub.add_parser("add", help="add a profile (a vgpu-NAME kernelspec)",
                           description="Add a vGPU profile: a vgpu-NAME kernelspec that asks for --vram on each "
                           "of --count devices and --compute percent of each.")
    padd.add_argument("name", metavar="NAME", help="profile name: lowercase letters, digits and dashes")
    padd.add_argument("--vram", help="VRAM per device, e.g. 8Gi or 512Mi")
    padd.add_argument("--compute", help="compute share of each device in percent, e.g. 25 or 25%%")
    padd.add_argument("--count", default="1", help="number of devices (default 1)")
    padd.add_argument("--qos", default=DEFAULT_QOS, help=f"one of {', '.join(QOS_NAMES)} (default {DEFAULT_QOS})")
    padd.add_argument("--description", default="", help="one line shown with the profile")
    padd.add_argument("--whole-device", action="store_true",
                      help="whole devices instead of a slice (leave out --vram and --compute)")
    padd.add_argument("--replace", action="store_true", help="overwrite a profile of the same name")
    padd.add_argument("--kernels-dir", help=kernels_dir_help)
    padd.set_defaults(func=cmd_profiles_add)

    prm = psub.add_parser("remove", help="remove a profile (deletes its vgpu-NAME kernelspec)")
    prm.add_argument("name", metavar="NAME", help="profile name")
    prm.add_argument("--kernels-dir", help=kernels_dir_help)
    prm.set_defaults(func=cmd_profiles_remove)

    pool = sub.add_parser("pool", help="show a worker's devices, leases and kernels")
    pool.add_argument("--worker", required=True, help="worker address, HOST:PORT or unix:/path")
    pool.add_argument("--token-file", required=True, help="file holding the token to use")
    pool.add_argument("--tls-ca", help="CA bundle to verify the worker's certificate (turns TLS on)")
    pool.add_argument("--tls-cert", help="client certificate for mTLS")
    pool.add_argument("--tls-key", help="client key for mTLS")
    pool.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the worker")
    pool.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pool.set_defaults(func=cmd_pool)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from tf_remoting.worker.cli import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["lab"]:
        return cmd_lab(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
