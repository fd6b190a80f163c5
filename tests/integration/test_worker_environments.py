"""Kernel environments from the worker's TOML config: a kernel runs in the one it names."""

from __future__ import annotations

import json
import secrets
import sys

import pytest

from tf_remoting.client import InvalidArgument
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb

GiB = 1 << 30


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"  # JSON strings are TOML basic strings


@pytest.fixture
def worker(tf_worker_factory, tmp_path):
    # "marked": plain ipykernel (no %vgpu), with a python -X option the kernel can see.
    marked = [sys.executable, "-X", "tf_env_marked", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    config = tmp_path / "worker.toml"
    config.write_text(f"[worker]\nhost_vram = \"4Gi\"\nkernel_environments = {{ marked = {toml_list(marked)} }}\n")
    return tf_worker_factory(["--config", str(config)]).start()


async def test_kernel_runs_in_the_named_environment(worker):
    async with worker.client() as client:
        lease = await client.allocate(vram=GiB, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key, environment="marked")
        assert kernel.environment == "marked"
        remote = RemoteKernel(client, kernel.id, key)
        try:
            await remote.connect()
            await remote.wait_ready(timeout=60)
            result = await remote.execute("import os, sys; (sys._xoptions, os.environ['TF_VGPU_LEASE_ID'])")
            assert result.status == "ok", result.reply
            # The configured argv ran, and the kernel is still inside its slice.
            assert result.data() == repr(({"tf_env_marked": True}, lease.id))
            # Not the default environment: that one loads %vgpu.
            magic = await remote.execute("%vgpu status")
            assert magic.status == "error" and "`%vgpu` not found" in magic.reply["content"]["evalue"]
        finally:
            await remote.close()
        [listed] = (await client.list_leases())[0].kernels
        assert listed.id == kernel.id and listed.environment == "marked"
        assert listed.status == pb.KERNEL_STATUS_RUNNING
        await client.release(lease.id)


async def test_default_environment_is_still_there(worker):
    async with worker.client() as client:
        lease = await client.allocate(vram=GiB, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        assert kernel.environment == "python3"
        remote = RemoteKernel(client, kernel.id, key)
        try:
            await remote.connect()
            await remote.wait_ready(timeout=60)
            assert (await remote.execute("import sys; sys._xoptions")).data() == "{}"
            assert (await remote.execute("%vgpu status")).status == "ok"
        finally:
            await remote.close()
        await client.release(lease.id)


async def test_unknown_environment_is_invalid_and_lists_the_known_ones(worker):
    async with worker.client() as client:
        lease = await client.allocate(vram=GiB, compute=10)
        with pytest.raises(InvalidArgument) as refused:
            await client.start_kernel(lease.id, key=b"k" * 32, environment="cuda12")
        assert refused.value.message == "unknown kernel environment 'cuda12'; this worker has: marked, python3"
        assert (await client.list_leases())[0].kernels == []  # nothing was started
        await client.release(lease.id)
