"""The worker's JupyterHub identity source (plain Python): the hub's /user reply, the cache by token
digest, recheck, the bounded grace while the hub is down, and what each failure becomes.

The hub here is a function answering (status, body) as the hub's /user endpoint would; a real hub
is in tests/hub/test_jupyterhub.py, a real HTTP stand-in with a real worker in
tests/integration/test_worker_hub_auth.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from tf_remoting.worker.auth import AuthError, parse_token_file
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.hub_auth import RECHECK_SECONDS, HubAuth, HubDenied, HubUnavailable, parse_hub_user

SCOPE = "custom:tf-vgpu:use"


class Hub:
    """Tokens -> user models; `down` makes every request fail as a refused connection would."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, object]] = {}
        self.down = False
        self.body: bytes | None = None  # a fixed reply body, e.g. not JSON
        self.asked: list[str] = []

    def add(self, token: str, name: str, groups: list[str] | None = None, scopes: list[str] | None = None) -> None:
        self.users[token] = {"kind": "user", "name": name, "groups": groups or [],
                             "scopes": [SCOPE, "users:activity!user"] if scopes is None else scopes}

    def fetch(self, token: str) -> tuple[int, bytes]:
        self.asked.append(token)
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.body is not None:
            return 200, self.body
        if token not in self.users:
            return 403, b'{"status": 403, "message": "Forbidden"}'
        return 200, json.dumps(self.users[token]).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(hub: Hub, clock: Clock, cache: float = 60.0, scope: str = SCOPE) -> HubAuth:
    return HubAuth("http://hub.invalid/hub/api", cache_seconds=cache, required_scope=scope, fetch=hub.fetch,
                   clock=clock)


async def test_hub_user_is_a_principal_with_its_groups():
    hub, clock = Hub(), Clock()
    hub.add("tok-alice", "alice", groups=["gpu-admins", "ml"])
    caller = await make(hub, clock).caller("tok-alice")
    assert caller.principal == "hub:alice"
    assert caller.groups == frozenset({"gpu-admins", "ml"})
    assert caller.lease_scope == ""


async def test_unknown_token_is_unauthenticated():
    hub, clock = Hub(), Clock()
    with pytest.raises(AuthError, match="JupyterHub does not know this token"):
        await make(hub, clock).caller("never-issued")


async def test_cached_within_recheck_then_asked_again_and_revocation_holds():
    hub, clock = Hub(), Clock()
    hub.add("tok", "alice")
    auth = make(hub, clock)
    await auth.caller("tok")
    clock.now += RECHECK_SECONDS - 1
    await auth.caller("tok")
    assert len(hub.asked) == 1  # the cache answered
    del hub.users["tok"]  # revoked
    clock.now += 2
    with pytest.raises(AuthError):
        await auth.caller("tok")
    clock.now += 1
    with pytest.raises(AuthError):  # not served from an old cache entry
        await auth.caller("tok")


async def test_hub_down_keeps_recent_users_for_cache_seconds_then_unavailable():
    hub, clock = Hub(), Clock()
    hub.add("tok", "alice")
    auth = make(hub, clock, cache=30.0)
    await auth.caller("tok")
    hub.down = True
    clock.now += 20  # past the recheck: the hub is asked, cannot answer, the cache holds
    assert (await auth.caller("tok")).principal == "hub:alice"
    assert len(hub.asked) == 2
    clock.now += 11  # 31 s after the last confirmation
    with pytest.raises(HubUnavailable, match="cannot be reached.*not confirmed by it in the last 30 s"):
        await auth.caller("tok")
    with pytest.raises(HubUnavailable):  # a token never seen: the hub cannot say
        await auth.caller("other")
    hub.down = False
    assert (await auth.caller("tok")).principal == "hub:alice"


async def test_bad_reply_is_unavailable_not_a_user():
    hub, clock = Hub(), Clock()
    hub.body = b"<html>proxy error</html>"
    with pytest.raises(HubUnavailable, match="not a user model: the reply is not JSON"):
        await make(hub, clock).caller("tok")
    hub.body = b'{"kind": "user", "name": ""}'
    with pytest.raises(HubUnavailable, match="no user name"):
        await make(hub, clock).caller("tok")


def test_parse_hub_user_refuses_what_is_not_a_user_model():
    for body, words in [(b"[]", "not a JSON object"), (b'{"name": "a", "groups": "x"}', "'groups'"),
                        (b'{"name": "a", "scopes": [1]}', "'scopes'"), (b'{"name": 3}', "no user name")]:
        with pytest.raises(ValueError, match=words):
            parse_hub_user(body)
    assert parse_hub_user(b'{"name": "a"}').kind == "user"


async def test_scope_is_required_unless_turned_off():
    hub, clock = Hub(), Clock()
    hub.add("tok", "alice", scopes=["users:activity!user", "access:servers!server=alice/"])
    with pytest.raises(HubDenied, match="lacks the scope 'custom:tf-vgpu:use'"):
        await make(hub, clock).caller("tok")
    assert (await make(hub, clock, scope="").caller("tok")).principal == "hub:alice"


async def test_service_tokens_and_odd_names_are_denied():
    hub, clock = Hub(), Clock()
    hub.users["svc"] = {"kind": "service", "name": "announcer", "scopes": [SCOPE]}
    hub.add("odd", "al ice")
    auth = make(hub, clock)
    with pytest.raises(HubDenied, match="hub service 'announcer'"):
        await auth.caller("svc")
    with pytest.raises(HubDenied, match="spaces or unprintable"):
        await auth.caller("odd")


async def test_concurrent_calls_with_one_token_ask_the_hub_once():
    hub, clock = Hub(), Clock()
    hub.add("tok", "alice")
    auth = make(hub, clock)
    callers = await asyncio.wait_for(asyncio.gather(*(auth.caller("tok") for _ in range(20))), 10)
    assert {c.principal for c in callers} == {"hub:alice"}
    assert len(hub.asked) == 1


async def test_cache_holds_digests_not_tokens():
    hub, clock = Hub(), Clock()
    hub.add("a-secret-hub-token", "alice")
    auth = make(hub, clock)
    await auth.caller("a-secret-hub-token")
    assert all(isinstance(k, bytes) and len(k) == 32 for k in auth._cache)
    assert "a-secret-hub-token" not in repr(auth._cache)


def test_token_file_principals_cannot_be_hub_users():
    with pytest.raises(ValueError, match="line 2: principals starting with 'hub:' are JupyterHub users"):
        parse_token_file("alice 0123456789abcdef0123\nhub:bob 0123456789abcdef0124\n")


def test_hub_settings_are_checked():
    for kwargs, words in [({"hub_api_url": "hub:8081"}, "http:// or https:// URL"),
                          ({"hub_api_url": "http://h/hub/api", "hub_cache_seconds": -1}, "hub_cache_seconds"),
                          ({"hub_api_url": "http://h/hub/api", "hub_ca": "/ca.pem"}, "https://")]:
        with pytest.raises(ValueError, match=words):
            WorkerConfig(**kwargs).validate()  # type: ignore[arg-type]
    WorkerConfig(hub_api_url="https://h/hub/api", hub_ca="/ca.pem").validate()
