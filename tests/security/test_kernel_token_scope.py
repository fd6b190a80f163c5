"""A kernel's own token (TF_VGPU_TOKEN) acts only on its own kernel and lease: every call it may make
(KERNEL_TOKEN_METHODS) refuses another principal's lease or kernel, another lease of the same
principal, and another kernel of its own lease, with PERMISSION_DENIED and a sentence; every other
call is refused outright. Real worker, real kernels, tokens read from inside the kernels."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass

import pytest

from tf_remoting.client import PermissionDenied, RemotingError, RuntimeClient
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess
from tf_remoting.worker.interceptor import KERNEL_TOKEN_METHODS

MiB = 1 << 20
CALL_TIMEOUT = 10.0


@dataclass
class Kernel:
    principal: str
    lease_id: str
    kernel_id: str
    token: str  # the kernel's own token, as the kernel sees it


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess(["--host-vram", "4Gi"]).start()
    try:
        yield w
    finally:
        w.cleanup()


async def start(client: RuntimeClient, principal: str, lease_id: str = "") -> Kernel:
    if not lease_id:
        lease_id = (await client.allocate(vram=64 * MiB, compute=1, ttl_seconds=600)).id
    key = secrets.token_hex(16).encode()
    kernel = await client.start_kernel(lease_id, key=key)
    remote = RemoteKernel(client, kernel.id, key, reconnect_timeout=10)
    await remote.connect()
    try:
        await remote.wait_ready(timeout=60)
        token = (await remote.execute("import os; print(os.environ['TF_VGPU_TOKEN'], end='')")).stdout()
    finally:
        await remote.close()
    assert len(token) >= 32
    return Kernel(principal, lease_id, kernel.id, token)


@pytest.fixture(scope="module")
def kernels(worker: WorkerProcess) -> dict[str, Kernel]:
    """alice: kernels a1 and a1b in one lease, a2 in another; bob: b1."""
    async def setup() -> dict[str, Kernel]:
        async with worker.client() as alice, worker.client(worker.other_token) as bob:
            a1 = await start(alice, "alice")
            a1b = await start(alice, "alice", a1.lease_id)
            return {"a1": a1, "a1b": a1b, "a2": await start(alice, "alice"), "b1": await start(bob, "bob")}

    return asyncio.run(setup())


async def refused(call, *fragments: str) -> str:
    with pytest.raises(PermissionDenied) as exc_info:
        await asyncio.wait_for(call, CALL_TIMEOUT)
    message = exc_info.value.message
    for fragment in fragments:
        assert fragment in message, message
    return message


# Whose token acts, and on what: another kernel of its own lease, another lease of its principal,
# another principal's. Both directions between the principals.
CASES = [("a1", "a1b"), ("a1", "a2"), ("a1", "b1"), ("b1", "a1"), ("a2", "a1b")]


@pytest.mark.parametrize(("holder", "target"), CASES, ids=[f"{h}-on-{t}" for h, t in CASES])
async def test_a_kernel_token_refuses_everything_that_is_not_its_own(worker, kernels, holder, target):
    me, other = kernels[holder], kernels[target]
    same_lease = me.lease_id == other.lease_id
    async with RuntimeClient(worker.address, me.token, timeout=CALL_TIMEOUT) as scoped:
        if not same_lease:
            for call in (scoped.resize(other.lease_id, vram=MiB, compute=1), scoped.renew(other.lease_id)):
                await refused(call, f"lease {other.lease_id}", "belongs to")
        for call in (scoped.kernel_state(other.kernel_id),
                     scoped.request_transfer(other.kernel_id, pb.TRANSFER_FROM_KERNEL, "a.txt", "a.txt", timeout=5)):
            await refused(call, "belongs to")
        # Seen: only its own lease, never the other's (nor its kernels).
        assert [le.id for le in await scoped.list_leases()] == [me.lease_id]
        inventory = await scoped.inventory()
        assert [le.id for le in inventory.leases] == [me.lease_id]
        shown = str(inventory) + str(await scoped.list_leases())
        assert other.kernel_id not in shown or same_lease
        assert me.token not in shown and other.token not in shown  # no API answer echoes a token
        # Calls outside KERNEL_TOKEN_METHODS are refused whatever they name.
        for call in (scoped.signal(other.kernel_id, pb.SIGNAL_INTERRUPT), scoped.release(other.lease_id),
                     scoped.get_file(other.kernel_id, "x"), scoped.put_file(other.kernel_id, "x", b"x")):
            await refused(call, "a kernel's own token cannot call")
        # Its own kernel and lease still work.
        assert (await scoped.kernel_state(me.kernel_id)).id == me.kernel_id
        assert (await scoped.renew(me.lease_id)).id == me.lease_id
    # Nothing happened to the other kernel.
    async with worker.client(worker.token if other.principal == "alice" else worker.other_token) as owner:
        assert (await owner.kernel_state(other.kernel_id)).status == pb.KERNEL_STATUS_RUNNING
        assert (await owner.renew(other.lease_id)).slices[0].vram == 64 * MiB


async def test_a_kernel_token_watches_only_its_own_lease(worker, kernels):
    me = kernels["a2"]
    async with RuntimeClient(worker.address, me.token, timeout=CALL_TIMEOUT) as scoped:
        seen: set[str] = set()
        samples = 0
        deadline = time.monotonic() + 5.0

        async def read() -> None:
            nonlocal samples
            async for update in scoped.watch(include_devices=True):
                assert not update.devices  # a kernel's watch carries no device samples
                seen.update(s.lease_id for s in update.leases)
                seen.update(e.lease_id for e in update.events if e.lease_id)
                samples += bool(update.leases)
                if samples >= 4 or time.monotonic() > deadline:
                    return

        await asyncio.wait_for(read(), 15)
    assert seen == {me.lease_id}, seen


async def test_resize_of_another_principals_lease_with_a_stolen_token_changes_nothing(worker, kernels):
    """The attack of issue 11: bob's kernel token used by alice to shrink bob's lease."""
    alice_kernel, bob_kernel = kernels["a1"], kernels["b1"]
    async with RuntimeClient(worker.address, alice_kernel.token, timeout=CALL_TIMEOUT) as scoped:
        await refused(scoped.resize(bob_kernel.lease_id, vram=MiB, compute=1),
                      "not the lease this kernel token belongs to")
    async with worker.client(worker.other_token) as bob:
        lease = next(le for le in await bob.list_leases() if le.id == bob_kernel.lease_id)
        assert lease.slices[0].vram == 64 * MiB


def test_the_kernel_token_methods_are_the_ones_tested():
    """A method added to KERNEL_TOKEN_METHODS needs its own refusal above."""
    assert KERNEL_TOKEN_METHODS == {"GetInventory", "ListLeases", "Resize", "KernelState", "Watch", "Renew",
                                    "RequestTransfer"}


@pytest.fixture(scope="module", autouse=True)
def _release_all(worker, kernels):
    yield

    async def release() -> None:
        async with worker.client() as alice, worker.client(worker.other_token) as bob:
            for k in kernels.values():
                with contextlib.suppress(RemotingError):
                    await (alice if k.principal == "alice" else bob).release(k.lease_id)

    asyncio.run(release())
