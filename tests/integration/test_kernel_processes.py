"""Every process a kernel starts is counted in its lease while it lives and is gone when the kernel
or the lease ends (defect 11), and a forked kernel's shared memory counts once (defect 12)."""

from __future__ import annotations

import asyncio
import json
import time

import psutil

from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

MiB = 1 << 20

# A child that holds memory, and a grandchild whose parent exits at once (a double fork): the
# grandchild is an orphan from its first instant. Both print their pid.
SPAWN = r'''
import json, os, subprocess, sys
hold = ("import os, sys, time\nb = bytearray({mib} * 2**20)\nb[::4096] = b'x' * len(b[::4096])\n"
        "os.write({fd}, f'{{os.getpid()}}\\n'.encode())\ntime.sleep(600)\n")
r, w = os.pipe()
os.set_inheritable(w, True)
child = subprocess.Popen([sys.executable, "-c", hold.format(mib=160, fd=w)], pass_fds=[w])
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        os.setsid()  # as a daemon does: its own session, out of the kernel's process group
        os.execv(sys.executable, [sys.executable, "-c", hold.format(mib=120, fd=w)])
    os._exit(0)
os.close(w)
os.waitpid(middle, 0)
with os.fdopen(r) as f:
    ready = {int(f.readline()), int(f.readline())}
grandchild = (ready - {child.pid}).pop()
print(json.dumps({"kernel": os.getpid(), "child": child.pid, "grandchild": grandchild}))
'''


async def lease_samples(watch, lease_id, count, after=0.0):
    samples = []
    async for update in watch:
        if update.time <= after:
            continue
        samples += [s for s in update.leases if s.lease_id == lease_id]
        if len(samples) >= count:
            return samples
    raise AssertionError("watch ended")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exists(pid: int) -> bool:
    """Alive, or a zombie nobody reaped: anything that still takes a pid."""
    return psutil.pid_exists(pid)


async def gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still taken after waiting up to timeout seconds for them to go."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if exists(pid)]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


async def spawn(remote) -> dict[str, int]:
    result = await remote.execute(SPAWN, timeout=60)
    assert result.reply["content"]["status"] == "ok", result.reply["content"]
    return json.loads(result.stdout().strip().splitlines()[-1])


async def test_children_and_double_forked_grandchildren_are_counted_and_go_with_the_lease(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, 2048 * MiB, 10)
        watch = client.watch(include_devices=False)
        try:
            before = (await asyncio.wait_for(lease_samples(watch, lease.id, 2), 20))[-1].vram_used
            pids = await spawn(remote)
            after = await asyncio.wait_for(lease_samples(watch, lease.id, 3, after=time.time() + 0.1), 20)
            # 160 MiB in the child, 120 MiB in the grandchild: both counted (before: the grandchild never).
            assert max(s.vram_used for s in after) >= before + 260 * MiB, (before, after)
            nanny = psutil.Process(pids["kernel"]).ppid()
            assert psutil.Process(pids["grandchild"]).ppid() == nanny  # adopted by the nanny, a subreaper
        finally:
            await watch.aclose()
            await remote.close()
            await client.release(lease.id)
        left = await gone([pids["kernel"], pids["child"], pids["grandchild"]])
        assert not left, f"processes of the released kernel still there: {left}"


async def test_watchdog_kill_takes_the_kernels_children(tf_worker_factory):
    worker = tf_worker_factory(["--host-vram", "4Gi", "--watchdog-grace", "1"]).start()
    async with worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, 200 * MiB, 10)
        watch = client.watch(include_devices=False)
        try:
            pids = await spawn(remote)  # 280 MiB in processes the kernel started, over 200 MiB

            async def killed() -> None:
                async for update in watch:
                    if any(e.lease_id == lease.id and e.kind == pb.EVENT_KIND_WATCHDOG_KILL for e in update.events):
                        return

            await asyncio.wait_for(killed(), 40)
            left = await gone([pids["kernel"], pids["child"], pids["grandchild"]])
            assert not left, f"processes of the killed kernel still there: {left}"
            for _ in range(100):
                state = await client.kernel_state(kernel.id)
                if state.status == pb.KERNEL_STATUS_EXITED:
                    break
                await asyncio.sleep(0.1)
            assert state.status == pb.KERNEL_STATUS_EXITED and state.exit_code == -9, state
        finally:
            await watch.aclose()
            await remote.close()
            await client.release(lease.id)


async def test_two_hundred_forked_sleepers_are_gone_after_release(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, 2048 * MiB, 10)
        try:
            result = await remote.execute(
                "import os, subprocess\n"
                "sleepers = [subprocess.Popen(['sleep', '600']) for _ in range(200)]\n"
                "print(os.getpid(), *[p.pid for p in sleepers])\n", timeout=60)
            assert result.reply["content"]["status"] == "ok", result.reply
            pids = [int(p) for p in result.stdout().split()]
            assert len(pids) == 201 and all(alive(p) for p in pids)
        finally:
            await remote.close()
            await client.release(lease.id)
        left = await gone(pids, timeout=15)
        assert not left, f"{len(left)} of 201 processes of the released kernel still there, e.g. {left[:5]}"


async def test_forked_workers_count_shared_memory_once(tf_worker):
    """A kernel with 200 MiB forks 4 workers that only sleep: PSS stays near 200 MiB (summed RSS: ~1 GiB)."""
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_remote_kernel(client, 4096 * MiB, 10)
        watch = client.watch(include_devices=False)
        try:
            result = await remote.execute(
                "import os\nblock = bytearray(200 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n")
            assert result.reply["content"]["status"] == "ok", result.reply
            alone = max(s.vram_used for s in await asyncio.wait_for(
                lease_samples(watch, lease.id, 2, after=time.time() + 0.1), 20))
            assert alone >= 200 * MiB
            result = await remote.execute(
                "import os, time\nworkers = []\n"
                "for _ in range(4):\n"
                "    pid = os.fork()\n"
                "    if pid == 0:\n"
                "        time.sleep(600)\n"
                "        os._exit(0)\n"
                "    workers.append(pid)\n"
                "print(*workers)\n")
            assert result.reply["content"]["status"] == "ok", result.reply
            workers = [int(p) for p in result.stdout().split()]
            rss = sum(psutil.Process(p).memory_info().rss for p in [*workers, psutil.Process(workers[0]).ppid()])
            assert rss > 4 * alone  # what summing RSS would say
            forked = await asyncio.wait_for(lease_samples(watch, lease.id, 3, after=time.time() + 0.1), 20)
            used = max(s.vram_used for s in forked)
            assert used < 1.5 * alone, f"{used / MiB:.0f} MiB measured for a {alone / MiB:.0f} MiB kernel and 4 forks"
        finally:
            await watch.aclose()
            await remote.close()
            await client.release(lease.id)
        left = await gone(workers)
        assert not left, f"forked workers of the released kernel still there: {left}"
