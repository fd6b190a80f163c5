"""Defect 1: one failed step of a telemetry tick no longer stops telemetry for good.

A real Worker (host device, real ledger) whose ledger refuses one write, as a full disk does
(LedgerUnavailable, raised by the real ledger on SQLITE_FULL; injected here once, since this
machine cannot fill a disk for the test): the tick goes on with the other leases, the samples,
the watchdog, the metrics and the Watch subscribers, and retries the failed step next time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tf_remoting.devices import HostBackend
from tf_remoting.proto import pb
from tf_remoting.worker.auth import Caller
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.leases import KernelRecord, LedgerUnavailable
from tf_remoting.worker.state import Worker

MiB = 1 << 20


@pytest.fixture
def worker() -> Iterator[Worker]:
    root = Path(tempfile.mkdtemp(prefix="tft-", dir="/tmp"))
    w = Worker(WorkerConfig(state_dir=str(root / "state"), backend="host"), backend=HostBackend())
    yield w
    w.close()
    w.backend.close()
    shutil.rmtree(root, ignore_errors=True)


def fail_once(worker: Worker, method: str) -> list[Any]:
    """Make the ledger's `method` raise what a full disk makes it raise, the first time only."""
    real: Callable[..., Any] = getattr(worker.ledger, method)
    calls: list[Any] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise LedgerUnavailable(f"the lease ledger {worker.ledger.path} cannot be written "
                                    "(database or disk is full); ...")
        return real(*args, **kwargs)

    setattr(worker.ledger, method, flaky)
    return calls


def drain(queue: asyncio.Queue[pb.WatchResponse]) -> list[pb.WatchResponse]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def tick_errors(worker: Worker, step: str) -> float:
    value = worker.metrics.registry.get_sample_value("tf_vgpu_tick_errors_total", {"step": step})
    return value or 0.0


async def test_a_failed_reclaim_and_exit_write_do_not_stop_the_tick(worker: Worker) -> None:
    ledger = worker.ledger
    first = ledger.allocate("alice", vram=64 * MiB, compute=5, ttl_seconds=1)
    second = ledger.allocate("alice", vram=64 * MiB, compute=5, ttl_seconds=1)
    live = ledger.allocate("alice", vram=64 * MiB, compute=5, ttl_seconds=600)
    # A kernel the ledger believes running whose nanny wrote its exit: the tick records it.
    directory = worker.supervisor.directory("k" * 16)
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(json.dumps(
        {"status": "exited", "nanny_pid": 0, "kernel_pid": 0, "exit_code": 3, "socket": "", "time": time.time()}))
    ledger.add_kernel(KernelRecord(id="k" * 16, lease_id=live.id, principal="alice", nanny_pid=0, pid=0,
                                   status="running", exit_code=None, cwd="/tmp", environment="python3",
                                   started_at=time.time(), directory=str(directory),
                                   labels={}))
    queue: asyncio.Queue[pb.WatchResponse] = asyncio.Queue(maxsize=64)
    worker.subscribers.append((queue, Caller("alice"), True))
    await asyncio.sleep(1.2)  # the first two expire
    reclaims = fail_once(worker, "reclaim")
    exits = fail_once(worker, "update_kernel")

    await worker.tick()  # raised at the first failed write before, and the loop's ticks stopped

    assert len(reclaims) == 2 and len(exits) == 1
    failed = reclaims[0][0]
    other = second.id if failed == first.id else first.id
    active = {rec.id for rec in ledger.live().leases}
    assert other not in active and live.id in active and failed in active  # the failed one is retried
    responses = drain(queue)
    events = [e for r in responses for e in r.events]
    assert [(e.kind, e.lease_id) for e in events if e.kind == pb.EVENT_KIND_LEASE_EXPIRED] == [
        (pb.EVENT_KIND_LEASE_EXPIRED, other)]
    assert [e.kernel_id for e in events if e.kind == pb.EVENT_KIND_KERNEL_EXITED] == ["k" * 16]
    samples = [s for r in responses for s in r.leases]
    assert live.id in {s.lease_id for s in samples}  # Watch still got this tick's samples
    assert worker.metrics.registry.get_sample_value(
        "tf_vgpu_lease_vram_limit_bytes", {"lease": live.id, "principal": "alice",
                                           "device": live.slices[0].device_uuid}) == 64 * MiB
    assert tick_errors(worker, "reclaim") == 1 and tick_errors(worker, "kernel_exit") == 1

    await worker.tick()  # the next tick retries both

    assert failed not in {rec.id for rec in ledger.live().leases}
    assert ledger.get_kernel(None, "k" * 16).status == "exited"
    events = [e for r in drain(queue) for e in r.events]
    assert [e.lease_id for e in events if e.kind == pb.EVENT_KIND_LEASE_EXPIRED] == [failed]
    assert not [e for e in events if e.kind == pb.EVENT_KIND_KERNEL_EXITED]  # announced once
    assert tick_errors(worker, "reclaim") == 1


async def test_the_tick_marks_an_idle_lease_for_a_waiting_higher_qos_and_unmarks_it_when_active() -> None:
    """QoS release, the worker's part, through its real tick: the plan reads the tick's own pass of
    the line (no second read of the ledger), and a lease that becomes active loses its mark."""
    from tf_remoting.worker.line_store import Request

    GiB = 1 << 30
    root = Path(tempfile.mkdtemp(prefix="tft-", dir="/tmp"))
    worker = Worker(WorkerConfig(state_dir=str(root / "state"), backend="host", host_vram="4Gi",
                                 qos_release_idle=30.0), backend=HostBackend())
    try:
        low = worker.ledger.allocate("alice", vram=3 * GiB, compute=10, qos=pb.QOS_LOW, ttl_seconds=600)
        busy = worker.ledger.allocate("carol", vram=GiB, compute=10, qos=pb.QOS_LOW, ttl_seconds=600)
        worker.last_active.update({low.id: time.time() - 60, busy.id: time.time()})  # alice idle a minute
        now = time.time()
        request = Request("bob", "bob-high", pb.QOS_HIGH, 2 * GiB, 10, 1, "", False, 0, 600, "", {},
                          deadline=now + 600)
        lease, _ = worker.line.join(request, wait=True)
        assert lease is None  # 0 free: it waits

        await worker.tick()
        assert worker.release_for == {low.id: pb.QOS_HIGH}  # carol ran a cell just now: not idle

        worker.last_active[low.id] = time.time()  # alice's kernel ran a cell
        await worker.tick()
        assert worker.release_for == {}
    finally:
        worker.close()
        worker.backend.close()
        shutil.rmtree(root, ignore_errors=True)
