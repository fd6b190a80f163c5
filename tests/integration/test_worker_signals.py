"""Signal TERMINATE and KILL from the lease owner: the kernel stops and says how; then it is refused."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tf_remoting.client import FailedPrecondition
from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

GiB = 1 << 30


async def wait_exited(client, kernel_id: str, timeout: float = 30.0) -> pb.Kernel:
    async def poll() -> pb.Kernel:
        while True:
            state = await client.kernel_state(kernel_id)
            if state.status == pb.KERNEL_STATUS_EXITED:
                return state
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), timeout)


async def wait_channels_exit_code(remote, timeout: float = 30.0) -> int:
    """The exit code the Channels stream itself reports to the attached client."""
    async def poll() -> int:
        while remote.channels.exit_code is None:
            await asyncio.sleep(0.05)
        return remote.channels.exit_code

    return await asyncio.wait_for(poll(), timeout)


async def gone(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("which", "signum"), [(pb.SIGNAL_TERMINATE, signal.SIGTERM),
                                               (pb.SIGNAL_KILL, signal.SIGKILL)])
async def test_terminate_and_kill_stop_the_kernel(tf_worker, which, signum):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, vram=GiB, compute=10)
        try:
            pid = (await client.kernel_state(kernel.id)).pid
            assert pid > 0
            # A busy kernel: the signal must not wait for the cell to finish.
            await remote.send_execute("import time; time.sleep(120)")
            answer = await client.signal(kernel.id, which)
            assert answer.id == kernel.id and answer.lease_id == lease.id

            state = await wait_exited(client, kernel.id)
            assert state.exit_code == -signum  # negative: killed by that signal (README, KernelState)
            assert await wait_channels_exit_code(remote) == -signum
            await asyncio.wait_for(gone(pid), 10)  # really gone (reaped by its nanny), not just reported so

            # The kernel no longer runs: every signal is refused with FAILED_PRECONDITION and the code.
            for later in (pb.SIGNAL_INTERRUPT, pb.SIGNAL_TERMINATE, pb.SIGNAL_KILL):
                with pytest.raises(FailedPrecondition) as refused:
                    await client.signal(kernel.id, later)
                assert refused.value.message == f"kernel {kernel.id} is not running (exit code {-signum})"
        finally:
            await remote.close()
        # The lease outlives its kernel until released.
        assert [x.id for x in await client.list_leases()] == [lease.id]
        assert await client.release(lease.id) is True
