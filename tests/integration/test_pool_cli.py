"""`tf-jupyter pool` shows a worker's inventory as a table and as JSON; the worker CLI validates."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tf_jupyter.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


async def test_pool_table_and_json(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, profile="small")
        kernel = await client.start_kernel(lease.id, key=secrets.token_hex(16).encode())
        other = await client.allocate(vram=1 << 30, compute=5)  # a lease without kernels
        out = run_cli("pool", "--worker", tf_worker.address, "--token-file", str(tf_worker.token_file))
        assert out.returncode == 0, out.stderr
        assert "host device (no GPU)" in out.stdout
        rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
        assert "small" in rows[lease.id] and "1 GiB / 10 %" in rows[lease.id]
        assert rows[lease.id].endswith(f"{kernel.id} (running)")  # the KERNELS column
        assert rows[other.id].endswith(" -")
        out = run_cli("pool", "--worker", tf_worker.address, "--token-file", str(tf_worker.token_file), "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["backend"] == "host"
        leases = {x["id"]: x for x in data["leases"]}
        assert leases.keys() == {lease.id, other.id}
        [listed] = leases[lease.id]["kernels"]
        assert listed["id"] == kernel.id
        assert listed["status"] == "KERNEL_STATUS_RUNNING"
        assert listed["lease_id"] == lease.id and int(listed["pid"]) == kernel.pid > 0
        assert "kernels" not in leases[other.id]  # empty lists are left out of proto JSON
        await client.release(lease.id)
        await client.release(other.id)


def test_pool_reports_unreachable_worker(tmp_path):
    token = tmp_path / "t"
    token.write_text("x" * 20 + "\n")
    out = run_cli("pool", "--worker", "127.0.0.1:1", "--token-file", str(token), "--timeout", "2")
    assert out.returncode == 1
    assert "127.0.0.1:1" in out.stderr and "UNAVAILABLE" in out.stderr


def test_worker_rejects_bad_settings(tmp_path):
    out = run_cli("worker", "--state-dir", str(tmp_path), "--isolation", "magic")
    assert out.returncode == 2
    assert "isolation must be one of soft, mps, exclusive" in out.stderr
    out = run_cli("worker", "--state-dir", str(tmp_path), "--host-vram", "4Gx")
    assert out.returncode == 2
    assert "4Gx" in out.stderr
