"""The slice's environment: what the worker tells a kernel about the slice it runs in.

The worker builds a `SliceEnv` and writes it into the kernel's environment with `to_env()`; the
code inside the kernel (soft caps, `%vgpu`) reads it back with `SliceEnv.from_env()`. The
variable names live here and nowhere else. Framework variables that follow from the slice
(`CUDA_VISIBLE_DEVICES`, JAX's and MPS's limits) are the isolation mode's business, not this one's
(`tf_remoting.worker.isolation`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

PREFIX = "TF_VGPU_"


class NotInSlice(Exception):
    """This process was not started by a worker inside a slice (no or incomplete TF_VGPU_* variables)."""


@dataclasses.dataclass(frozen=True)
class SliceEnv:
    lease_id: str
    kernel_id: str
    principal: str
    device_uuids: tuple[str, ...]
    device_name: str
    device_kind: str  # "gpu" or "host"
    vram_limit: int  # bytes, per device
    vram_total: int  # bytes of the (first) device
    compute_limit: int  # percent of one device
    mode: str  # isolation mode name: soft, mps, exclusive, host
    memory_enforcement: str  # framework, mps, cgroup, watchdog
    worker: str  # address the kernel reaches its worker at
    token: str  # the kernel's own lease-scoped token
    shares_filesystem: bool

    # field -> variable name (without the prefix); one table, read and written by the two methods
    _NAMES = {
        "lease_id": "LEASE_ID", "kernel_id": "KERNEL_ID", "principal": "PRINCIPAL",
        "device_uuids": "DEVICE_UUIDS", "device_name": "DEVICE_NAME", "device_kind": "DEVICE_KIND",
        "vram_limit": "VRAM_LIMIT", "vram_total": "VRAM_TOTAL", "compute_limit": "COMPUTE_LIMIT",
        "mode": "MODE", "memory_enforcement": "MEMORY_ENFORCEMENT", "worker": "WORKER", "token": "TOKEN",
        "shares_filesystem": "SHARES_FILESYSTEM",
    }

    @property
    def on_gpu(self) -> bool:
        return self.device_kind == "gpu"

    @property
    def vram_fraction(self) -> float | None:
        """The slice's share of its device's VRAM, or None when the total is unknown."""
        if self.vram_total <= 0:
            return None
        return min(1.0, self.vram_limit / self.vram_total)

    def to_env(self) -> dict[str, str]:
        env = {}
        for field, name in self._NAMES.items():
            value = getattr(self, field)
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            env[PREFIX + name] = text
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SliceEnv:
        """Read the slice from an environment (default: this process's); NotInSlice if it has none."""
        env = os.environ if env is None else env
        missing = [PREFIX + name for name in cls._NAMES.values() if PREFIX + name not in env]
        if missing:
            raise NotInSlice("this kernel is not running in a vGPU slice (its environment lacks "
                             f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''})")
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            text = env[PREFIX + cls._NAMES[field.name]]
            if field.name in ("vram_limit", "vram_total", "compute_limit"):
                try:
                    values[field.name] = int(text)
                except ValueError:
                    raise NotInSlice(f"{PREFIX + cls._NAMES[field.name]}={text!r} is not a number") from None
            elif field.name == "device_uuids":
                values[field.name] = tuple(u for u in text.split(",") if u)
            elif field.name == "shares_filesystem":
                values[field.name] = text == "1"
            else:
                values[field.name] = text
        return cls(**values)  # type: ignore[arg-type]

    def resized(self, vram_limit: int, compute_limit: int) -> SliceEnv:
        return dataclasses.replace(self, vram_limit=vram_limit, compute_limit=compute_limit)
