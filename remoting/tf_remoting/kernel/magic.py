"""`%vgpu`: the slice this kernel runs in, from inside the notebook.

Loaded by the kernel entry point (`--ext tf_remoting.kernel.magic`). It asks the worker, with the
kernel's own lease-scoped token, for live usage.
"""

from __future__ import annotations

import html
import os
import shlex
from dataclasses import dataclass
from typing import Any

from tf_remoting.quantities import format_bytes

HELP = """%vgpu — this kernel's vGPU slice

  %vgpu                 same as %vgpu status
  %vgpu status          device, slice, isolation mode, VRAM used / limit, utilization
  %vgpu help            this text

Not built yet (they arrive with the Jupyter-side work): watch, resize, push, pull.
"""

NOT_BUILT = {"watch", "resize", "push", "pull"}


class VgpuUsageError(ValueError):
    """Bad %vgpu arguments."""


@dataclass
class SliceStatus:
    device: str
    device_kind: str
    lease_id: str
    mode: str
    enforcement: str
    vram_limit: int
    compute: int
    vram_used: int | None
    utilization: float | None
    shares_filesystem: bool
    cwd: str

    def rows(self) -> list[tuple[str, str]]:
        used = "unknown (worker not reachable)" if self.vram_used is None else format_bytes(self.vram_used)
        util = "unknown" if self.utilization is None else f"{self.utilization:.0f} %"
        kind = "host device (no GPU)" if self.device_kind == "host" else "GPU"
        files = ("shared with the notebook" if self.shares_filesystem
                 else "on the worker (move files with %vgpu push / pull)")
        return [
            ("device", f"{self.device} [{kind}]"),
            ("slice", f"{format_bytes(self.vram_limit)} VRAM, {self.compute} % compute"),
            ("isolation", f"{self.mode} (memory enforced by {self.enforcement})"),
            ("VRAM used", f"{used} of {format_bytes(self.vram_limit)}"),
            ("utilization", util),
            ("lease", self.lease_id),
            ("files", f"{files}: {self.cwd}"),
        ]

    def __repr__(self) -> str:
        width = max(len(k) for k, _ in self.rows())
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                        f"{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f"<table class='tf-vgpu-status' aria-label='vGPU slice status'>{cells}</table>"


def _live_usage() -> tuple[int | None, float | None]:
    """(VRAM used, utilization) of this kernel's lease from the worker, or (None, None)."""
    address, token = os.environ.get("TF_VGPU_WORKER"), os.environ.get("TF_VGPU_TOKEN")
    if not address or not token:
        return None, None
    import grpc

    from tf_remoting.proto import pb, pb_grpc

    channel = grpc.insecure_channel(address)  # the worker's local unix socket for kernels
    try:
        leases = pb_grpc.RuntimeStub(channel).ListLeases(
            pb.ListLeasesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5).leases
    except grpc.RpcError:
        return None, None
    finally:
        channel.close()
    for lease in leases:
        if lease.id == os.environ.get("TF_VGPU_LEASE_ID"):
            return sum(s.vram_used for s in lease.slices), max((s.utilization for s in lease.slices), default=0.0)
    return None, None


def status() -> SliceStatus:
    env = os.environ
    if "TF_VGPU_LEASE_ID" not in env:
        raise VgpuUsageError("this kernel is not running in a vGPU slice (no TF_VGPU_LEASE_ID)")
    used, util = _live_usage()
    return SliceStatus(
        device=env.get("TF_VGPU_DEVICE_NAME", "?"), device_kind=env.get("TF_VGPU_DEVICE_KIND", "?"),
        lease_id=env["TF_VGPU_LEASE_ID"], mode=env.get("TF_VGPU_MODE", "?"),
        enforcement=env.get("TF_VGPU_MEMORY_ENFORCEMENT", "?"),
        vram_limit=int(env.get("TF_VGPU_VRAM_LIMIT", "0")), compute=int(env.get("TF_VGPU_COMPUTE_LIMIT", "0")),
        vram_used=used, utilization=util, shares_filesystem=env.get("TF_VGPU_SHARES_FILESYSTEM") == "1",
        cwd=os.getcwd())


def vgpu(line: str) -> Any:
    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise VgpuUsageError(f"%vgpu: {exc}") from None
    command = args[0] if args else "status"
    if command == "help":
        print(HELP)
        return None
    if command == "status":
        if len(args) > 1:
            raise VgpuUsageError("%vgpu status takes no arguments")
        return status()
    if command in NOT_BUILT:
        raise NotImplementedError(f"%vgpu {command} is not built yet; see %vgpu help")
    raise VgpuUsageError(f"unknown %vgpu command {command!r}; see %vgpu help")


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(vgpu, magic_kind="line", magic_name="vgpu")
