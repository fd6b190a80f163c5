"""Soft mode on a real GPU: PyTorch inside the kernel cannot allocate past its slice.

Skipped where no NVIDIA driver answers or torch is not installed. The same caps without a GPU:
tests/unit/test_caps.py (fake torch), the slice's environment: tests/unit/test_slice_env.py.
"""

from __future__ import annotations

import ast
import importlib.util
import secrets

import pytest

from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.gpu

GiB = 1 << 30


# The kernel runs the worker's Python, which is this one: torch must be importable here.
if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)


@pytest.fixture
def gpu_worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    # The watchdog only warns: this test is about the framework cap, and the CUDA context (outside
    # PyTorch's allocator) can bring the process near a 1 GiB slice on its own.
    return tf_worker_factory(["--backend", "nvml", "--isolation", "soft", "--watchdog-action", "warn"]).start()


async def test_torch_cannot_allocate_past_a_soft_slice(gpu_worker: WorkerProcess) -> None:
    async with gpu_worker.client() as client:
        inv = await client.inventory()
        assert inv.backend == "nvml" and inv.devices[0].kind == pb.DEVICE_KIND_GPU
        lease = await client.allocate(vram=GiB, compute=10, mode=pb.ISOLATION_MODE_SOFT)
        assert lease.mode == pb.ISOLATION_MODE_SOFT
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, kernel.id, key)
        try:
            await remote.connect()
            await remote.wait_ready(timeout=120)
            setup = await remote.execute(
                "import os, torch\n"
                "free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)\n"
                "(torch.cuda.is_available(), torch.cuda.device_count(), free // 2**20, "
                "os.environ['CUDA_VISIBLE_DEVICES'])", timeout=180)
            assert setup.status == "ok", setup.reply
            available, count, free_mib, visible = ast.literal_eval(setup.data() or "")
            if not available:
                pytest.skip("torch is installed without CUDA support")
            assert count == 1 and visible == lease.slices[0].device_uuid  # only the slice's GPU
            if free_mib < 3 * 1024:
                pytest.skip(f"the GPU has only {free_mib} MiB free: a refused 2 GiB would prove nothing")

            applied = await remote.execute("from tf_remoting.kernel.caps import applied; applied['torch']")
            assert "set_per_process_memory_fraction" in (applied.data() or ""), applied.reply

            inside = await remote.execute(
                "small = torch.empty(512 * 2**20, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize(); "
                "small.numel()", timeout=120)
            assert inside.status == "ok", inside.reply
            assert inside.data() == str(512 * 2**20)

            # 2 GiB fits the GPU (checked above) but not the 1 GiB slice: PyTorch refuses it.
            past = await remote.execute("big = torch.empty(2 * 2**30, dtype=torch.uint8, device='cuda')",
                                        timeout=120)
            assert past.status == "error", past.reply
            content = past.reply["content"]
            assert content["ename"] == "OutOfMemoryError" or "out of memory" in content["evalue"], content

            # The kernel is fine afterwards, and what fitted is still there.
            after = await remote.execute("small.numel()")
            assert after.data() == str(512 * 2**20)
        finally:
            await remote.close()
            await client.release(lease.id)
