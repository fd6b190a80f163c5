"""A FAKE pynvml for tests on machines without an NVIDIA driver. Not NVML: no GPU is touched.

`FakeNvml()` stands in for the pynvml module: it has the functions NvmlBackend calls, two fake
GPUs, and setters for per-process memory and utilization samples. The error classes are the real
ones from nvidia-ml-py, so the backend's except-clauses are exercised as they are against a driver.
The real path is covered by tests/gpu/test_nvml_real.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

NVMLError = pynvml.NVMLError
NVMLError_NotFound = pynvml.NVMLError_NotFound
NVMLError_NotSupported = pynvml.NVMLError_NotSupported
NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument

GiB = 1024**3


@dataclass
class FakeGpu:
    uuid: str
    name: str
    total: int
    sms: int
    used: int = 0
    util: int = 0
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> usedGpuMemory
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, timeStamp, smUtil)
    attributes_supported: bool = True


class FakeNvml:
    """One fake driver. driver=False: nvmlInit raises like a host without the driver."""

    NVMLError = NVMLError
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded

    def __init__(self, driver: bool = True, gpus: int = 2) -> None:
        self.driver = driver
        self.initialized = 0
        self.gpus = [
            FakeGpu(uuid=f"GPU-fake-0000-000{i}", name="FAKE NVIDIA A100-SXM4-40GB", total=40 * GiB, sms=108)
            for i in range(gpus)
        ]
        self.util_queries: list[tuple[int, int]] = []  # (gpu index, lastSeenTimeStamp) per call

    # --- test setters -------------------------------------------------------------------------
    def set_process(self, index: int, pid: int, used_memory: int | None) -> None:
        self.gpus[index].processes[pid] = used_memory

    def remove_process(self, index: int, pid: int) -> None:
        self.gpus[index].processes.pop(pid, None)

    def add_util_sample(self, index: int, pid: int, sm_util: int, timestamp: int) -> None:
        self.gpus[index].samples.append((pid, timestamp, sm_util))

    # --- the pynvml surface -------------------------------------------------------------------
    def _check(self) -> None:
        if not self.initialized:
            raise NVMLError_Uninitialized()

    def _gpu(self, handle: int) -> FakeGpu:
        self._check()
        if not isinstance(handle, int) or not 0 <= handle < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError_DriverNotLoaded()
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return index  # the handle is the index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        return SimpleNamespace(total=g.total, used=g.used, free=g.total - g.used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle).util, memory=0)

    def nvmlDeviceGetAttributes(self, handle: int) -> SimpleNamespace:
        g = self._gpu(handle)
        if not g.attributes_supported:
            raise NVMLError_NotSupported()
        return SimpleNamespace(multiprocessorCount=g.sms)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        g = self._gpu(handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in g.processes.items()]

    def nvmlDeviceGetProcessUtilization(self, handle: int, timeStamp: int) -> list[SimpleNamespace]:
        g = self._gpu(handle)
        self.util_queries.append((handle, timeStamp))
        new = [SimpleNamespace(pid=p, timeStamp=t, smUtil=u, memUtil=0, encUtil=0, decUtil=0)
               for p, t, u in g.samples if t > timeStamp]
        if not new:
            raise NVMLError_NotFound()
        return new
