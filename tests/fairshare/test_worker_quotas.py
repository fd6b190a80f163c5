"""Quotas with real processes: a real worker (8 GiB host device) configured with [worker.quotas],
principals from its token file and from a FAKE JupyterHub API (for groups), real gRPC on 127.0.0.1,
real kernels (issue 12, point 1)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tf_remoting.client import OverQuota, ResourceExhausted, RuntimeClient
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_worker_hub_auth import FakeHub  # noqa: E402

GiB = 1 << 30
TIMEOUT = 30.0
QUOTAS = """
[worker.quotas.default]
vram = "3Gi"
kernels = 1

[worker.quotas.groups.big]
vram = "6Gi"

[worker.quotas.principals.bob]
vram = "unlimited"
"""


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess], hub: FakeHub) -> WorkerProcess:
    w = tf_worker_factory(["--host-vram", "8Gi", "--hub-api-url", hub.api_url])
    config = w.root / "worker.toml"
    config.write_text(QUOTAS)
    w.extra_args += ["--config", str(config)]
    return w.start()


async def test_over_quota_is_its_own_error_with_quota_held_and_asked(worker: WorkerProcess) -> None:
    async with worker.client() as alice, worker.client(worker.other_token) as bob:
        first = await alice.allocate(2 * GiB, 10)
        with pytest.raises(OverQuota) as err:
            await alice.allocate(2 * GiB, 10)
        exc = err.value
        assert not isinstance(exc, ResourceExhausted)  # there was room: 6 GiB free
        assert exc.code.name == "FAILED_PRECONDITION"
        detail = exc.detail
        assert (detail.principal, detail.quota.vram, detail.held.vram, detail.asked.vram) == \
            ("alice", 3 * GiB, 2 * GiB, 2 * GiB)
        assert list(detail.over) == ["vram"] and detail.source == "default"
        assert "may hold at most 3 GiB VRAM" in exc.message and "holds 2 GiB VRAM" in exc.message
        assert "asked for 2 GiB VRAM more" in exc.message
        # nothing was lost: alice still holds her first lease, and bob (no VRAM limit) gets the room
        assert [lease.id for lease in await alice.list_leases()] == [first.id]
        await bob.allocate(6 * GiB, 10)
        # the room is gone now: that is RESOURCE_EXHAUSTED, not a quota error
        with pytest.raises(ResourceExhausted):
            await alice.allocate(GiB, 10)

        # each principal sees its own quota and use in the inventory
        inv = (await alice.inventory()).quota
        assert (inv.quota.vram, inv.quota.kernels, inv.held.vram, inv.source) == (3 * GiB, 1, 2 * GiB, "default")
        assert not inv.quota.HasField("compute")  # no limit
        inv = (await bob.inventory()).quota
        assert not inv.quota.HasField("vram") and inv.held.vram == 6 * GiB
        assert inv.source == "principal bob, default"


async def test_resize_past_the_quota_is_refused_and_leaves_the_lease(worker: WorkerProcess) -> None:
    async with worker.client() as alice:
        lease = await alice.allocate(2 * GiB, 10)
        with pytest.raises(OverQuota) as err:
            await alice.resize(lease.id, vram=4 * GiB)
        assert err.value.detail.asked.vram == 2 * GiB and err.value.detail.held.vram == 2 * GiB
        [kept] = await alice.list_leases()
        assert (kept.slices[0].vram, kept.slices[0].compute) == (2 * GiB, 10)
        grown = await alice.resize(lease.id, vram=3 * GiB)  # up to the quota is fine
        assert grown.slices[0].vram == 3 * GiB


async def test_kernels_count_against_the_quota(worker: WorkerProcess) -> None:
    async with worker.client() as alice:
        lease = await alice.allocate(GiB, 10)
        kernel = await alice.start_kernel(lease.id, key=b"k" * 32, argv=[sys.executable, "-c",
                                                                          "import time; time.sleep(60)"])
        with pytest.raises(OverQuota) as err:
            await alice.start_kernel(lease.id, key=b"k" * 32)
        assert "at most 1 kernel(s)" in err.value.message and err.value.detail.held.kernels == 1
        assert (await alice.inventory()).quota.held.kernels == 1
        await alice.signal(kernel.id, pb.SIGNAL_KILL)

        async def exited() -> bool:
            return (await alice.kernel_state(kernel.id)).status == pb.KERNEL_STATUS_EXITED

        await until(exited, "the first kernel to exit")
        await until(lambda: _held_kernels(alice, 0), "the exited kernel to leave the count")
        second = await alice.start_kernel(lease.id, key=b"k" * 32, argv=[sys.executable, "-c", "pass"])
        assert second.id != kernel.id


async def test_a_request_may_wait_for_its_quota_but_not_for_more_than_all_of_it(worker: WorkerProcess) -> None:
    async with worker.client() as alice:
        first = await alice.allocate(2 * GiB, 10)
        with pytest.raises(OverQuota):  # 4 GiB > the 3 GiB quota: no wait could ever grant it
            await alice.allocate(4 * GiB, 10, wait=TIMEOUT)
        waiting = asyncio.create_task(alice.allocate(2 * GiB, 10, wait=TIMEOUT, request_id="second"))

        async def waits_for_quota() -> bool:
            entries = [e for e in (await alice.inventory()).waiting if e.request_id == "second"]
            return bool(entries) and entries[0].reason == "quota" and "over quota" in entries[0].message

        await until(waits_for_quota, "the second request to wait for alice's quota")
        await alice.release(first.id)
        second = await asyncio.wait_for(waiting, TIMEOUT)
        assert second.slices[0].vram == 2 * GiB


async def test_groups_from_the_hub_raise_the_default(worker: WorkerProcess, hub: FakeHub) -> None:
    carol, dave = hub.add("carol", groups=["big"]), hub.add("dave", groups=["other"])
    async with RuntimeClient(worker.address, carol) as c, RuntimeClient(worker.address, dave) as d:
        status = (await c.inventory()).quota
        assert (status.quota.vram, status.source) == (6 * GiB, "group big, default")
        await c.allocate(4 * GiB, 10)  # within her group's 6 GiB
        with pytest.raises(OverQuota) as err:
            await d.allocate(4 * GiB, 10)  # the default's 3 GiB
        assert err.value.detail.principal == "hub:dave" and err.value.detail.quota.vram == 3 * GiB


def test_bad_quota_config_stops_the_worker_with_a_sentence(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[worker.quotas.groups.big]\nvram = "6 gigs"\n')
    proc = subprocess.run([sys.executable, "-m", "tf_remoting", "--config", str(config), "--state-dir",
                           str(tmp_path / "state"), "--backend", "host"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "worker.quotas.groups.big.vram = '6 gigs' is not valid" in proc.stderr + proc.stdout


async def _held_kernels(client: RuntimeClient, n: int) -> bool:
    return (await client.inventory()).quota.held.kernels == n


async def until(check, what: str, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)




async def test_vgpu_shows_quota_use_and_refuses_resize_past_it(worker: WorkerProcess) -> None:
    from tf_remoting.client.session import start_remote_kernel

    async with worker.client() as alice:
        lease, _kernel, remote = await start_remote_kernel(alice, GiB, 10)
        try:
            result = await remote.execute("%vgpu")
            assert result.status == "ok", result.reply
            text = result.data()
            assert "quota (this worker)" in text
            assert "VRAM 1 GiB of 3 GiB" in text and "kernels 1 of 1" in text and "compute 10 % (no limit)" in text
            assert "set by default" in text
            result = await remote.execute("%vgpu resize --vram 4Gi")
            assert result.status == "error" and result.reply["content"]["ename"] == "UsageError"
            message = result.reply["content"]["evalue"]
            assert message.startswith("%vgpu resize: over quota: principal 'alice' may hold at most 3 GiB VRAM")
            assert "holds 1 GiB VRAM and asked for 3 GiB VRAM more" in message
            result = await remote.execute("%vgpu resize --vram 2Gi")
            assert result.status == "ok" and "VRAM 1 GiB -> 2 GiB" in result.stdout()
        finally:
            await remote.close()
            await alice.release(lease.id)


async def test_a_notebook_over_quota_says_quota_held_and_asked(worker: WorkerProcess, jupyter_server_factory) -> None:  # type: ignore[no-untyped-def]
    """Through a real Jupyter server (alice's token): the kernel start fails with the sentence, and
    the pool view carries alice's quota use for the panel."""
    server = jupyter_server_factory(workers=[worker]).start()
    status, pool = await server.request("GET", "/tf-vgpu/api/pool")
    assert status == 200
    [w] = pool["workers"]
    assert w["quota"] == {"vram": {"held": 0, "limit": 3 * GiB}, "compute": {"held": 0, "limit": None},
                          "kernels": {"held": 0, "limit": 1}, "devices": {"held": 0, "limit": None},
                          "source": "default"}
    status, body = await server.request("POST", "/api/sessions", {
        "path": "q.ipynb", "type": "notebook", "name": "q.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status >= 400, body
    message = body["message"] if isinstance(body, dict) else body
    assert "over quota: principal 'alice' may hold at most 3 GiB VRAM on this worker (set by default)" in message
    assert "it holds 0 B VRAM and asked for 4 GiB VRAM more" in message
    async with worker.client() as alice:
        assert list(await alice.list_leases()) == []  # nothing left behind


async def test_a_waiting_request_keeps_its_group_quota_across_a_restart(worker: WorkerProcess, hub: FakeHub) -> None:
    """carol's groups (from the hub) are kept with her waiting request: after a worker SIGKILL and
    restart, the line grants it under her group's 6 GiB before she calls again (not the default 3 GiB)."""
    carol = hub.add("carol", groups=["big"])
    async with worker.client(worker.other_token) as bob:
        held = await bob.allocate(6 * GiB, 10, ttl_seconds=180)  # bob (unlimited) leaves 2 GiB free
    async with RuntimeClient(worker.address, carol) as c:
        waiting = asyncio.create_task(c.allocate(4 * GiB, 10, wait=TIMEOUT, request_id="carol-1", ttl_seconds=120))

        async def carol_waits() -> bool:
            entries = list((await c.inventory()).waiting)
            return [(e.request_id, e.reason) for e in entries] == [("carol-1", "no_room")]

        await until(carol_waits, "carol's request to wait for room")
        worker.kill()
        waiting.cancel()  # carol's client is gone: she does not call again until the lease is granted
        await asyncio.gather(waiting, return_exceptions=True)
    worker.start()
    async with worker.client(worker.other_token) as bob:
        await bob.release(held.id)

        async def granted() -> bool:  # carol's 4 GiB are leased: bob sees them as leased on the device
            return [d.vram_leased for d in (await bob.inventory()).devices] == [4 * GiB]

        await until(granted, "the line to grant carol's request under her group's quota")
    async with RuntimeClient(worker.address, carol) as c:  # she comes back and collects it
        lease = await c.allocate(4 * GiB, 10, wait=TIMEOUT, request_id="carol-1")
        assert (lease.principal, lease.slices[0].vram) == ("hub:carol", 4 * GiB)
        assert [x.id for x in await c.list_leases()] == [lease.id]
