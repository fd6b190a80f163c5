"""The worker's waiting line with real processes: one worker (4 GiB host device), principals alice,
bob and an admin, real gRPC on 127.0.0.1 (issue 12, points 2 and 5)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable

import pytest

from tf_remoting.client import RuntimeClient
from tf_remoting.client.runtime import DeadlineExceeded, ResourceExhausted
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 1 << 30
TIMEOUT = 30.0


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    w = tf_worker_factory(["--host-vram", "4Gi", "--admin-principals", "admin"])
    w.admin_token = secrets.token_urlsafe(24)  # type: ignore[attr-defined]
    w.token_file.write_text(f"alice {w.token}\nbob {w.other_token}\nadmin {w.admin_token}\n")  # type: ignore[attr-defined]
    return w.start()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def waiting(client: RuntimeClient) -> list[pb.WaitingEntry]:
    return list((await client.inventory()).waiting)


async def test_order_across_principals_is_qos_then_fair_share_then_arrival(worker: WorkerProcess) -> None:
    async with worker.client() as alice, worker.client(worker.other_token) as bob, \
            worker.client(worker.admin_token) as admin:  # type: ignore[attr-defined]
        a1 = await alice.allocate(2 * GiB, 10)
        a2 = await alice.allocate(2 * GiB, 10)
        granted: list[str] = []

        async def ask(client: RuntimeClient, rid: str, vram: int, qos: int) -> pb.Lease:
            lease = await client.allocate(vram, 10, qos=qos, wait=TIMEOUT, request_id=rid)
            granted.append(rid)
            return lease

        tasks = {}
        for client, rid, vram, qos in [(bob, "bob-low", GiB, pb.QOS_LOW), (alice, "alice-med", 2 * GiB, pb.QOS_MEDIUM),
                                       (bob, "bob-med", 2 * GiB, pb.QOS_MEDIUM),
                                       (alice, "alice-crit", GiB, pb.QOS_CRITICAL)]:
            tasks[rid] = asyncio.create_task(ask(client, rid, vram, qos))
            await until(lambda rid=rid: _has(admin, rid), f"{rid} in the line")  # arrival order as listed
        # critical first; then bob before alice at equal QoS (alice holds the whole worker); low last
        line = await waiting(admin)
        assert [e.request_id for e in line] == ["alice-crit", "bob-med", "alice-med", "bob-low"]
        assert [e.position for e in line] == [1, 2, 3, 4]
        # bob sees his own entries in full, alice's only as position, QoS and size
        shown = await waiting(bob)
        assert [(e.own, e.request_id, e.principal) for e in shown] == [
            (False, "", ""), (True, "bob-med", "bob"), (False, "", ""), (True, "bob-low", "bob")]
        assert shown[0].qos == pb.QOS_CRITICAL and shown[0].slice.vram == GiB and shown[0].message == ""
        assert shown[1].reason == "no_room" and "room" in shown[1].message

        await alice.release(a1.id)  # 2 GiB free: alice-crit (1 GiB); bob-med (2 GiB) does not fit and blocks
        await until(lambda: _done(tasks["alice-crit"]), "alice-crit granted")
        await asyncio.sleep(1.0)  # a few ticks: nothing else may start (bob-low would fit, it is behind)
        assert granted == ["alice-crit"]
        assert [(e.request_id, e.reason) for e in await waiting(admin)] == [
            ("bob-med", "no_room"), ("alice-med", "no_room"), ("bob-low", "behind")]
        await alice.release(a2.id)  # 3 GiB free: bob-med, then alice-med does not fit: bob-low stays behind
        await until(lambda: _done(tasks["bob-med"]), "bob-med granted")
        await asyncio.sleep(1.0)
        assert granted == ["alice-crit", "bob-med"]
        await alice.release(tasks["alice-crit"].result().id)  # 2 GiB free: alice-med takes them
        await until(lambda: _done(tasks["alice-med"]), "alice-med granted")
        await bob.release(tasks["bob-med"].result().id)
        await until(lambda: _done(tasks["bob-low"]), "bob-low granted")
        assert granted == ["alice-crit", "bob-med", "alice-med", "bob-low"]
        leases = await admin.list_leases(all_principals=True)
        assert sorted(lease.principal for lease in leases) == ["alice", "bob"]


async def _has(client: RuntimeClient, request_id: str) -> bool:
    return any(e.request_id == request_id for e in await waiting(client))


async def _done(task: asyncio.Task[pb.Lease]) -> bool:
    return task.done()


async def test_a_low_qos_newcomer_does_not_overtake_a_waiting_critical_request(worker: WorkerProcess) -> None:
    """The issue's case: alice holds 2 GiB; bob's critical 3 GiB waits; alice's low 2 GiB must not start
    (it would fit, but on the device bob waits for). Failed before: it was granted at once."""
    async with worker.client() as alice, worker.client(worker.other_token) as bob:
        held = await alice.allocate(2 * GiB, 10)
        big = asyncio.create_task(bob.allocate(3 * GiB, 10, qos=pb.QOS_CRITICAL, wait=TIMEOUT, request_id="big"))
        await until(lambda: _has(bob, "big"), "bob's request in the line")
        with pytest.raises(ResourceExhausted) as refused:
            await alice.allocate(GiB, 10, qos=pb.QOS_LOW)
        assert "ahead of it in the line" in refused.value.message and "number 2" in refused.value.message
        # a stream of small low-QoS requests that wait: none starts before the critical one
        small = [asyncio.create_task(alice.allocate(GiB // 2, 5, qos=pb.QOS_LOW, wait=TIMEOUT, request_id=f"s{i}"))
                 for i in range(4)]
        await until(lambda: _count(alice, 5), "all in the line")
        assert not any(t.done() for t in small)
        await alice.release(held.id)
        lease = await asyncio.wait_for(big, TIMEOUT)
        assert lease.principal == "bob" and lease.slices[0].vram == 3 * GiB
        # 1 GiB left: two small ones fit and start now, the others wait for room
        await until(lambda: _count(alice, 2), "two small ones granted")
        for t in small:
            t.cancel()
        await asyncio.gather(*small, return_exceptions=True)


async def _count(client: RuntimeClient, n: int) -> bool:
    return len(await waiting(client)) == n


async def test_cancelled_and_timed_out_requests_leave_the_line(worker: WorkerProcess) -> None:
    async with worker.client() as alice, worker.client(worker.other_token) as bob:
        await alice.allocate(4 * GiB, 10)
        task = asyncio.create_task(bob.allocate(GiB, 10, wait=TIMEOUT, request_id="gone"))
        await until(lambda: _has(bob, "gone"), "in the line")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await until(lambda: _count(bob, 0), "the cancelled request left the line")
        with pytest.raises(DeadlineExceeded) as late:
            await bob.allocate(2 * GiB, 10, wait=1.0, request_id="late")
        assert "waited" in late.value.message and "largest free slice now is" in late.value.message
        assert await waiting(bob) == []


async def test_waiting_requests_survive_a_worker_sigkill_and_re_attach(worker: WorkerProcess) -> None:
    async with worker.client() as alice:
        held = await alice.allocate(4 * GiB, 10, ttl_seconds=120)
    async with worker.client(worker.other_token) as bob:
        kept = asyncio.create_task(bob.allocate(GiB, 10, wait=TIMEOUT, request_id="kept", ttl_seconds=60))
        await until(lambda: _has(bob, "kept"), "kept in the line")
        # asked with a short TTL and never re-attached: dropped after the restart
        lost = asyncio.create_task(bob.allocate(GiB, 10, wait=TIMEOUT, request_id="lost", ttl_seconds=2))
        await until(lambda: _count(bob, 2), "both in the line")
        worker.kill()
        lost.cancel()  # the client forgets it; the worker cannot hear it
        await asyncio.gather(lost, return_exceptions=True)
        worker.start()
        # the client asks again with the same request id (Unavailable meanwhile) and keeps its place
        async with worker.client(worker.other_token) as bob2:
            line = await waiting(bob2)
            assert [e.request_id for e in line][:1] == ["kept"]
            await until(lambda: _count(bob2, 1), "the unattached request dropped after its TTL")
            assert [e.request_id for e in await waiting(bob2)] == ["kept"]
            async with worker.client() as alice:
                await alice.release(held.id)
            lease = await asyncio.wait_for(kept, TIMEOUT)
            assert lease.principal == "bob"
            assert [x.id for x in await bob2.list_leases()] == [lease.id]  # granted exactly once
