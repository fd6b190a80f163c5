"""The nanny holds client messages until its iopub subscription reaches the kernel.

ipykernel greets a new subscriber (`iopub_welcome`), which releases the hold at once; every
greeting kernel test covers that path. A kernel that never greets (a plain PUB socket, as older
ipykernels and many other kernels have) gets them shortly after the nanny's iopub connection is
up, not after the long fallback: tested here with a tiny kernel.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from tf_remoting.client.session import RemoteKernel

SILENT_KERNEL = Path(__file__).parent.parent / "kernels" / "silent_kernel.py"


async def test_a_kernel_that_never_greets_gets_held_messages_once_iopub_is_connected(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=1 << 30, compute=10, ttl_seconds=60)
        key = secrets.token_hex(16).encode()
        k = await client.start_kernel(lease.id, key=key,
                                      argv=[sys.executable, str(SILENT_KERNEL), "{connection_file}"])
        remote = RemoteKernel(client, k.id, key)
        await remote.connect()
        try:
            # Sent at once: the nanny holds it (no greeting can come), then forwards it.
            reply = await remote.request("kernel_info_request", {}, timeout=60)
            assert reply["content"]["implementation"] == "silent"
            # After the hold, messages go straight through.
            again = await remote.request("kernel_info_request", {}, timeout=30)
            assert again["content"]["implementation"] == "silent"
        finally:
            await remote.close()
            await client.release(lease.id)
        # Released because the connection was up, not by the 10 s fallback for a kernel never reached.
        assert "no greeting on iopub from the kernel, its iopub connection is up" in _nanny_logs(tf_worker)


def _nanny_logs(worker) -> str:
    return "\n".join(p.read_text(errors="replace") for p in Path(worker.root).rglob("*.log"))
