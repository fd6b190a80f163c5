"""Utilization is said one way (issue 14, contract 2): percent of the whole device, the slice's
compute next to it as its limit, in %vgpu inside a real kernel and in `tf-jupyter pool`, against a
real worker (its host device: "of the host")."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from tf_remoting.client.session import start_remote_kernel
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 1 << 30
TIMEOUT = 60.0


async def test_vgpu_magic_and_pool_cli_say_utilization_the_same_way(tf_worker: WorkerProcess) -> None:
    async with tf_worker.client() as client:
        lease, _kernel, remote = await start_remote_kernel(client, GiB, 25)
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:  # until the worker has sampled the kernel once
                result = await remote.execute("%vgpu status")
                assert result.status == "ok", result.reply
                text, page = result.data() or "", result.data("text/html") or ""
                row = next(line for line in text.splitlines() if "utiliz" in line.lower())
                if "unknown" not in row:
                    break
                assert time.monotonic() < deadline, row
            assert re.search(r"\b\d+ % of the host · slice 25 %", row), row
            assert re.search(r"\b\d+ % of the host · slice 25 %", page), page
        finally:
            await remote.close()
            await client.release(lease.id)
    out = subprocess.run([sys.executable, "-m", "tf_jupyter.cli", "pool", "--worker", tf_worker.address,
                          "--token-file", str(tf_worker.token_file)], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    [device_row] = [line for line in out.stdout.splitlines() if "host device (no GPU)" in line]
    assert re.search(r"\b\d+ % of the host\b", device_row), out.stdout
