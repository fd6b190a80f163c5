"""The worker's inventory on a real GPU, against nvidia-smi and torch; and a GPU host whose NVML does
not answer, which must fall back to the host device and say why.

Without a GPU the same paths run with a fake pynvml: tests/unit/test_devices_nvml_fake.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gpu_support import MiB, nvidia_smi, torch_reading

from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.gpu

# A pynvml that behaves as on a host without the driver's libnvidia-ml: nvmlInit fails.
NO_DRIVER_PYNVML = '''
class NVMLError(Exception):
    pass
class NVMLError_LibraryNotFound(NVMLError):
    pass
class NVMLError_NotFound(NVMLError):
    pass
class NVMLError_NotSupported(NVMLError):
    pass
def nvmlInit():
    raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
def nvmlShutdown():
    pass
'''


async def test_inventory_matches_nvidia_smi_and_torch(nvml_worker: WorkerProcess) -> None:
    smi = nvidia_smi("--query-gpu=uuid,name,memory.total,index")
    props = torch_reading(
        "[(f'GPU-{p.uuid}', p.name, p.total_memory, p.multi_processor_count)\n"
        " for p in (torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count()))]")
    sm_by_uuid = {uuid: sms for uuid, _name, _total, sms in props}
    async with nvml_worker.client() as client:
        inv = await client.inventory()
    assert inv.backend == "nvml"
    assert [d.uuid for d in inv.devices] == [row[0] for row in smi], "every GPU, in nvidia-smi's order"
    for device, (uuid, name, total_mib, index) in zip(inv.devices, smi, strict=True):
        assert device.kind == pb.DEVICE_KIND_GPU
        assert device.name == name
        assert device.index == int(index)
        assert abs(device.vram_total / MiB - int(total_mib)) <= 1, (device.vram_total, total_mib)
        assert device.multiprocessors == sm_by_uuid[uuid], "SM count as CUDA reports it"
        assert pb.ISOLATION_MODE_SOFT in device.modes and pb.ISOLATION_MODE_EXCLUSIVE in device.modes
        assert device.memory_enforcement == pb.MEMORY_ENFORCEMENT_FRAMEWORK
        assert 0 <= device.vram_used <= device.vram_total
        assert 0.0 <= device.utilization <= 100.0


async def test_mig_state_is_followed(nvml_worker: WorkerProcess) -> None:
    """MIG off: each GPU is leased whole. MIG on: the MIG instances are what can be leased."""
    rows = nvidia_smi("--query-gpu=uuid,mig.mode.current,memory.total")
    async with nvml_worker.client() as client:
        inv = await client.inventory()
    listed = {d.uuid: d for d in inv.devices}
    for uuid, mig, total_mib in rows:
        if mig == "Enabled":
            # The parent GPU's memory belongs to its instances: leasing the parent would double-book it.
            assert uuid not in listed, f"MIG is on for {uuid} but the worker offers the whole GPU"
            assert any(u.startswith("MIG-") for u in listed), "MIG is on but no MIG instance is offered"
        else:  # "Disabled" or "[N/A]" (no MIG on this model)
            assert uuid in listed, f"{uuid} (MIG {mig}) is missing from the inventory"
            assert abs(listed[uuid].vram_total / MiB - int(total_mib)) <= 1


def _no_driver_worker(factory: type[WorkerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      backend: str) -> WorkerProcess:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(NO_DRIVER_PYNVML)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
    return factory(["--backend", backend])


async def test_without_nvml_auto_serves_the_host_device_and_says_why(
        tf_worker_factory: type[WorkerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _no_driver_worker(tf_worker_factory, tmp_path, monkeypatch, "auto").start()
    async with worker.client() as client:
        inv = await client.inventory()
    assert inv.backend == "host"
    assert [d.kind for d in inv.devices] == [pb.DEVICE_KIND_HOST]
    assert "host" in inv.devices[0].name.lower() and "gpu" not in inv.devices[0].name.lower()
    assert list(inv.devices[0].modes) == [pb.ISOLATION_MODE_HOST]
    log = worker.log()
    assert "device backend: host, because NVML is not usable" in log, log
    assert "NVML Shared Library Not Found" in log, log


def test_without_nvml_backend_nvml_refuses_to_start_with_a_sentence(
        tf_worker_factory: type[WorkerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _no_driver_worker(tf_worker_factory, tmp_path, monkeypatch, "nvml")
    with pytest.raises(RuntimeError) as info:
        worker.start(timeout=60)
    assert "no NVIDIA driver answered" in str(info.value), str(info.value)
    assert "backend 'host'" in str(info.value)
