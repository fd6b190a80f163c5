"""`tf-jupyter pool` shows a worker's inventory as a table and as JSON; the worker CLI validates."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tf_jupyter.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


async def test_pool_table_and_json(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, profile="small")
        out = run_cli("pool", "--worker", tf_worker.address, "--token-file", str(tf_worker.token_file))
        assert out.returncode == 0, out.stderr
        assert "host device (no GPU)" in out.stdout
        assert lease.id in out.stdout and "small" in out.stdout and "1 GiB / 10 %" in out.stdout
        out = run_cli("pool", "--worker", tf_worker.address, "--token-file", str(tf_worker.token_file), "--json")
        data = json.loads(out.stdout)
        assert data["backend"] == "host"
        assert data["leases"][0]["id"] == lease.id
        await client.release(lease.id)


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
