"""Soft caps on a real GPU: in a 2 GiB slice, PyTorch, JAX and CuPy each refuse a 4 GiB allocation
with their own out-of-memory error, inside the cell; the kernel lives on and 1 GiB still works.

Each framework runs in a fresh kernel (the caps are installed when it is imported). Without a GPU:
tests/unit/test_caps.py with fake frameworks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from gpu_support import GiB, kernel_in_slice, requires_module

from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.gpu


@dataclass(frozen=True)
class Framework:
    module: str
    setup: str  # imports, and a check that it runs on the GPU (raises otherwise)
    allocate: str  # {n}: bytes; the allocation must really happen before the cell ends
    errors: tuple[str, ...]  # the framework's own out-of-memory exception names
    marks: tuple[str, ...]  # words one of which its message contains
    applied: str  # what caps.applied says for it ("" when the cap is an environment variable)


FRAMEWORKS = {
    "torch": Framework(
        "torch", "import torch\nassert torch.cuda.is_available(), 'torch has no CUDA'",
        "x{tag} = torch.empty({n}, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize()",
        ("OutOfMemoryError",), ("out of memory",), "set_per_process_memory_fraction"),
    "jax": Framework(
        "jax", "import jax, jax.numpy as jnp\nassert jax.default_backend() == 'gpu', jax.default_backend()",
        "x{tag} = jnp.ones(({n},), dtype=jnp.uint8); x{tag}.block_until_ready()",
        ("XlaRuntimeError", "JaxRuntimeError"), ("RESOURCE_EXHAUSTED", "out of memory"),
        "XLA_PYTHON_CLIENT_MEM_FRACTION"),
    "cupy": Framework(
        "cupy", "import cupy\ncupy.cuda.runtime.getDeviceCount()",
        "x{tag} = cupy.ones({n}, dtype=cupy.uint8); cupy.cuda.Device().synchronize()",
        ("OutOfMemoryError",), ("out of memory",), "memory pool limit"),
}


@pytest.mark.parametrize("name", sorted(FRAMEWORKS))
async def test_framework_raises_its_own_oom_past_a_2gib_slice_and_the_kernel_survives(
        nvml_worker: WorkerProcess, name: str) -> None:
    fw = FRAMEWORKS[name]
    requires_module(fw.module)
    async with nvml_worker.client() as client, kernel_in_slice(client, 2 * GiB, 20) as k:
        assert await k.value(fw.setup + "\n'ready'", timeout=240) == 'ready'
        applied = await k.value(f"from tf_remoting.kernel.caps import applied\napplied.get({name!r}, '')")
        assert fw.applied in applied, f"the {name} cap was not installed: caps.applied says {applied!r}"

        past = await k.run(fw.allocate.format(n=4 * GiB, tag="big"), timeout=240)
        assert past.status == "error", f"{name} allocated 4 GiB in a 2 GiB slice"
        content = past.reply["content"]
        assert content["ename"] in fw.errors, f"{name} raised {content['ename']}: {content['evalue']}"
        assert any(mark.lower() in content["evalue"].lower() for mark in fw.marks), content["evalue"]

        assert await k.value("21 * 2") == 42, "the kernel did not survive the refused allocation"
        fits = await k.run(fw.allocate.format(n=1 * GiB, tag="small") + "\n'ok'", timeout=240)
        assert fits.status == "ok", f"{name} could not allocate 1 GiB in a 2 GiB slice: {fits.reply['content']}"
