"""The worker's disk fills up while it runs: it refuses new leases clearly and keeps serving the old ones.

Honest, not simulated: the worker's state directory is a small tmpfs of its own, and the test fills it
with a file until the kernel answers ENOSPC, exactly as a full disk does. (Root ignores file modes, so
a read-only directory cannot be made with chmod; a read-only remount is refused while SQLite holds
the ledger open for writing. A full disk is what an operator actually meets.) Mounting needs
CAP_SYS_ADMIN; without it the test is skipped and says so.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tf_remoting.client import Unavailable
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb

GiB = 1 << 30


def mount_tmpfs(path: Path, size: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the worker's state directory (needs CAP_SYS_ADMIN): "
                    f"{proc.stderr.strip() or proc.returncode}")


def fill(path: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC)."""
    filler = path / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # Smaller writes too, so not even a page is left.
    with open(filler, "ab", buffering=0) as f:
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


async def test_full_disk_refuses_new_leases_and_keeps_old_ones(tf_worker_factory):
    root = Path(tempfile.mkdtemp(prefix="tfd-", dir="/tmp"))
    state = root / "state"
    state.mkdir()
    mount_tmpfs(state, "16m")
    worker = None
    try:
        worker = tf_worker_factory(["--host-vram", "4Gi"], root=root).start()
        async with worker.client() as client:
            lease = await client.allocate(vram=GiB, compute=10, ttl_seconds=120)
            key = secrets.token_hex(16).encode()
            kernel = await client.start_kernel(lease.id, key=key)
            remote = RemoteKernel(client, kernel.id, key)
            try:
                await remote.connect()
                await remote.wait_ready(timeout=60)
                assert (await remote.execute("x = 20\nx + 1")).data() == "21"

                filler = fill(state)

                # A new lease is refused with a clear UNAVAILABLE...
                with pytest.raises(Unavailable) as info:
                    await client.allocate(vram=GiB, compute=10)
                message = info.value.message
                assert "cannot be written" in message, message
                assert "existing leases and kernels keep running" in message, message
                assert "disk" in message, message
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]

                # ... while the existing kernel keeps executing (and printing) ...
                result = await remote.execute("print('still here'); x * 2")
                assert result.status == "ok" and result.stdout() == "still here\n" and result.data() == "40"
                assert (await client.kernel_state(kernel.id)).status == pb.KERNEL_STATUS_RUNNING

                # ... reads still answer ...
                inventory = await client.inventory()
                assert inventory.devices[0].vram_leased == GiB
                assert [x.id for x in await client.list_leases()] == [lease.id]

                # ... and a renew, which must write the new expiry, is refused the same way: the lease
                # keeps its old expiry (120 s here) and its kernel keeps running meanwhile.
                with pytest.raises(Unavailable, match="cannot be written"):
                    await client.renew(lease.id)
                assert (await remote.execute("x")).data() == "20"

                # Space again: new leases work, nothing was lost.
                filler.unlink()
                second = await client.allocate(vram=GiB, compute=10)
                assert {x.id for x in await client.list_leases()} == {lease.id, second.id}
                renewed = await client.renew(lease.id)
                assert renewed.id == lease.id
                assert await client.release(second.id) is True
            finally:
                await remote.close()
            assert await client.release(lease.id) is True
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        # The factory's teardown kills nannies from state.json: stop the worker, kill them, then unmount.
        if worker is not None:
            worker.cleanup()
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=10)
        shutil.rmtree(root, ignore_errors=True)
