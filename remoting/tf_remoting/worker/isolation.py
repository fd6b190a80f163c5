"""Isolation modes: one registry entry per mode says everything the worker needs to know about it.

An entry says on which device kinds the mode exists (and the device backend says whether a given
device offers it right now, e.g. MPS only while its control daemon runs), which framework variables
it adds to a kernel's slice environment, who enforces the memory limit, whether a lease in it may
be resized, and what caps the kernel gets. Adding a mode is adding an entry here (and its value
in the proto).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from tf_remoting.devices.base import DeviceInfo
from tf_remoting.proto import enum_name, enum_value, pb
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.leases import LeaseRecord

ExtraEnv = Callable[[LeaseRecord, DeviceInfo], dict[str, str]]


@dataclass(frozen=True)
class Mode:
    value: pb.IsolationMode
    device_kinds: frozenset[str]  # DeviceInfo.kind values the mode exists on
    enforcement: pb.MemoryEnforcement | None  # None: the device's own (DeviceInfo.memory_enforcement)
    extra_env: ExtraEnv  # framework variables added to the slice environment
    resizable: bool  # may a lease in this mode change its slice (Resize)?
    caps: str  # what holds a kernel to its slice, in words
    unavailable_hint: str = ""  # what to do when no device offers it

    @property
    def name(self) -> str:
        return enum_name(pb.IsolationMode, self.value)

    def memory_enforcement(self, device: DeviceInfo | None) -> pb.MemoryEnforcement:
        if self.enforcement is not None:
            return self.enforcement
        if device is None:
            return pb.MEMORY_ENFORCEMENT_WATCHDOG
        return device_enforcement(device)


def device_enforcement(device: DeviceInfo) -> pb.MemoryEnforcement:
    """The device backend's own enforcement (framework, cgroup, watchdog, mps) as the proto value."""
    try:
        return enum_value(pb.MemoryEnforcement, device.memory_enforcement)
    except ValueError:
        return pb.MEMORY_ENFORCEMENT_WATCHDOG


def _soft_env(lease: LeaseRecord, device: DeviceInfo) -> dict[str, str]:
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(s.device_uuid for s in lease.slices),
        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{lease.slices[0].vram / device.vram_total:.4f}",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }


def _mps_env(lease: LeaseRecord, device: DeviceInfo) -> dict[str, str]:
    first = lease.slices[0]
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(s.device_uuid for s in lease.slices),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(f"{i}={first.vram >> 20}M" for i in range(len(lease.slices))),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(min(100, first.compute)),
    }


def _exclusive_env(lease: LeaseRecord, device: DeviceInfo) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(s.device_uuid for s in lease.slices)}


def _host_env(lease: LeaseRecord, device: DeviceInfo) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ""}  # the host device is no GPU: hide any that exist


MODES: dict[int, Mode] = {m.value: m for m in (
    Mode(pb.ISOLATION_MODE_SOFT, frozenset({"gpu"}), None, _soft_env, resizable=True,
         caps="framework allocator caps (JAX, TensorFlow, PyTorch) in the kernel, and the watchdog"),
    Mode(pb.ISOLATION_MODE_MPS, frozenset({"gpu"}), pb.MEMORY_ENFORCEMENT_MPS, _mps_env, resizable=True,
         caps="CUDA MPS memory and thread limits",
         unavailable_hint="start the MPS control daemon on the host"),
    Mode(pb.ISOLATION_MODE_EXCLUSIVE, frozenset({"gpu"}), None, _exclusive_env, resizable=False,
         caps="none: the kernel has whole devices"),
    Mode(pb.ISOLATION_MODE_HOST, frozenset({"host"}), None, _host_env, resizable=True,
         caps="cgroup v2 memory.max and cpu.max where writable, else the watchdog on RSS"),
)}


def mode(value: int) -> Mode:
    """The registry entry of a known mode value (KeyError otherwise)."""
    return MODES[value]


def offered(devices: Sequence[DeviceInfo]) -> list[Mode]:
    """The modes at least one of these devices offers now."""
    return [m for m in MODES.values() if any(m.name in d.modes and d.kind in m.device_kinds for d in devices)]


def default_mode(devices: Sequence[DeviceInfo], configured: str) -> pb.IsolationMode:
    """The mode a lease gets when it asks for none: host on a host worker, else the configured one."""
    if devices and all(d.kind == "host" for d in devices):
        return pb.ISOLATION_MODE_HOST
    return enum_value(pb.IsolationMode, configured)


def resolve_mode(requested: int, devices: Sequence[DeviceInfo], configured: str) -> pb.IsolationMode:
    """The isolation mode a new lease really gets; never one the devices cannot give."""
    if requested and requested not in MODES:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"unknown isolation mode {requested}; use {', '.join(m.name for m in MODES.values())}")
    kinds = {d.kind for d in devices}
    if kinds == {"host"} and requested == pb.ISOLATION_MODE_SOFT:
        requested = pb.ISOLATION_MODE_HOST  # soft caps are what host mode gives a host device
    entry = MODES[requested] if requested else MODES[default_mode(devices, configured)]
    if not entry.device_kinds & kinds:
        if kinds == {"host"}:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"isolation mode {entry.name} needs an NVIDIA GPU; this worker serves the host "
                           "device (CPU/RAM), whose only mode is 'host'")
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"isolation mode '{entry.name}' is for {' or '.join(sorted(entry.device_kinds))} devices only")
    if entry not in offered(devices):
        hint = f" ({entry.unavailable_hint})" if entry.unavailable_hint else ""
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"isolation mode {entry.name} is not available on this worker{hint}")
    return entry.value


def enforcement(mode_value: int, device: DeviceInfo | None) -> pb.MemoryEnforcement:
    """Who holds a lease in this mode on this device to its VRAM (pb.MemoryEnforcement)."""
    entry = MODES.get(mode_value)
    if entry is None:
        return device_enforcement(device) if device else pb.MEMORY_ENFORCEMENT_WATCHDOG
    return entry.memory_enforcement(device)


def extra_env(lease: LeaseRecord, device: DeviceInfo) -> dict[str, str]:
    """The framework variables the lease's mode adds to its kernels' slice environment."""
    entry = MODES.get(lease.mode) or MODES[pb.ISOLATION_MODE_HOST if device.kind == "host" else pb.ISOLATION_MODE_SOFT]
    if device.kind == "host":  # whatever the record says, a host device has no GPU to show
        entry = MODES[pb.ISOLATION_MODE_HOST]
    return entry.extra_env(lease, device)
