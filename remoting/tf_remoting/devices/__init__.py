"""Device backends: NVIDIA GPUs through NVML, or the host's CPU/RAM when there is no GPU."""

from __future__ import annotations

import logging
from typing import Any

from .base import DeviceBackend, DeviceError, DeviceInfo, DeviceSample, Usage
from .host import HostBackend

__all__ = [
    "DeviceBackend", "DeviceError", "DeviceInfo", "DeviceSample", "HostBackend", "Usage", "open_backend",
]

log = logging.getLogger("tf_remoting.devices")

KINDS = ("auto", "nvml", "host")


def open_backend(kind: str = "auto", *, nvml: Any = None) -> DeviceBackend:
    """Open a device backend.

    "auto": NVML when a driver answers and reports at least one GPU, else the host device.
    "nvml": NVML or DeviceError. "host": the host device. `nvml` injects a pynvml-like module.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown device backend {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "host":
        log.info("device backend: host (asked for)")
        return HostBackend()
    from .nvml import NvmlBackend

    if kind == "nvml":
        backend = NvmlBackend(nvml)
        log.info("device backend: nvml (asked for), %d GPU(s)", len(backend.devices()))
        return backend
    try:
        backend = NvmlBackend(nvml)
    except DeviceError as e:
        log.info("device backend: host, because NVML is not usable: %s", e)
        return HostBackend()
    log.info("device backend: nvml, the NVIDIA driver reports %d GPU(s)", len(backend.devices()))
    return backend
