"""Worker set-up: unix sockets, config files, start-up log, metrics, replay overflow, cgroups."""

from __future__ import annotations

import asyncio
import secrets
import urllib.request

import pytest

from tf_remoting.client.session import RemoteKernel
from tf_remoting.devices.cgroup import cgroup_v2_memory_root
from tf_remoting.pytest_plugin import WorkerProcess


async def test_unix_socket_config_file_and_startup_log(tf_worker_factory):
    worker = tf_worker_factory()
    config = worker.root / "worker.toml"
    config.write_text(f'[worker]\nlisten = "unix:{worker.root}/w.sock"\noversubscription = 2.0\n'
                      'host_vram = "2Gi"\nmetrics_port = 0\n')
    worker.extra_args = ["--config", str(config)]
    worker.listen = f"unix:{worker.root}/w.sock"  # flags win over the file: keep them the same
    worker.start()
    assert worker.address == f"unix:{worker.root}/w.sock"
    log = worker.log()
    assert "backend host" in log and "host device (CPU/RAM" in log
    assert "memory enforced by" in log and "plaintext" in log
    async with worker.client() as client:
        inv = await client.inventory()
        assert inv.oversubscription == 2.0
        assert inv.devices[0].vram_total == 2 << 30
        assert inv.devices[0].compute_capacity == 200
        # Oversubscribed compute: two 100 % slices fit on one device, VRAM still never does.
        a = await client.allocate(vram=1 << 30, compute=100)
        b = await client.allocate(vram=1 << 30, compute=100)
        await client.release(a.id)
        await client.release(b.id)
    port = int(log.split("metrics on http://127.0.0.1:")[1].split("/")[0])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "tf_vgpu_device_vram_total_bytes" in body
    assert "tf_vgpu_events_total" in body
    assert worker.stop() == 0


async def test_replay_overflow_is_reported_not_silent(tf_worker_factory):
    worker: WorkerProcess = tf_worker_factory(["--replay-messages", "100"]).start()
    async with worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        remote = RemoteKernel(client, kernel.id, key)
        await remote.connect()
        await remote.wait_ready(timeout=60)
        msg_id = await remote.send_execute(
            "import time\nfor i in range(500):\n    print(i, flush=True)\n    time.sleep(0.002)")
        while True:  # the cell is running once its first line arrives
            msg = await asyncio.wait_for(remote.iopub.get(), 20)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        worker.kill()
        # While the worker is down, the kernel publishes far more than the 100 messages kept.
        await asyncio.sleep(3)
        worker.start()
        for _ in range(200):
            if sum(remote.channels.dropped.values()):
                break
            await asyncio.sleep(0.1)
        assert sum(remote.channels.dropped.values()) > 0
        assert any(state == "dropped" for state, _ in remote.states)
        await remote.close()
        await client.release(lease.id)


@pytest.mark.skipif(cgroup_v2_memory_root() is None, reason="no writable cgroup v2 with the memory controller")
async def test_host_memory_enforced_by_cgroup(tf_worker):
    async with tf_worker.client() as client:
        inv = await client.inventory()
        lease = await client.allocate(vram=256 << 20, compute=10)
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key)
        state = tf_worker.kernel_states()[kernel.id]
        root = cgroup_v2_memory_root()
        group = root / f"tf-vgpu-{kernel.id}"
        assert str(state["kernel_pid"]) in (group / "cgroup.procs").read_text().split()
        assert (group / "memory.max").read_text().strip() == str(256 << 20)
        assert inv.devices[0].memory_enforcement == 2  # MEMORY_ENFORCEMENT_CGROUP
        await client.release(lease.id)
