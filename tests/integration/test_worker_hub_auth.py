"""A real worker with --hub-api-url, against a FAKE of the JupyterHub API (a tiny tornado app
answering GET /hub/api/user as the hub does), for the edge cases a real hub does not make on cue:
a token revoked while in use, the hub going down and the cache running out, a reply that is not a
user model. The real hub is in tests/hub/test_jupyterhub.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from tf_remoting.client import PermissionDenied, RuntimeClient, Unauthenticated, Unavailable
from tf_remoting.pytest_plugin import WorkerProcess
from tf_remoting.worker.hub_auth import RECHECK_SECONDS

GiB = 1 << 30
SCOPE = "custom:tf-vgpu:use"
CACHE_SECONDS = 3.0  # short, so the tests see the cache run out


class FakeHub:
    """A fake of the hub API: token -> user model, a switch to answer garbage, and stop/start."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.garbage = False
        self.seen_headers: list[str] = []
        self.port = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    def add(self, name: str, groups: list[str] | None = None, scopes: list[str] | None = None) -> str:
        token = secrets.token_hex(20)
        self.users[token] = {"kind": "user", "name": name, "admin": False, "groups": groups or [],
                             "scopes": [SCOPE, "users:activity!user"] if scopes is None else scopes}
        return token

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hub/api"

    def start(self) -> None:
        fake = self

        class UserHandler(tornado.web.RequestHandler):
            def get(self) -> None:
                header = self.request.headers.get("Authorization", "")
                fake.seen_headers.append(header.split(" ", 1)[0])
                if fake.garbage:
                    self.finish("<html>502 Bad Gateway</html>")
                    return
                model = fake.users.get(header.removeprefix("token ").strip())
                if model is None:
                    self.set_status(403)
                    self.finish({"status": 403, "message": "Forbidden"})
                    return
                self.finish(json.dumps(model))

        app = tornado.web.Application([(r"/hub/api/user", UserHandler)])
        self._server = tornado.httpserver.HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(self.port, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server.add_sockets(sockets)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def worker(hub: FakeHub, tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    return tf_worker_factory(["--host-vram", "4Gi", "--hub-api-url", hub.api_url,
                              "--hub-cache-seconds", str(CACHE_SECONDS)]).start()


async def call(worker: WorkerProcess, token: str) -> Any:
    async with RuntimeClient(worker.address, token) as client:
        return await asyncio.wait_for(client.list_leases(), 10)


async def test_hub_user_owns_leases_as_hub_name_beside_token_file_users(hub: FakeHub, worker: WorkerProcess):
    carol = hub.add("carol", groups=["ml"])
    async with RuntimeClient(worker.address, carol) as client:
        lease = await asyncio.wait_for(client.allocate(vram=GiB, compute=10), 10)
        assert lease.principal == "hub:carol"
        assert [lease_.id for lease_ in await asyncio.wait_for(client.list_leases(), 10)] == [lease.id]
    async with RuntimeClient(worker.address, worker.token) as alice:  # the token file works as before
        assert lease.id not in [lease_.id for lease_ in await asyncio.wait_for(alice.list_leases(), 10)]
    assert hub.seen_headers and set(hub.seen_headers) == {"token"}
    # The hub token never reaches the worker's log.
    assert carol not in worker.log()


async def test_hub_user_cannot_be_a_token_file_principal(hub: FakeHub, worker: WorkerProcess):
    """A hub user named like a token-file principal is a different principal: it sees none of its leases."""
    async with RuntimeClient(worker.address, worker.token) as alice:
        lease = await asyncio.wait_for(alice.allocate(vram=GiB, compute=10), 10)
    fake_alice = hub.add("alice")
    async with RuntimeClient(worker.address, fake_alice) as client:
        assert await asyncio.wait_for(client.list_leases(), 10) == []
        with pytest.raises(PermissionDenied):
            await asyncio.wait_for(client.release(lease.id), 10)


async def test_revoked_token_is_unauthenticated_within_the_recheck(hub: FakeHub, worker: WorkerProcess):
    token = hub.add("dave")
    await call(worker, token)
    del hub.users[token]
    recheck = min(RECHECK_SECONDS, CACHE_SECONDS)
    deadline = time.monotonic() + recheck + 5
    while True:
        try:
            await call(worker, token)
        except Unauthenticated as exc:
            assert "JupyterHub does not know this token" in exc.message
            break
        assert time.monotonic() < deadline, "a revoked hub token kept working past the recheck"
        await asyncio.sleep(0.25)


async def test_unknown_and_unscoped_tokens(hub: FakeHub, worker: WorkerProcess):
    with pytest.raises(Unauthenticated, match="JupyterHub does not know this token"):
        await call(worker, secrets.token_hex(20))
    unscoped = hub.add("erin", scopes=["users:activity!user"])
    with pytest.raises(PermissionDenied, match="lacks the scope 'custom:tf-vgpu:use'"):
        await call(worker, unscoped)


async def test_hub_down_keeps_recent_users_then_unavailable(hub: FakeHub, worker: WorkerProcess):
    token = hub.add("frank")
    await call(worker, token)
    confirmed = time.monotonic()
    await hub.stop()
    await call(worker, token)  # seen less than CACHE_SECONDS ago: keeps working
    await asyncio.sleep(max(0.0, confirmed + CACHE_SECONDS + 0.5 - time.monotonic()))
    with pytest.raises(Unavailable, match=r"JupyterHub API at .* cannot be reached .* try again when the hub is back"):
        await call(worker, token)
    with pytest.raises(Unavailable, match="cannot be reached"):  # a token never seen
        await call(worker, secrets.token_hex(20))
    async with RuntimeClient(worker.address, worker.token) as alice:  # token-file users are not affected
        await asyncio.wait_for(alice.list_leases(), 10)


async def test_a_reply_that_is_not_a_user_model_is_unavailable(hub: FakeHub, worker: WorkerProcess):
    token = hub.add("gina")
    hub.garbage = True
    with pytest.raises(Unavailable, match="not a user model: the reply is not JSON"):
        await call(worker, token)
