"""The pool over real workers: a DNS name gives one worker per address, RESOURCE_EXHAUSTED moves placement to the
next candidate, and the queue serves by QoS then arrival as capacity frees."""

from __future__ import annotations

import asyncio
import socket

from tf_jupyter.placement import Request, place
from tf_jupyter.pool import Pool
from tf_jupyter.pytest_plugin import free_port, wait_until
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 2**30
TIMEOUT = 30.0


def same_tokens(first: WorkerProcess, *others: WorkerProcess) -> None:
    """Let one token reach every worker (a pool has one token), before they start."""
    for other in others:
        other.token_file.write_text(first.token_file.read_text())
        other.token, other.other_token = first.token, first.other_token


def fake_dns(monkeypatch, name: str, hosts: list[str]) -> None:
    """`name` resolves to `hosts` (what a Kubernetes headless Service answers); other names as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in h], socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (h, int(port), 0, 0) if ":" in h else (h, int(port))) for h in hosts]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def test_dns_name_gives_a_worker_per_address(tf_worker_factory, monkeypatch):
    port = free_port()
    first, second = tf_worker_factory(["--host-vram", "4Gi"]), tf_worker_factory(["--host-vram", "4Gi"])
    first.listen, second.listen = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    same_tokens(first, second)
    first.start(), second.start()
    fake_dns(monkeypatch, "vgpu-workers.test", ["127.0.0.1", "127.0.0.2"])
    pool = Pool([], first.token, dns=f"vgpu-workers.test:{port}")
    try:
        await asyncio.wait_for(pool.start(watch=False), TIMEOUT)
        assert sorted(pool.workers) == [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]
        assert all(w.up for w in pool.workers.values()), [(w.address, w.error) for w in pool.workers.values()]
        assert len({w.inventory.worker_id for w in pool.workers.values()}) == 2  # two workers, not one twice
        assert len(pool.device_views()) == 2
    finally:
        await pool.stop()


async def test_dns_ipv6_addresses_are_bracketed(monkeypatch):
    fake_dns(monkeypatch, "vgpu-workers.test", ["fd00::7", "10.0.0.7"])
    pool = Pool([], "token", dns="vgpu-workers.test:50051")
    try:
        pool.workers.resolve_dns()
        assert sorted(pool.workers) == ["10.0.0.7:50051", "[fd00::7]:50051"]
    finally:
        await pool.stop()


async def test_resource_exhausted_moves_to_the_next_candidate(tf_worker_factory, monkeypatch):
    """The pool's first choice was taken by someone else meanwhile (its view is stale): its Allocate is refused
    and the lease lands on the next candidate."""
    workers = [tf_worker_factory(["--host-vram", "4Gi"]) for _ in range(2)]
    same_tokens(*workers)
    for w in workers:
        w.start()
    pool = Pool([w.address for w in workers], workers[0].token)
    try:
        await asyncio.wait_for(pool.start(watch=False), TIMEOUT)
        request = Request(2 * GiB, 10)
        first, second = [c.worker for c in place(request, pool.device_views(), "binpack")]
        [taken] = [w for w in workers if w.address == first]
        async with taken.client(taken.other_token) as bob:
            await bob.allocate(vram=4 * GiB, compute=10)  # behind the pool's back
        asked = []
        for w in pool.workers.values():
            allocate = w.client.allocate

            async def recording(*args, _address=w.address, _allocate=allocate, **kwargs):
                asked.append(_address)
                return await _allocate(*args, **kwargs)

            monkeypatch.setattr(w.client, "allocate", recording)
        queued: list[int] = []
        placed = await asyncio.wait_for(pool.allocate(request, timeout=5, on_queued=queued.append), TIMEOUT)
        assert queued == []  # placed at once, not after waiting in the queue for a refresh
        assert asked == [first, second]
        assert placed.worker == second and placed.lease.slices[0].vram == 2 * GiB
        assert pool.workers[first].inventory.devices[0].vram_leased == 4 * GiB  # the refusal refreshed the view
    finally:
        await pool.stop()


async def test_queue_serves_by_qos_then_arrival(tf_worker):
    pool = Pool([tf_worker.address], tf_worker.token, refresh_interval=1.0)
    whole = Request(4 * GiB, 10)  # the worker's whole 4 GiB: one at a time
    waiting: dict[str, asyncio.Task] = {}
    try:
        await asyncio.wait_for(pool.start(watch=False), TIMEOUT)
        holder = await asyncio.wait_for(pool.allocate(whole, qos="low"), TIMEOUT)
        for n, qos in enumerate(["low", "medium", "critical", "high", "medium"]):
            name = f"{qos}-{n}"
            waiting[name] = asyncio.create_task(pool.allocate(whole, qos=qos, labels={"name": name}, timeout=60))

            async def queued(count=n + 1):
                await pool.refresh()
                return len(pool.queue_json()) == count

            await wait_until(queued, TIMEOUT, 0.05)  # arrival order is push order
        order = ["critical-2", "high-3", "medium-1", "medium-4", "low-0"]
        # The worker's line holds the order; the queue view shows it with each request's labels.
        assert sorted((e["position"], e["labels"]["name"]) for e in pool.queue_json()) == [
            (position, name) for position, name in enumerate(order, 1)]
        served = []
        while waiting:
            await pool.release(holder.worker, holder.lease.id)
            done, _ = await asyncio.wait(waiting.values(), timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, (done, pool.queue_json())
            [name] = [n for n, t in waiting.items() if t in done]
            holder = waiting.pop(name).result()
            served.append(name)
        assert served == order
        await pool.release(holder.worker, holder.lease.id)
    finally:
        for task in waiting.values():
            task.cancel()
        await asyncio.gather(*waiting.values(), return_exceptions=True)
        await pool.stop()
