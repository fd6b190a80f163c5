"""get_provisioner_info / load_provisioner_info: what a restarted Jupyter server needs to re-attach a vGPU kernel."""

from __future__ import annotations

import json
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_server.serverapp import ServerApp
from tornado.web import Application

from tf_jupyter.app import TfVgpuApp
from tf_jupyter.pool import Pool
from tf_jupyter.provisioner import VgpuProvisioner, server_extension

KERNELS = Path(__file__).parents[2] / "kernels"


def in_server(pool: Pool) -> AsyncKernelManager:
    """A kernel manager of a Jupyter server whose tf_jupyter extension runs `pool`, parented as jupyter_server
    parents them (ServerApp -> MultiKernelManager -> KernelManager -> provisioner); the extension sits in the
    server's tornado settings, as ExtensionApp puts it there."""
    server = ServerApp()
    extension = TfVgpuApp()
    extension.pool = pool
    server.web_app = Application(tf_vgpu=extension)
    return AsyncKernelManager(parent=AsyncMultiKernelManager(parent=server))


def provisioner(name: str, **traits: object) -> VgpuProvisioner:
    """A provisioner as KernelProvisionerFactory makes one for the kernelspec `name` of this repository."""
    spec = KernelSpec(resource_dir=str(KERNELS / name), **json.loads((KERNELS / name / "kernel.json").read_text()))
    config = spec.metadata["kernel_provisioner"]["config"]
    return VgpuProvisioner(kernel_spec=spec, **{**config, **traits})


async def live_info() -> dict:
    """The info of a provisioner whose kernel runs in a lease on a worker, as persisted (JSON)."""
    live = provisioner("vgpu-large", kernel_id="9f1c-kernel")
    live.connection_info = {"ip": "127.0.0.1", "shell_port": 50001, "key": "k3y", "transport": "tcp"}
    live.worker, live.lease_id = "10.0.0.7:50051", "lease-abc"
    live.pid, live.pgid, live.ip = 4242, 4242, "127.0.0.1"
    return json.loads(json.dumps(await live.get_provisioner_info()))


async def test_info_round_trip_restores_worker_lease_kernel_and_profile():
    info = await live_info()
    fresh = VgpuProvisioner()  # what a restarted server has before it loads the info
    assert (fresh.worker, fresh.lease_id, fresh.profile) == ("", "", "small")
    await fresh.load_provisioner_info(info)
    assert fresh.kernel_id == "9f1c-kernel"
    assert (fresh.worker, fresh.lease_id) == ("10.0.0.7:50051", "lease-abc")
    assert fresh.profile == "large"
    assert fresh.connection_info["shell_port"] == 50001 and fresh.pid == 4242
    assert server_extension(fresh) is None  # outside a server: no pool to tell


async def test_loading_in_a_server_shows_the_kernel_in_its_pool(tf_worker):
    info = await live_info()
    pool = Pool([tf_worker.address], tf_worker.token)
    pool.default_qos = "high"
    try:
        fresh = provisioner("vgpu-large", parent=in_server(pool))
        await fresh.load_provisioner_info(info)
        k = pool.kernels["9f1c-kernel"]
        assert (k.worker, k.lease_id, k.profile, k.qos) == ("10.0.0.7:50051", "lease-abc", "large", "high")
        # A second server's kernels land in that server's pool only: no process-wide pool any more.
        other = Pool([tf_worker.address], tf_worker.token)
        try:
            await provisioner("vgpu-large", parent=in_server(other)).load_provisioner_info(info)
            assert set(other.kernels) == {"9f1c-kernel"} and set(pool.kernels) == {"9f1c-kernel"}
        finally:
            await other.stop()
    finally:
        await pool.stop()
