"""The worker cache: every configured or discovered worker, its last inventory and live usage.

Workers are the only state holders; this is a cache of what they report (GetInventory every
`refresh_interval`, a Watch stream in between). A worker that stops answering is marked down and
retried with the client library's backoff, not on every kernel start. The token file is re-read
on every refresh (tokens rotate without a restart), and a DNS name adds one worker per address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from tf_jupyter.pool.events import Events
from tf_jupyter.tokens import read_token
from tf_remoting.client import RemotingError, RuntimeClient
from tf_remoting.client.backoff import Backoff
from tf_remoting.proto import pb

__all__ = ["ClientFactory", "Tls", "WorkerState", "Workers", "default_client"]

log = logging.getLogger("tf_jupyter.pool")

FREEING_EVENTS = {pb.EVENT_KIND_LEASE_RELEASED, pb.EVENT_KIND_LEASE_EXPIRED, pb.EVENT_KIND_LEASE_RESIZED,
                  pb.EVENT_KIND_WATCHDOG_KILL}


@dataclass(frozen=True)
class Tls:
    """How to reach workers over TLS (all empty: plaintext)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def client_kwargs(self) -> dict[str, str | None]:
        """The RuntimeClient keyword arguments for these settings."""
        return {"tls_ca": self.ca or None, "client_cert": self.cert or None, "client_key": self.key or None,
                "server_name": self.server_name or None}


ClientFactory = Callable[[str, str, Tls], RuntimeClient]
"""Makes the client of one worker: (address, token, tls) -> RuntimeClient."""


def default_client(address: str, token: str, tls: Tls) -> RuntimeClient:
    kw = tls.client_kwargs()
    return RuntimeClient(address, token, timeout=10.0, tls_ca=kw["tls_ca"], client_cert=kw["client_cert"],
                         client_key=kw["client_key"], server_name=kw["server_name"])


def _retry_policy() -> Backoff:
    return Backoff(initial=1.0, factor=2.0, max_delay=30.0, jitter=0.2)


@dataclass
class WorkerState:
    address: str
    client: RuntimeClient
    inventory: pb.Inventory | None = None
    up: bool = False
    error: str = ""
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=_retry_policy)
    watch_task: asyncio.Task[None] | None = None
    lease_usage: dict[str, pb.LeaseSample] = field(default_factory=dict)  # "<lease>/<device>"
    device_usage: dict[str, pb.DeviceSample] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        """Failed attempts since the worker last answered."""
        return self.backoff.failures


class Workers(Mapping[str, WorkerState]):
    """address -> WorkerState, kept fresh. `on_update` sees every Watch update, `on_inventory` every
    inventory read, `on_capacity` runs when capacity may have changed (after a refresh, a freeing event)."""

    def __init__(self, addresses: list[str], token: str, dns: str = "", tls: Tls | None = None,
                 refresh_interval: float = 5.0, events: Events | None = None,
                 client_factory: ClientFactory = default_client) -> None:
        self.token = token
        self.token_file = ""  # when set, re-read on every refresh: tokens rotate without a restart
        self._token_stat: tuple[int, int, int] | None = None  # (mtime_ns, inode, size) last read
        self.dns = dns
        self.tls = tls or Tls()
        self.refresh_interval = refresh_interval
        self.events = events or Events()
        self.client_factory = client_factory
        self.on_update: Callable[[WorkerState, pb.WatchResponse], None] = lambda w, update: None
        self.on_inventory: Callable[[WorkerState], None] = lambda w: None
        self.on_capacity: Callable[[], None] = lambda: None
        self._states: dict[str, WorkerState] = {}
        self._refresher: asyncio.Task[None] | None = None
        for address in addresses:
            self.add(address)

    def __getitem__(self, address: str) -> WorkerState:
        return self._states[address]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def add(self, address: str) -> WorkerState:
        state = WorkerState(address, self.client_factory(address, self.token, self.tls))
        self._states[address] = state
        return state

    # ------------------------------------------------------------------ lifecycle

    async def start(self, watch: bool = True) -> None:
        await self.refresh()
        if watch:
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        tasks = [self._refresher] + [w.watch_task for w in self._states.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for w in self._states.values():
            await w.client.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("pool refresh failed")

    # ------------------------------------------------------------------ discovery and tokens

    def resolve_dns(self) -> None:
        """Add a worker for every address the DNS name gives (a Kubernetes headless Service)."""
        if not self.dns:
            return
        name, _, port = self.dns.rpartition(":")
        try:
            infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            log.warning("cannot resolve workers_dns %s: %s", self.dns, exc)
            return
        for info in infos:
            host = str(info[4][0])
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if address not in self._states:
                log.info("worker %s found by DNS %s", address, self.dns)
                self.add(address)

    def follow_token_file(self, path: str) -> None:
        self.token_file = path
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self._token_stat = (st.st_mtime_ns, st.st_ino, st.st_size)

    def check_token(self) -> None:
        """Switch every client to the token file's token when the file changed."""
        if not self.token_file:
            return
        try:
            # mtime alone misses a same-second replace on coarse-timestamp filesystems; a kubelet
            # Secret update swaps the file (new inode), an in-place rewrite usually changes the size.
            st = os.stat(self.token_file)
            key = (st.st_mtime_ns, st.st_ino, st.st_size)
            if key == self._token_stat:
                return
            token = read_token(self.token_file)
        except (OSError, ValueError) as exc:
            log.warning("cannot re-read token file %s: %s (keeping the current token)", self.token_file, exc)
            return
        self._token_stat = key
        if token != self.token:
            log.info("token file %s changed: using the new token", self.token_file)
            self.token = token
            for w in self._states.values():
                w.client.set_token(token)

    # ------------------------------------------------------------------ health

    async def refresh(self, force: bool = False) -> None:
        """GetInventory from every worker that is up or due for a retry."""
        self.check_token()
        self.resolve_dns()
        now = time.monotonic()
        due = [w for w in self._states.values() if force or w.up or now >= w.retry_at]
        await asyncio.gather(*(self.refresh_one(w) for w in due))
        self.on_capacity()

    async def refresh_one(self, w: WorkerState) -> None:
        try:
            # a short deadline: one worker that hangs must not hold up the others' refresh
            inventory = await w.client._call(w.client.stub.GetInventory, pb.GetInventoryRequest(), timeout=3.0)
        except RemotingError as exc:
            self.mark_down(w, exc.message)
            return
        was_up = w.up
        w.inventory, w.up, w.error = inventory, True, ""
        w.backoff.succeeded()
        self.on_inventory(w)
        if not was_up:
            log.info("worker %s is up (%s, %d device(s))", w.address, inventory.backend, len(inventory.devices))
            self.events.broadcast({"type": "worker", "worker": w.address, "up": True})
        if w.watch_task is None or w.watch_task.done():
            w.watch_task = asyncio.create_task(self._watch(w))

    def mark_down(self, w: WorkerState, error: str) -> None:
        """The worker did not answer: say so once, and retry it after the next backoff delay."""
        first = w.backoff.failed()
        w.retry_at = time.monotonic() + w.backoff.next_delay()
        if w.up or first:
            log.warning("worker %s is down: %s", w.address, error)
            self.events.broadcast({"type": "worker", "worker": w.address, "up": False, "error": error})
        w.up, w.error = False, error

    async def _watch(self, w: WorkerState) -> None:
        """Follow one worker's samples and events until it fails; refresh brings it back."""
        try:
            async for update in w.client.watch(include_devices=True, all_leases=False):
                for d in update.devices:
                    w.device_usage[d.device_uuid] = d
                for s in update.leases:
                    w.lease_usage[f"{s.lease_id}/{s.device_uuid}"] = s
                self.on_update(w, update)
                if any(e.kind in FREEING_EVENTS for e in update.events):
                    await self.refresh_one(w)
                    self.on_capacity()
        except RemotingError as exc:
            self.mark_down(w, exc.message)

    # ------------------------------------------------------------------ lookups

    def up(self) -> list[WorkerState]:
        return [w for w in self._states.values() if w.up]

    def down_addresses(self) -> list[str]:
        return [w.address for w in self._states.values() if not w.up]

    def lease(self, worker: str, lease_id: str) -> pb.Lease | None:
        """A lease as the worker's last inventory lists it."""
        w = self._states.get(worker)
        if w is None or w.inventory is None:
            return None
        return next((lease for lease in w.inventory.leases if lease.id == lease_id), None)

