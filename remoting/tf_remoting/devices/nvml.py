"""NVIDIA GPUs through NVML (the nvidia-ml-py package, imported as pynvml).

pynvml is imported only when this backend is opened, so a host without a driver fails here and
nowhere else. Tests inject a fake module (tests/fakes/fake_pynvml.py); the real path has gpu tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil

from .base import DeviceBackend, DeviceError, DeviceInfo, DeviceSample, Usage

log = logging.getLogger("tf_remoting.devices")

MPS_CONTROL = "nvidia-cuda-mps-control"


def mps_daemon_running() -> bool:
    """True when an MPS control daemon runs on this host (any user)."""
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == MPS_CONTROL:
            return True
    return False


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlBackend(DeviceBackend):
    """Every GPU NVML reports. Raises DeviceError when no driver answers or it reports no GPU."""

    name = "nvml"

    def __init__(self, nvml: Any = None, *, mps_probe: Callable[[], bool] = mps_daemon_running,
                 util_reuse_s: float = 0.5) -> None:
        if nvml is None:
            try:
                import pynvml
            except ImportError as e:
                raise DeviceError("the nvidia-ml-py package is not installed; "
                                  "`pip install nvidia-ml-py` to use NVIDIA GPUs") from e
            nvml = pynvml
        self._nvml = nvml
        self._mps_probe = mps_probe
        self._util_reuse_s = util_reuse_s
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise DeviceError(f"no NVIDIA driver answered (NVML: {e}); install the driver, or use "
                              "the host device (backend 'host')") from e
        self._open = True
        try:
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                raise DeviceError("the NVIDIA driver reports no GPU; use the host device (backend 'host')")
            self._handles: dict[str, Any] = {}
            self._static: list[DeviceInfo] = []
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                self._handles[uuid] = handle
                self._static.append(DeviceInfo(
                    uuid=uuid,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    kind="gpu",
                    index=index,
                    vram_total=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    multiprocessors=self._multiprocessors(handle),
                    modes=("soft", "exclusive"),
                    memory_enforcement="framework",
                ))
        except BaseException:
            self.close()
            raise
        self._lock = threading.Lock()
        # Per device: newest NVML sample timestamp seen, so each query returns only new samples,
        # and the last query's {pid: smUtil}, reused briefly so that several leases on one device
        # sampled in the same tick all see the same samples.
        self._last_ts: dict[str, int] = {}
        self._util: dict[str, tuple[float, dict[int, float]]] = {}

    def _multiprocessors(self, handle: Any) -> int:
        # nvmlDeviceGetNumGpuCores counts CUDA cores, not SMs; the attributes carry the SM count.
        try:
            return int(self._nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except (self._nvml.NVMLError, AttributeError):
            return 0

    def devices(self) -> list[DeviceInfo]:
        if not self._mps_probe():
            return list(self._static)
        return [replace(d, modes=("soft", "mps", "exclusive")) for d in self._static]

    def _handle(self, uuid: str) -> Any:
        try:
            return self._handles[uuid]
        except KeyError:
            raise DeviceError(f"no GPU {uuid!r} on this worker; it has {sorted(self._handles)}") from None

    def sample_devices(self) -> list[DeviceSample]:
        nvml = self._nvml
        samples = []
        for uuid, handle in self._handles.items():
            try:
                used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
                util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError as e:
                log.warning("GPU %s did not answer a sample (NVML: %s); left out of this sample", uuid, e)
                continue
            samples.append(DeviceSample(uuid=uuid, vram_used=used, utilization=util))
        return samples

    def usage(self, device_uuid: str, pids: set[int]) -> Usage:
        nvml = self._nvml
        handle = self._handle(device_uuid)
        vram = 0
        if pids:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory is not None:
                    vram += int(proc.usedGpuMemory)
        util_by_pid = self._process_util(device_uuid, handle)
        util = sum(u for pid, u in util_by_pid.items() if pid in pids)
        return Usage(vram_used=vram, utilization=min(100.0, float(util)))

    def _process_util(self, uuid: str, handle: Any) -> dict[int, float]:
        nvml = self._nvml
        now = time.monotonic()
        with self._lock:
            cached = self._util.get(uuid)
            if cached is not None and now - cached[0] < self._util_reuse_s:
                return cached[1]
            try:
                raw = nvml.nvmlDeviceGetProcessUtilization(handle, self._last_ts.get(uuid, 0))
            except (nvml.NVMLError_NotFound, nvml.NVMLError_NotSupported):
                raw = []  # no new samples since the last query (or a GPU without per-process data)
            newest: dict[int, tuple[int, float]] = {}
            for s in raw:
                if s.pid not in newest or s.timeStamp > newest[s.pid][0]:
                    newest[s.pid] = (s.timeStamp, float(s.smUtil))
            if raw:
                self._last_ts[uuid] = max(s.timeStamp for s in raw)
            by_pid = {pid: util for pid, (_, util) in newest.items()}
            self._util[uuid] = (now, by_pid)
            return by_pid

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                log.warning("nvmlShutdown failed: %s", e)
