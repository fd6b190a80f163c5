"""Who is calling, asked of JupyterHub: each hub user is a principal of its own, with no secret
made by hand for it.

A token the worker's token file and its kernel tokens do not know is shown to the hub's REST API,
as JupyterHub services authenticate users (`jupyterhub.services.auth.HubAuth.user_for_token`):
`GET {hub_api_url}/user` with `Authorization: token <token>`. The hub answers with the model of the
token's owner: its `name`, `groups`, `kind` and the token's `scopes`. The caller becomes
`hub:<name>` (the prefix keeps hub users apart from token-file principals, which may not start with
it: a hub user named like a token-file principal never gets its leases), with the hub's groups.

Least privilege: the worker requires `required_scope` (default `custom:tf-vgpu:use`, a JupyterHub
custom scope) among the token's scopes, so a hub token made for something else is refused.

Replies are cached by the token's SHA-256 digest (never the token) for `cache_seconds`:

- a token confirmed less than `RECHECK_SECONDS` ago (or `cache_seconds`, if shorter) is not asked
  again, so a revoked token stops working within that time;
- when the hub cannot be reached, a token confirmed less than `cache_seconds` ago keeps working;
  after that the call is refused as unavailable, with a sentence saying the hub is unreachable;
- a token the hub does not know (or no longer knows) is refused as unauthenticated.

No grpc here: the interceptor maps `AuthError` to UNAUTHENTICATED, `HubUnavailable` to
UNAVAILABLE and `HubDenied` to PERMISSION_DENIED. The HTTP request runs in a thread, so the
worker's event loop never waits on the hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from tf_remoting.worker.auth import HUB_PREFIX, AuthError, Caller

log = logging.getLogger("tf_remoting.worker")

RECHECK_SECONDS = 10.0  # how long a confirmed token is trusted before the hub is asked again
MAX_CONCURRENT = 8  # hub requests in flight at once (threads); more callers wait
REQUEST_TIMEOUT = 5.0  # seconds for one hub request
MAX_REPLY = 1 << 20  # bytes of a /user reply read at most

Fetch = Callable[[str], tuple[int, bytes]]  # token -> (HTTP status, body); raises OSError when unreachable


class HubUnavailable(Exception):
    """The hub cannot be asked and the token was not confirmed recently enough."""


class HubDenied(Exception):
    """The hub knows the token, but it may not use this worker (missing scope, not a user)."""


class _Unreachable(Exception):
    """One hub request failed in a way that says nothing about the token."""


@dataclass(frozen=True)
class HubIdentity:
    kind: str
    name: str
    groups: frozenset[str]
    scopes: frozenset[str]


def parse_hub_user(body: bytes) -> HubIdentity:
    """The identity in a hub `/user` reply; ValueError with a sentence if the reply is not one."""
    try:
        model = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the reply is not JSON ({exc})") from None
    if not isinstance(model, dict):
        raise ValueError("the reply is not a JSON object")
    name, kind = model.get("name"), model.get("kind", "user")
    groups, scopes = model.get("groups") or [], model.get("scopes") or []
    if not isinstance(name, str) or not name:
        raise ValueError("the reply has no user name")
    if not isinstance(kind, str):
        raise ValueError("the reply's 'kind' is not a string")
    if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise ValueError("the reply's 'groups' is not a list of names")
    if not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
        raise ValueError("the reply's 'scopes' is not a list of scopes")
    return HubIdentity(kind, name, frozenset(groups), frozenset(scopes))


def url_fetch(api_url: str, ca_file: str = "") -> Fetch:
    """GET {api_url}/user with the token, by urllib (blocking: run it in a thread)."""
    url = api_url.rstrip("/") + "/user"
    context = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https:") else None

    def fetch(token: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers={"Authorization": f"token {token}",
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT, context=context) as reply:
                return reply.status, reply.read(MAX_REPLY)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(MAX_REPLY)

    return fetch


class HubAuth:
    """Hub users as callers: `await caller(token)`."""

    def __init__(self, api_url: str, cache_seconds: float = 60.0, required_scope: str = "custom:tf-vgpu:use",
                 ca_file: str = "", fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api_url = api_url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.required_scope = required_scope
        self._fetch = fetch or url_fetch(api_url, ca_file)
        self._clock = clock
        self._cache: dict[bytes, tuple[HubIdentity, float]] = {}  # token digest -> (identity, confirmed at)
        self._inflight: dict[bytes, asyncio.Future[HubIdentity]] = {}
        self._slots: asyncio.Semaphore | None = None  # made in the loop that uses it

    async def caller(self, token: str) -> Caller:
        """The caller this hub token stands for. Raises AuthError (the hub does not know it),
        HubUnavailable (the hub cannot be reached and the token was not seen recently) or HubDenied."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        self._prune(now)
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < min(RECHECK_SECONDS, self.cache_seconds):
            return self._check(cached[0])
        try:
            identity = await self._ask(digest, token)
        except _Unreachable as exc:
            if cached is not None and self._clock() - cached[1] < self.cache_seconds:
                log.warning("JupyterHub API %s: %s; %s%s keeps working on the reply cached %.0f s ago",
                            self.api_url, exc, HUB_PREFIX, cached[0].name, self._clock() - cached[1])
                return self._check(cached[0])
            raise HubUnavailable(
                f"the JupyterHub API at {self.api_url} cannot be reached ({exc}), and this token was not "
                f"confirmed by it in the last {self.cache_seconds:g} s: try again when the hub is back") from None
        except AuthError:
            self._cache.pop(digest, None)
            raise
        self._cache[digest] = (identity, self._clock())
        return self._check(identity)

    def _check(self, identity: HubIdentity) -> Caller:
        if identity.kind != "user":
            raise HubDenied(f"the token belongs to the hub {identity.kind} {identity.name!r}; only hub users "
                            "may use this worker")
        if self.required_scope and self.required_scope not in identity.scopes:
            raise HubDenied(f"the hub token of {identity.name!r} lacks the scope {self.required_scope!r} that this "
                            "worker requires: grant it to the user (a role) and to the servers' tokens "
                            "(c.Spawner.server_token_scopes), as the admin guide shows")
        if any(not c.isprintable() or c.isspace() for c in identity.name):
            raise HubDenied(f"the hub user name {identity.name!r} has spaces or unprintable characters; "
                            "this worker does not take it as a principal")
        return Caller(HUB_PREFIX + identity.name, groups=identity.groups)

    async def _ask(self, digest: bytes, token: str) -> HubIdentity:
        """One hub request per token at a time: concurrent callers with the same token share it."""
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._request(token))
            self._inflight[digest] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(digest, None))
        return await asyncio.shield(pending)

    async def _request(self, token: str) -> HubIdentity:
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        async with self._slots:
            try:
                status, body = await asyncio.to_thread(self._fetch, token)
            except (OSError, ValueError) as exc:  # refused, timed out, TLS, a malformed URL
                raise _Unreachable(getattr(exc, "reason", None) or exc) from None
        if status in (401, 403):
            raise AuthError("JupyterHub does not know this token (revoked, expired, or not a hub token)")
        if status != 200:
            raise _Unreachable(f"it answered HTTP {status}")
        try:
            return parse_hub_user(body)
        except ValueError as exc:
            raise _Unreachable(f"its /user reply is not a user model: {exc}") from None

    def _prune(self, now: float) -> None:
        if len(self._cache) > 1024:
            self._cache = {d: e for d, e in self._cache.items() if now - e[1] < self.cache_seconds}
