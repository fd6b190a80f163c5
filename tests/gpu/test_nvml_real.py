"""The NVML backend against a real NVIDIA driver: inventory and per-process memory.

Skipped where no driver answers. The same code paths without a driver: test_devices_nvml_fake.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tf_remoting.devices import open_backend
from tf_remoting.devices.nvml import NvmlBackend

pytestmark = pytest.mark.gpu

MiB = 1024**2

# Allocates 512 MiB on GPU 0 and holds it until stdin closes: torch when installed, else the CUDA
# driver API through ctypes (libcuda ships with the driver, so this needs nothing installed).
ALLOCATE_512MB = r"""
import ctypes, sys
size = 512 * 2**20
try:
    import torch
    x = torch.empty(size, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
except ImportError:
    cuda = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    assert cuda.cuInit(0) == 0
    assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
    assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size)) == 0
print("ready", flush=True)
sys.stdin.read()
"""


def nvidia_smi(*args: str) -> list[list[str]]:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH")
    out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


@pytest.fixture
def backend() -> Iterator[NvmlBackend]:
    b = NvmlBackend()
    yield b
    b.close()


def test_auto_picks_nvml() -> None:
    b = open_backend("auto")
    try:
        assert b.name == "nvml"
    finally:
        b.close()


def test_inventory_matches_nvidia_smi(backend: NvmlBackend) -> None:
    smi = nvidia_smi("--query-gpu=uuid,name,memory.total")
    devices = backend.devices()
    assert [d.uuid for d in devices] == [row[0] for row in smi]
    assert [d.name for d in devices] == [row[1] for row in smi]
    for d, row in zip(devices, smi, strict=True):
        assert d.kind == "gpu" and d.memory_enforcement == "framework"
        assert abs(d.vram_total / MiB - int(row[2])) <= 1
        assert d.multiprocessors > 0
        assert {"soft", "exclusive"} <= set(d.modes)
    for s in backend.sample_devices():
        assert 0 <= s.vram_used and 0.0 <= s.utilization <= 100.0


def test_process_memory_matches_nvidia_smi(backend: NvmlBackend) -> None:
    uuid = backend.devices()[0].uuid
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATE_512MB], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            pytest.fail(f"the allocating child did not start (exit {proc.poll()})")
        deadline = time.monotonic() + 30
        ours = 0
        while time.monotonic() < deadline:
            ours = backend.usage(uuid, {proc.pid}).vram_used
            if ours >= 512 * MiB:
                break
            time.sleep(0.5)
        assert ours >= 512 * MiB, f"usage() saw {ours / MiB:.0f} MiB"
        # In a container, nvidia-smi may show no pids; then there is nothing to compare with.
        smi = {int(pid): int(mem) for pid, mem in nvidia_smi("--query-compute-apps=pid,used_memory")
               if pid.isdigit() and mem.isdigit()}  # "[N/A]" where the driver cannot tell
        if proc.pid in smi:
            assert abs(ours / MiB - smi[proc.pid]) <= 64
        assert backend.usage(uuid, {proc.pid}).utilization >= 0.0
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
