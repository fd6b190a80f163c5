"""Principals seen apart (issue 11, point 3): on one real worker with principals alice, bob and an
admin, each principal sees its own leases and kernels in full and the other's only as used capacity,
through GetInventory, ListLeases, Watch, /metrics, `tf-jupyter pool`, and a Jupyter server's
/tf-vgpu/api/ views; the admin sees both; a kernel token found in alice's kernel sees only her lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tf_jupyter.pytest_plugin import JupyterServerProcess, wait_until
from tf_remoting.client import PermissionDenied, RuntimeClient
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

MiB, GiB = 1 << 20, 1 << 30
TIMEOUT = 60.0


@dataclass
class Tenant:
    name: str
    token: str
    lease: pb.Lease
    kernel: pb.Kernel
    remote: RemoteKernel

    def secrets(self) -> list[str]:
        """What no one else may learn: ids, the notebook path label, the kernel's directory, the name."""
        return [self.lease.id, self.kernel.id, f"{self.name}/private-plan.ipynb", self.kernel.cwd, self.name]


def leaked(message: Any, tenant: Tenant) -> list[str]:
    text = str(message)
    return [s for s in tenant.secrets() if s and s in text]


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    """alice, bob and admin (an admin_principal) on a host device offering 8 GiB: two vgpu-small fit."""
    w = tf_worker_factory(["--host-vram", "8Gi", "--admin-principals", "admin", "--metrics-port", "0"])
    w.admin_token = secrets.token_urlsafe(24)  # type: ignore[attr-defined]
    w.token_file.write_text(f"alice {w.token}\nbob {w.other_token}\nadmin {w.admin_token}\n")  # type: ignore[attr-defined]
    return w.start()


def metrics_url(worker: WorkerProcess) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", worker.log())
    assert found, worker.log()
    return found.group(1)


def scrape(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@contextlib.asynccontextmanager
async def tenant(worker: WorkerProcess, name: str, token: str) -> AsyncIterator[Tenant]:
    async with RuntimeClient(worker.address, token, timeout=TIMEOUT) as client:
        lease = await client.allocate(vram=512 * MiB, compute=10, profile="small",
                                      labels={"notebook": f"{name}/private-plan.ipynb"})
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease.id, key=key, labels={"notebook": f"{name}/private-plan.ipynb"})
        remote = RemoteKernel(client, kernel.id, key)
        try:
            await remote.connect()
            await remote.wait_ready(timeout=TIMEOUT)
            yield Tenant(name, token, lease, kernel, remote)
        finally:
            await remote.close()
            with contextlib.suppress(Exception):
                await client.release(lease.id)


@pytest.fixture
async def tenants(worker: WorkerProcess) -> AsyncIterator[tuple[Tenant, Tenant]]:
    async with tenant(worker, "alice", worker.token) as alice, tenant(worker, "bob", worker.other_token) as bob:
        yield alice, bob


async def watch_until(client: RuntimeClient, done: Any, all_leases: bool = False,
                      act: Any = None) -> list[pb.WatchResponse]:
    """Every Watch update up to (and with) the first for which done(update); act() runs once subscribed."""
    seen: list[pb.WatchResponse] = []
    stream = client.watch(include_devices=True, all_leases=all_leases)

    async def read() -> None:
        async for update in stream:
            seen.append(update)
            if len(seen) == 1 and act is not None:
                await act()
            if done(update):
                return

    try:
        await asyncio.wait_for(read(), TIMEOUT)
    finally:
        await stream.aclose()
    return seen


def event_of(kind: int, lease_id: str) -> Any:
    return lambda u: any(e.kind == kind and e.lease_id == lease_id for e in u.events)


async def test_each_principal_sees_its_own_and_the_other_only_as_capacity(worker, tenants):
    alice, bob = tenants
    for me, other in ((alice, bob), (bob, alice)):
        async with RuntimeClient(worker.address, me.token, timeout=TIMEOUT) as client:
            inv = await client.inventory()
            assert not leaked(inv, other), leaked(inv, other)
            assert inv.view == pb.INVENTORY_VIEW_OWN and inv.viewer == me.name
            [lease] = inv.leases
            assert lease.id == me.lease.id and lease.principal == me.name
            assert lease.labels["notebook"] == f"{me.name}/private-plan.ipynb"
            assert [(k.id, k.cwd) for k in lease.kernels] == [(me.kernel.id, me.kernel.cwd)]
            # The other's lease still counts as used capacity, anonymously.
            [device] = inv.devices
            assert device.vram_leased == 2 * 512 * MiB and device.compute_leased == 20

            assert [x.id for x in await client.list_leases()] == [me.lease.id]
            with pytest.raises(PermissionDenied, match="ListLeases all_principals .* needs an admin"):
                await client.list_leases(all_principals=True)
            with pytest.raises(PermissionDenied, match="Watch all_leases .* needs an admin"):
                await watch_until(client, lambda u: True, all_leases=True)


async def test_the_admin_sees_every_principal(worker, tenants):
    alice, bob = tenants
    async with RuntimeClient(worker.address, worker.admin_token, timeout=TIMEOUT) as admin:
        inv = await admin.inventory()
        assert inv.view == pb.INVENTORY_VIEW_ALL and inv.viewer == "admin"
        by_id = {lease.id: lease for lease in inv.leases}
        assert by_id.keys() == {alice.lease.id, bob.lease.id}
        assert by_id[bob.lease.id].labels["notebook"] == "bob/private-plan.ipynb"
        assert [k.id for k in by_id[bob.lease.id].kernels] == [bob.kernel.id]
        assert await admin.list_leases() == [], "without all_principals: the admin's own (none)"
        assert {x.id for x in await admin.list_leases(all_principals=True)} == {alice.lease.id, bob.lease.id}

        async def resize_both() -> None:
            async with RuntimeClient(worker.address, bob.token, timeout=TIMEOUT) as b:
                await b.resize(bob.lease.id, vram=256 * MiB, compute=10)
            async with RuntimeClient(worker.address, alice.token, timeout=TIMEOUT) as a:
                await a.resize(alice.lease.id, vram=256 * MiB, compute=10)

        seen = await watch_until(admin, event_of(pb.EVENT_KIND_LEASE_RESIZED, alice.lease.id), all_leases=True,
                                 act=resize_both)
        assert any(event_of(pb.EVENT_KIND_LEASE_RESIZED, bob.lease.id)(u) for u in seen)
        # Lease samples of both principals come too (they keep coming every sample interval).
        more = await watch_until(admin, lambda u: {s.lease_id for s in u.leases} == {alice.lease.id, bob.lease.id},
                                 all_leases=True)
        assert more


async def test_watch_sends_no_event_or_sample_of_the_other(worker, tenants):
    alice, bob = tenants
    async with RuntimeClient(worker.address, alice.token, timeout=TIMEOUT) as client:

        async def bob_then_alice() -> None:
            async with RuntimeClient(worker.address, bob.token, timeout=TIMEOUT) as b:
                await b.resize(bob.lease.id, vram=256 * MiB, compute=10)
                extra = await b.allocate(vram=64 * MiB, compute=1, labels={"notebook": "bob/private-plan.ipynb"})
                await b.release(extra.id)
            # Events are sent in order: once alice's own resize arrives, bob's would have come before it.
            await client.resize(alice.lease.id, vram=256 * MiB, compute=10)

        seen = await watch_until(client, event_of(pb.EVENT_KIND_LEASE_RESIZED, alice.lease.id), act=bob_then_alice)
        # Then a few samples, each after bob's lease changed.
        seen += await watch_until(client, lambda u: any(s.lease_id == alice.lease.id and s.vram_limit == 256 * MiB
                                                        for s in u.leases))
    assert any(u.devices for u in seen), "device samples (everyone's capacity) still come"
    assert any(s.lease_id == alice.lease.id and s.kernel_ids == [alice.kernel.id] for u in seen for s in u.leases)
    assert not [u for u in seen if leaked(u, bob)], [u for u in seen if leaked(u, bob)]
    # Devices show bob's resize as capacity: 256 MiB each.
    assert any(d.vram_leased == 512 * MiB for u in seen for d in u.devices)


async def test_a_kernel_token_found_in_alices_kernel_sees_only_her_lease(worker, tenants):
    alice, bob = tenants
    result = await alice.remote.execute("import os; print(os.environ['TF_VGPU_TOKEN'], end='')")
    kernel_token = result.stdout()
    assert len(kernel_token) >= 32
    async with RuntimeClient(worker.address, kernel_token, timeout=TIMEOUT) as scoped:
        inv = await scoped.inventory()
        assert not leaked(inv, bob)
        assert inv.view == pb.INVENTORY_VIEW_OWN and [x.id for x in inv.leases] == [alice.lease.id]
        assert [x.id for x in await scoped.list_leases()] == [alice.lease.id]
        with pytest.raises(PermissionDenied, match="kernel token of lease"):
            await scoped.list_leases(all_principals=True)
        with pytest.raises(PermissionDenied, match="kernel token of lease"):
            await watch_until(scoped, lambda u: True, all_leases=True)
        seen = await watch_until(scoped, lambda u: any(s.lease_id == alice.lease.id for s in u.leases))
        assert not [u for u in seen if leaked(u, bob)]
    # The same from inside the kernel, as a notebook user would do it (the kernel's own socket).
    code = ("import os, grpc\nfrom tf_remoting.proto import pb, pb_grpc\n"
            "ch = grpc.insecure_channel(os.environ['TF_VGPU_WORKER'])\n"
            "md = [('authorization', 'Bearer ' + os.environ['TF_VGPU_TOKEN'])]\n"
            "print(pb_grpc.RuntimeStub(ch).GetInventory(pb.GetInventoryRequest(), metadata=md, timeout=30))")
    result = await alice.remote.execute(code, timeout=TIMEOUT)
    inside = result.stdout()
    assert alice.lease.id in inside and not leaked(inside, bob), inside


async def test_metrics_without_a_token_carry_no_lease_labels(worker, tenants):
    alice, bob = tenants
    url = metrics_url(worker)

    def lease_series(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("tf_vgpu_lease_")]

    # Wait for a tick that has both leases (the admin's scrape shows them).
    async def both_scraped() -> str | None:
        text = await asyncio.to_thread(scrape, url, worker.admin_token)
        return text if bob.lease.id in text and alice.lease.id in text else None

    everything = await wait_until(both_scraped, timeout=TIMEOUT)
    assert 'principal="bob"' in everything
    # As in the default deployment: a kernel on the host scrapes without a token.
    result = await alice.remote.execute(
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())",
        timeout=TIMEOUT)
    from_kernel = result.stdout()
    assert "tf_vgpu_device_vram_leased_bytes" in from_kernel and "tf_vgpu_leases 2.0" in from_kernel
    assert not lease_series(from_kernel) and not leaked(from_kernel, bob) and not leaked(from_kernel, alice)
    # Alice's own token shows her lease's series only; a token the worker does not know is refused.
    own = lease_series(scrape(url, alice.token))
    assert own and all(f'lease="{alice.lease.id}"' in line for line in own), own
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url, "not-a-token-of-this-worker-at-all")
    assert refused.value.code == 401 and b"not recognised" in refused.value.read()


def test_pool_cli_says_which_view_it_shows(worker):
    async def allocate() -> None:
        async with RuntimeClient(worker.address, worker.other_token, timeout=TIMEOUT) as b:
            await b.allocate(vram=GiB, compute=5, labels={"notebook": "bob/private-plan.ipynb"})
    asyncio.run(allocate())

    def pool(token: str, *extra: str) -> str:
        token_file = worker.root / f"cli-{secrets.token_hex(4)}"
        token_file.write_text(token + "\n")
        out = subprocess.run([sys.executable, "-m", "tf_jupyter.cli", "pool", "--worker", worker.address,
                              "--token-file", str(token_file), *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    mine = pool(worker.token)
    assert "view: own leases (principal alice); others as used capacity" in mine
    assert "bob" not in mine and "1 GiB / " in mine  # bob's GiB as capacity
    everyone = pool(worker.admin_token)
    assert "view: all principals (admin: principal admin)" in everyone and "bob" in everyone
    assert json.loads(pool(worker.token, "--json"))["view"] == "INVENTORY_VIEW_OWN"


# ---------------------------------------------------------------------------- through Jupyter servers


@pytest.fixture
def servers(worker, jupyter_server_factory) -> Iterator[dict[str, JupyterServerProcess]]:
    """Alice's and bob's Jupyter servers on the one worker, each with its own principal's token."""
    out = {}
    for name, token in (("alice", worker.token), ("bob", worker.other_token)):
        token_file = worker.root / f"{name}-token"
        token_file.write_text(f"{name} {token}\n")
        out[name] = jupyter_server_factory(workers=[worker], settings={"token_file": str(token_file)})
    for server in out.values():
        server.start()
    yield out


async def test_each_jupyter_server_shows_its_own_kernels_and_others_as_capacity(servers):
    kernels = {}
    for name, server in servers.items():
        status, kernel = await server.request("POST", "/api/kernels", {"name": "vgpu-small"}, timeout=120)
        assert status == 201, kernel
        kernels[name] = kernel["id"]
    for name, server in servers.items():
        other = "bob" if name == "alice" else "alice"
        status, listed = await server.request("GET", "/tf-vgpu/api/kernels", timeout=TIMEOUT)
        assert status == 200
        assert [k["kernel_id"] for k in listed["kernels"]] == [kernels[name]]
        slice_vram = listed["kernels"][0]["slice"]["vram"]

        async def both_leased(server: JupyterServerProcess = server, vram: int = slice_vram) -> Any:
            status, pool = await server.request("GET", "/tf-vgpu/api/pool", timeout=TIMEOUT)
            return pool if status == 200 and pool["workers"][0]["devices"][0]["vram_leased"] == 2 * vram else None

        # Both kernels' slices count in the capacity this server sees; only its own lease is listed.
        pool = await wait_until(both_leased, timeout=TIMEOUT)
        [w] = pool["workers"]
        assert (w["view"], w["viewer"], w["leases"]) == ("own", name, 1)
        text = json.dumps(pool) + json.dumps(listed)
        assert kernels[other] not in text and other not in text
    deadline = time.monotonic() + TIMEOUT
    for server in servers.values():
        for kernel_id in kernels.values():
            with contextlib.suppress(Exception):
                await server.request("DELETE", f"/api/kernels/{kernel_id}",
                                     timeout=max(1.0, deadline - time.monotonic()))
