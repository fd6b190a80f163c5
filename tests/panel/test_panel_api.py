"""The panel's server side (issue 14) with real processes: one worker (host device, 8 GiB) shared by
alice, bob and an admin, each through its own real Jupyter server, real vGPU kernels.

- history: a kernel's samples, for its own server only;
- the GPU map: alice sees her slice named and bob's as one anonymous slice; the admin sees both with
  principals; `admin` in the pool view says who may open the admin view;
- the admin view: 403 for alice; per-user use, every principal's leases; an admin's release ends
  bob's kernel (bob's server shuts it down, no restart on a new lease, and tells him who); alice may
  release no one else's lease, neither at the worker (PERMISSION_DENIED) nor through the endpoint
  (403); malformed bodies are 400;
- profiles small -> large.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tf_jupyter.profiles import Profile, kernelspec
from tf_jupyter.pytest_plugin import JupyterServerProcess, wait_until
from tf_remoting.client import PermissionDenied
from tf_remoting.pytest_plugin import WorkerProcess

GiB = 1 << 30
TIMEOUT = 90.0

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    w = tf_worker_factory(["--host-vram", "8Gi", "--admin-principals", "admin", "--sample-interval", "0.5"])
    w.admin_token = secrets.token_urlsafe(24)  # type: ignore[attr-defined]
    w.token_file.write_text(f"alice {w.token}\nbob {w.other_token}\nadmin {w.admin_token}\n")  # type: ignore[attr-defined]
    return w.start()


@pytest.fixture
def servers(worker: WorkerProcess, jupyter_server_factory: Any) -> Iterator[dict[str, JupyterServerProcess]]:
    out = {}
    for name, token in (("alice", worker.token), ("bob", worker.other_token),
                        ("admin", worker.admin_token)):  # type: ignore[attr-defined]
        token_file = worker.root / f"{name}-token"
        token_file.write_text(f"{name} {token}\n")
        out[name] = jupyter_server_factory(workers=[worker], settings={"token_file": str(token_file)})
    for server in out.values():
        server.start()
    yield out


async def get(server: JupyterServerProcess, path: str) -> Any:
    status, body = await server.request("GET", path, timeout=TIMEOUT)
    assert status == 200, (path, status, body)
    return body


async def start_notebook_kernel(server: JupyterServerProcess, notebook: str) -> str:
    return await server.start_session(notebook, "vgpu-small", timeout=TIMEOUT)


def slices_of(pool: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for w in pool["workers"] for d in w["devices"] for s in d["slices"]]


async def test_history_map_admin_view_and_release(worker: WorkerProcess,
                                                  servers: dict[str, JupyterServerProcess]) -> None:
    alice, bob, admin = servers["alice"], servers["bob"], servers["admin"]
    a_kernel = await start_notebook_kernel(alice, "alice-plan.ipynb")
    b_kernel = await start_notebook_kernel(bob, "bob-secret.ipynb")

    # history: alice's samples arrive (about two a second); bob's server knows nothing of her kernel
    async def history() -> list[dict[str, Any]] | None:
        samples = (await get(alice, f"/tf-vgpu/api/kernels/{a_kernel}/history"))["samples"]
        return samples if len(samples) >= 2 else None

    samples = await wait_until(history, TIMEOUT)
    assert all(s["vram_limit"] == 4 * GiB for s in samples)
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    status, body = await bob.request("GET", f"/tf-vgpu/api/kernels/{a_kernel}/history")
    assert status == 404, body

    # the GPU map as alice sees it: her slice named, bob's anonymous
    async def both_leased(server: JupyterServerProcess) -> dict[str, Any] | None:
        await server.request("GET", "/tf-vgpu/api/pool")
        pool = await get(server, "/tf-vgpu/api/pool")
        return pool if sum(s["vram"] for s in slices_of(pool)) == 8 * GiB else None

    pool = await wait_until(lambda: both_leased(alice), TIMEOUT)
    assert pool["admin"] is False
    assert sorted((s["own"], s["kernel_id"], s["label"], s["principal"], s["vram"]) for s in slices_of(pool)) == [
        (False, "", "", "", 4 * GiB), (True, a_kernel, "alice-plan.ipynb", "", 4 * GiB)]
    assert "bob-secret" not in str(pool) and b_kernel not in str(pool)
    # the admin sees both, with principals and notebooks
    pool = await wait_until(lambda: both_leased(admin), TIMEOUT)
    assert pool["admin"] is True
    assert sorted((s["principal"], s["label"]) for s in slices_of(pool)) == [
        ("alice", "alice-plan.ipynb"), ("bob", "bob-secret.ipynb")]

    # the admin view: not for alice
    status, body = await alice.request("GET", "/tf-vgpu/api/admin")
    assert status == 403 and "admin" in body["message"], body
    view = await get(admin, "/tf-vgpu/api/admin")
    assert sorted((u["principal"], u["vram"], u["kernels"]) for u in view["users"]) == [
        ("alice", 4 * GiB, 1), ("bob", 4 * GiB, 1)]
    [w] = view["workers"]
    assert w["address"] == worker.address and len(w["devices"][0]["slices"]) == 2
    assert view["queue"] == []

    # alice may not release bob's lease: not at the worker, not through her server
    async with worker.client() as alice_client, worker.client(worker.other_token) as bob_client:
        [b_lease] = await bob_client.list_leases()
        with pytest.raises(PermissionDenied):
            await alice_client.release(b_lease.id)
    status, body = await alice.request("POST", "/tf-vgpu/api/admin/release",
                                       {"worker": worker.address, "lease_id": b_lease.id})
    assert status == 403, body
    bad_bodies: list[Any] = [{}, {"worker": worker.address}, {"worker": worker.address, "lease_id": ""},
                             {"worker": worker.address, "lease_id": b_lease.id, "more": 1}, [], "x"]
    for bad in bad_bodies:
        status, body = await admin.request("POST", "/tf-vgpu/api/admin/release", bad)
        assert status == 400 and "give exactly worker and lease_id" in body["message"], (bad, body)
    status, body = await admin.request("POST", "/tf-vgpu/api/admin/release", b'{"worker": ')
    assert status == 400 and "must be a JSON object" in body["message"], body
    status, body = await admin.request("POST", "/tf-vgpu/api/admin/release",
                                       {"worker": "10.9.9.9:1", "lease_id": b_lease.id})
    assert status == 404 and "not in this server's pool" in body["message"], body
    status, body = await admin.request("POST", "/tf-vgpu/api/admin/release",
                                       {"worker": worker.address, "lease_id": "no-such-lease"})
    assert status == 404, body
    async with worker.client(worker.other_token) as bob_client:
        assert len(await bob_client.list_leases()) == 1  # nothing was lost on the way

    # the admin releases bob's lease: bob's kernel ends, and his server shuts it down rather than
    # restart it on a new lease (which would take the freed slice back); his events say who and why
    bob_events = await bob.websocket("/tf-vgpu/api/events")
    status, body = await admin.request("POST", "/tf-vgpu/api/admin/release",
                                       {"worker": worker.address, "lease_id": b_lease.id})
    assert status == 200 and body == {"released": b_lease.id}, body
    async with worker.client(worker.other_token) as bob_client:
        assert list(await bob_client.list_leases()) == []

    async def told_bob() -> dict[str, Any] | None:
        while True:
            raw = await asyncio.wait_for(bob_events.read_message(), TIMEOUT)
            assert raw is not None, "bob's event stream closed"
            msg = json.loads(raw)
            if msg.get("type") == "event" and msg["kind"] == "admin_release":
                return dict(msg)

    told = await asyncio.wait_for(told_bob(), TIMEOUT)
    bob_events.close()
    assert told["kernel_id"] == b_kernel and told["by"] == "admin" and "shut down" in told["message"], told

    async def bob_kernel_shut_down() -> bool:
        status, _ = await bob.request("GET", f"/api/kernels/{b_kernel}")
        kernels = (await get(bob, "/tf-vgpu/api/kernels"))["kernels"]
        return status == 404 and not any(k["kernel_id"] == b_kernel for k in kernels)

    await wait_until(bob_kernel_shut_down, TIMEOUT)
    await asyncio.sleep(3.0)  # Jupyter's restarter looks every 3 s: a restart would have leased again by now
    async with worker.client(worker.other_token) as bob_client:
        assert list(await bob_client.list_leases()) == []
    async with worker.client() as alice_client:
        assert len(await alice_client.list_leases()) == 1

    # alice's kernel ends: its history is gone, and asking for it is no error (a panel may ask just then)
    status, _ = await alice.request("DELETE", f"/api/kernels/{a_kernel}", timeout=TIMEOUT)
    assert status == 204
    body = await get(alice, f"/tf-vgpu/api/kernels/{a_kernel}/history")
    assert body["samples"] == [], body


async def test_profiles_small_to_large(servers: dict[str, JupyterServerProcess]) -> None:
    """By total size (count x VRAM, then compute), whole devices last: the launcher's order
    (labextension/src/launcherOrder.ts); a pair of 6 GiB slices is between 8 and 16 GiB."""
    alice = servers["alice"]
    spec_dir = alice.root / "data" / "kernels" / "vgpu-pair"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(Profile("pair", 6 * GiB, 10, count=2))))
    profiles = (await get(alice, "/tf-vgpu/api/profiles"))["profiles"]
    names = [p["name"] for p in profiles]
    assert names[-1] == "whole" and profiles[-1]["whole_device"], profiles
    assert [n for n in names if n in ("small", "medium", "pair", "large")] == ["small", "medium", "pair", "large"]


async def test_a_waiting_start_names_its_notebook_and_what_lets_it_start(
        worker: WorkerProcess, servers: dict[str, JupyterServerProcess]) -> None:
    alice, bob, admin = servers["alice"], servers["bob"], servers["admin"]
    b_kernel = await start_notebook_kernel(bob, "bob-secret.ipynb")
    await start_notebook_kernel(alice, "alice-plan.ipynb")  # the 8 GiB are all leased now
    waiting = asyncio.create_task(start_notebook_kernel(alice, "alice-wait.ipynb"))
    try:
        async def alice_waits() -> list[dict[str, Any]] | None:
            queue = (await get(alice, "/tf-vgpu/api/queue"))["queue"]
            return queue or None

        [entry] = await wait_until(alice_waits, TIMEOUT)
        assert (entry["notebook"], entry["reason"], entry["position"]) == ("alice-wait.ipynb", "no_room", 1), entry
        assert entry["hint"] == f"It starts when 4 GiB and {entry['request']['compute']} % are free on one GPU."
        # bob is not told what alice waits with; the admin sees whose request it is
        assert (await get(bob, "/tf-vgpu/api/queue"))["queue"] == []
        async def admin_sees() -> list[dict[str, Any]] | None:
            return (await get(admin, "/tf-vgpu/api/admin"))["queue"] or None  # at its next look at the worker

        [seen] = await wait_until(admin_sees, TIMEOUT)
        assert (seen["principal"], seen["reason"], seen["worker"]) == ("alice", "no_room", worker.address), seen
        assert not waiting.done()
        # bob's kernel ends: alice's start goes ahead and leaves the queue
        status, _ = await bob.request("DELETE", f"/api/kernels/{b_kernel}", timeout=TIMEOUT)
        assert status == 204
        await asyncio.wait_for(waiting, TIMEOUT)
        assert (await get(alice, "/tf-vgpu/api/queue"))["queue"] == []
    finally:
        waiting.cancel()


async def test_a_start_waiting_for_its_quota_says_which_quota(tf_worker_factory: type[WorkerProcess],
                                                              jupyter_server_factory: Any) -> None:
    worker = tf_worker_factory(["--host-vram", "16Gi", "--quotas", '{"default": {"vram": "4Gi"}}']).start()
    alice = jupyter_server_factory(workers=[worker]).start()
    first = await start_notebook_kernel(alice, "first.ipynb")
    waiting = asyncio.create_task(start_notebook_kernel(alice, "second.ipynb"))
    try:
        async def alice_waits() -> list[dict[str, Any]] | None:
            return (await get(alice, "/tf-vgpu/api/queue"))["queue"] or None

        [entry] = await wait_until(alice_waits, TIMEOUT)
        assert (entry["notebook"], entry["reason"]) == ("second.ipynb", "quota"), entry
        assert entry["hint"] == ("Ending one of your kernels on this GPU host (you hold 4 GiB of your 4 GiB VRAM quota "
                                 "there) lets it start; or ask the administrator for a larger quota."), entry
        status, _ = await alice.request("DELETE", f"/api/kernels/{first}", timeout=TIMEOUT)
        assert status == 204
        await asyncio.wait_for(waiting, TIMEOUT)  # the quota's room came back: it started
    finally:
        waiting.cancel()
