"""What every device backend offers the worker: an inventory, device samples, per-process usage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class DeviceError(RuntimeError):
    """A device backend could not be opened or could not answer; the message says what to do."""


@dataclass(frozen=True)
class DeviceInfo:
    """One leasable device: a GPU seen through NVML, or the host's CPU/RAM."""

    uuid: str
    name: str
    kind: str  # "gpu" | "host"
    index: int
    vram_total: int  # bytes (host device: RAM)
    multiprocessors: int  # SM count (host device: logical CPUs)
    modes: tuple[str, ...]  # of "soft", "mps", "exclusive", "host"
    memory_enforcement: str  # "framework" | "cgroup" | "watchdog" | "mps"


@dataclass(frozen=True)
class DeviceSample:
    """A whole device at one moment."""

    uuid: str
    vram_used: int  # bytes
    utilization: float  # percent of the device, 0..100


@dataclass(frozen=True)
class Usage:
    """What a set of processes uses on one device."""

    vram_used: int  # bytes
    utilization: float  # percent of the device, 0..100


class DeviceBackend(ABC):
    """A source of devices and of usage measurements. Not an enforcer: see ARCHITECTURE.md."""

    name: str  # "nvml" | "host"

    @abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices this backend can lease, in index order."""

    @abstractmethod
    def sample_devices(self) -> list[DeviceSample]:
        """Current memory use and utilization of every device."""

    @abstractmethod
    def usage(self, device_uuid: str, pids: set[int]) -> Usage:
        """What these processes use on that device now; vanished pids count as nothing."""

    def usages(self, requests: list[tuple[str, set[int]]]) -> list[Usage]:
        """usage() of each (device uuid, pids), in order: one sample of many leases at once.

        Backends override it where one call for all is cheaper than one call each.
        """
        return [self.usage(device_uuid, pids) for device_uuid, pids in requests]

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; idempotent."""
