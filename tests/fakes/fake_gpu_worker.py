"""A real Worker (real ledger, real waiting line, the real gRPC server of worker/server.py and its
interceptor, in this process) whose GPUs come from the FAKE NVML of tests/fakes/fake_pynvml.py: this
machine has no NVIDIA driver, and exclusive leases, whole devices and backfill across devices need GPUs."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tf_remoting.client import RuntimeClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_pynvml import FakeNvml  # noqa: E402

from tf_remoting.devices.nvml import NvmlBackend  # noqa: E402
from tf_remoting.worker.config import WorkerConfig  # noqa: E402
from tf_remoting.worker.server import build_server  # noqa: E402
from tf_remoting.worker.state import Worker  # noqa: E402

GiB = 1 << 30
SIZES = (80, 40, 80, 48)  # GiB per fake GPU


@dataclass
class GpuWorker:
    worker: Worker
    address: str
    alice: str
    bob: str

    def client(self, token: str) -> RuntimeClient:
        return RuntimeClient(self.address, token)


@pytest.fixture
async def gpu_worker() -> AsyncIterator[GpuWorker]:
    root = Path(tempfile.mkdtemp(prefix="tfd-", dir="/tmp"))
    alice, bob = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (root / "tokens").write_text(f"alice {alice}\nbob {bob}\n")
    nvml = FakeNvml(gpus=len(SIZES))
    for gpu, size in zip(nvml.gpus, SIZES, strict=True):
        gpu.total = size * GiB
    worker = Worker(WorkerConfig(state_dir=str(root / "state"), token_file=str(root / "tokens"), backend="nvml"),
                    backend=NvmlBackend(nvml, mps_probe=lambda: True))
    server = build_server(worker)
    port = server.add_insecure_port("127.0.0.1:0")
    worker.address = f"127.0.0.1:{port}"
    worker.kernel_address = f"unix:{root / 'state' / 'kernels.sock'}"  # where kernels' %vgpu calls
    server.add_insecure_port(worker.kernel_address)
    await server.start()
    try:
        yield GpuWorker(worker, worker.address, alice, bob)
    finally:
        await server.stop(grace=None)
        worker.ledger.close()
        worker.backend.close()
        shutil.rmtree(root, ignore_errors=True)


