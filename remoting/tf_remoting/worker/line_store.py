"""The waiting line's rows in the lease ledger, and the pass that grants them.

One table, ``waiting``, in the ledger's SQLite file: a row per request waiting at this worker,
keyed by (principal, request_id), so a caller re-attaches to its place by asking again with the
same request id, also after a worker restart. ``serve`` runs one pass of `waiting_line` in the
ledger's write transaction: it reads the free capacity and every principal's holdings, creates
the leases of the entries the line grants and marks their rows granted (``lease_id``), all at
once. The waiting caller collects its lease with ``collect``, which deletes the row.

A row whose caller is gone without a word (the worker restarted under it) is *detached*
(``detached_at``); it keeps its place for ``ttl_seconds`` and is dropped by ``expire`` when no
one re-attached by then. Rows past their wait deadline are dropped the same way.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tf_remoting.quantities import format_bytes
from tf_remoting.worker.leases import (
    MAX_COUNT,
    MAX_TTL_SECONDS,
    InvalidArgument,
    LeaseRecord,
    Ledger,
    NotFound,
    OverQuotaError,
    ResourceExhausted,
    SliceAlloc,
    _check_int,
    _slice_text,
)
from tf_remoting.worker.quotas import LineQuota, Quota, Use, asked_by, check
from tf_remoting.worker.waiting_line import (
    QUOTA,
    Decision,
    Device,
    Entry,
    WaitingLine,
    describe_wait,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS waiting (
    principal TEXT NOT NULL,
    request_id TEXT NOT NULL,
    qos INTEGER NOT NULL,
    vram INTEGER NOT NULL,
    compute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    model TEXT NOT NULL,
    whole INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    profile TEXT NOT NULL,
    labels TEXT NOT NULL,
    arrival REAL NOT NULL,
    deadline REAL NOT NULL,
    detached_at REAL,
    lease_id TEXT,
    groups TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (principal, request_id)
);
"""
_COLUMNS = ("principal, request_id, qos, vram, compute, count, model, whole, mode, ttl_seconds, profile, labels, "
            "arrival, deadline, detached_at, lease_id, groups")


@dataclass
class Request:
    """An Allocate as the line stores it."""

    principal: str
    request_id: str
    qos: int
    vram: int
    compute: int
    count: int
    model: str
    whole: bool
    mode: int
    ttl_seconds: int
    profile: str
    labels: dict[str, str]
    arrival: float = 0.0
    deadline: float = 0.0
    detached_at: float | None = None
    lease_id: str | None = None
    # The caller's groups (JupyterHub's) when it last asked: a pass after a worker restart checks the
    # principal's quota with them, before the principal calls again.
    groups: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.principal}\x00{self.request_id}"

    def entry(self) -> Entry:
        return Entry(self.key, self.principal, self.qos, self.vram, self.compute, self.count, self.arrival,
                     self.model, self.whole)


@dataclass
class Served:
    """What one pass did: the leases it granted (by row key) and the order of those still waiting."""

    granted: dict[str, LeaseRecord] = field(default_factory=dict)
    requests: dict[str, Request] = field(default_factory=dict)
    decision: Decision = field(default_factory=Decision)
    quota: LineQuota | None = None  # its quota refusals (entry id -> OverQuota), when quotas are set


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex


class LineStore:
    """The line of one worker's ledger. ``quota_of`` gives a principal's quota (worker/quotas.py);
    each pass checks every grant against it with what the principal holds then (`LineQuota`) --
    the same check whatever grants it. None: no quotas."""

    def __init__(self, ledger: Ledger, quota_of: Callable[[str], Quota] | None = None) -> None:
        self.ledger = ledger
        self.quota_of = quota_of
        with ledger._lock:
            ledger._conn.executescript(SCHEMA)
            columns = {row[1] for row in ledger._conn.execute("PRAGMA table_info(waiting)")}
            if "groups" not in columns:  # a ledger written before the line kept groups
                ledger._conn.execute("ALTER TABLE waiting ADD COLUMN groups TEXT NOT NULL DEFAULT '[]'")

    def line(self, quota: LineQuota | None = None) -> WaitingLine:
        devices = [Device(d.uuid, d.index, d.name, d.vram_total, d.compute_capacity) for d in self.ledger.devices]
        return WaitingLine(devices, quota) if quota is not None else WaitingLine(devices)

    def _pass_quota(self, conn: sqlite3.Connection) -> LineQuota | None:
        return None if self.quota_of is None else LineQuota(self.quota_of, self.ledger._held(conn))

    def validate(self, req: Request) -> None:
        """Refuse (with a sentence) what no wait could ever grant on this worker, or bad numbers."""
        if not req.principal:
            raise InvalidArgument("the principal is empty; every lease needs an owner.")
        if not req.whole or req.vram:
            Ledger._validate_slice(req.vram, req.compute)
        _check_int("count", req.count, 1, MAX_COUNT, f"ask for 1 to {MAX_COUNT} devices")
        _check_int("ttl_seconds", req.ttl_seconds, 1, MAX_TTL_SECONDS, f"use 1 to {MAX_TTL_SECONDS} seconds")
        if not self.line().can_ever_fit(req.entry()):
            devices = self.ledger.devices
            if req.model and not any(req.model.lower() in d.name.lower() for d in devices):
                names = ", ".join(sorted({d.name for d in devices})) or "no devices"
                raise ResourceExhausted(f"no device matches model {req.model!r}; this worker has: {names}.")
            if not devices:
                raise ResourceExhausted(f"{self.asked(req)}, but this worker has no devices to lease.")
            big = max(devices, key=lambda d: (d.vram_total, d.compute_capacity))
            raise ResourceExhausted(
                f"{self.asked(req)}, which no device of this worker could ever hold: the largest free slice, "
                f"even with nothing leased, is {_slice_text(big.vram_total, big.compute_capacity)} on device "
                f"{big.index} ({big.name}) of {len(devices)}. Ask for less or use another worker.")

    @staticmethod
    def asked(req: Request) -> str:
        where = "1 device" if req.count == 1 else f"each of {req.count} distinct devices"
        match = f" matching {req.model!r}" if req.model else ""
        if req.whole:
            return f"asks for a whole device{match} of at least {format_bytes(req.vram)} VRAM on {where}"
        return f"asks for {_slice_text(req.vram, req.compute)} on {where}{match}"

    def largest_free(self, leased: dict[str, tuple[int, int]]) -> str:
        """'the largest free slice now is ... on device N', from the devices' leased (VRAM, compute)."""
        devices = self.ledger.devices
        if not devices:
            return "this worker has no devices"
        used = {d.uuid: leased.get(d.uuid, (0, 0)) for d in devices}
        largest = max(devices, key=lambda d: d.vram_total - used[d.uuid][0])
        lv, lc = largest.vram_total - used[largest.uuid][0], largest.compute_capacity - used[largest.uuid][1]
        return f"the largest free slice now is {_slice_text(max(lv, 0), max(lc, 0))} on device {largest.index}"

    def waited_too_long(self, req: Request, position: int, reason: str, sentence: str) -> str:
        return (f"request {req.request_id} {self.asked(req)} and waited its {req.deadline - req.arrival:.0f} s in "
                f"this worker's line without being served (last number {position}: {describe_wait(reason, sentence)}); "
                f"{self.largest_free(self.ledger.device_usage())}. Wait longer, ask for less, or release other "
                "kernels.")

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _rows(conn: sqlite3.Connection, where: str = "", args: tuple[object, ...] = ()) -> list[Request]:
        out = []
        for row in conn.execute(f"SELECT {_COLUMNS} FROM waiting {where}", args):
            values = list(row)
            values[7] = bool(values[7])
            values[11] = json.loads(values[11])
            values[16] = json.loads(values[16])
            out.append(Request(*values))
        return out

    @staticmethod
    def _insert(conn: sqlite3.Connection, req: Request) -> None:
        conn.execute(
            f"INSERT INTO waiting ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (req.principal, req.request_id, req.qos, req.vram, req.compute, req.count, req.model, int(req.whole),
             req.mode, req.ttl_seconds, req.profile, json.dumps(req.labels), req.arrival, req.deadline,
             req.detached_at, req.lease_id, json.dumps(sorted(req.groups))))

    @staticmethod
    def _delete(conn: sqlite3.Connection, req: Request) -> None:
        conn.execute("DELETE FROM waiting WHERE principal = ? AND request_id = ?", (req.principal, req.request_id))

    @staticmethod
    def _holdings(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        rows = conn.execute(
            "SELECT l.principal, SUM(s.vram), SUM(s.compute) FROM slices s JOIN leases l ON l.id = s.lease_id "
            "WHERE l.released_at IS NULL GROUP BY l.principal")
        return {p: (int(v), int(c)) for p, v, c in rows}

    def _free(self, conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        used = self.ledger._usage(conn)
        return {d.uuid: (d.vram_total - used.get(d.uuid, (0, 0))[0], d.compute_capacity - used.get(d.uuid, (0, 0))[1])
                for d in self.ledger.devices}

    # ------------------------------------------------------------------ the pass

    def _serve(self, conn: sqlite3.Connection, now: float) -> Served:
        requests = {r.key: r for r in self._rows(conn, "WHERE lease_id IS NULL")}
        served = Served(requests=requests)
        if not requests:
            return served
        served.quota = self._pass_quota(conn)
        line = self.line(served.quota)
        for r in requests.values():
            line.add(r.entry())
        served.decision = line.decide(self._free(conn), self._holdings(conn))
        by_index = {d.uuid: d.index for d in self.ledger.devices}
        for grant in served.decision.grants:
            req = requests[grant.entry.id]
            lease = LeaseRecord(
                id="lease-" + uuid.uuid4().hex, principal=req.principal,
                slices=[SliceAlloc(u, by_index[u], grant.vram, grant.compute) for u in grant.devices],
                qos=req.qos, mode=req.mode, created_at=now, expires_at=now + req.ttl_seconds,
                ttl_seconds=req.ttl_seconds, profile=req.profile, labels=req.labels)
            self.ledger._insert_lease(conn, lease)
            conn.execute("UPDATE waiting SET lease_id = ? WHERE principal = ? AND request_id = ?",
                         (lease.id, req.principal, req.request_id))
            served.granted[req.key] = lease
        return served

    def serve(self) -> Served:
        """One pass: grant what the line lets start now (in the ledger's transaction)."""
        with self.ledger._write() as conn:
            return self._serve(conn, self.ledger._clock())

    def join(self, req: Request, wait: bool) -> tuple[LeaseRecord | None, Served]:
        """A new Allocate, or one re-attaching with its request id. Returns its lease when the line
        grants it now (the row is gone then), else None and the pass (its position and reason).
        Without ``wait`` a request the line does not grant now leaves it: ResourceExhausted."""
        with self.ledger._write() as conn:
            now = self.ledger._clock()
            known = self._rows(conn, "WHERE principal = ? AND request_id = ?", (req.principal, req.request_id))
            if known:
                old = known[0]
                if old.lease_id is None:  # re-attach: its place (arrival) is kept, its deadline and groups are new
                    conn.execute("UPDATE waiting SET detached_at = NULL, deadline = ?, groups = ? WHERE principal = ? "
                                 "AND request_id = ?", (req.deadline, json.dumps(sorted(req.groups)), req.principal,
                                                        req.request_id))
                req = old
            else:
                req.arrival = now
                self._insert(conn, req)
            served = self._serve(conn, now)
            lease = self._collect(conn, req)
            if lease is not None:
                return lease, served
            position, reason, sentence = served.decision.waiting[req.key]
            if reason == QUOTA and served.quota is not None and req.key in served.quota.refusals:
                over = served.quota.refusals[req.key]
                # Over quota without a wait, or asking more than the quota even with nothing held: refused now.
                if not wait or check(over.quota, Use(), asked_by(req.entry()), req.principal) is not None:
                    self._delete(conn, req)
                    raise OverQuotaError(over)
            if not wait:
                self._delete(conn, req)
                raise ResourceExhausted(f"{self.asked(req)}; {describe_wait(reason, sentence)} (it would be "
                                        f"number {position} in this worker's waiting line): "
                                        f"{self.largest_free(self.ledger._usage(conn))}. Ask with wait to keep its "
                                        "place, or ask for less.")
            return None, served

    def _collect(self, conn: sqlite3.Connection, req: Request) -> LeaseRecord | None:
        rows = self._rows(conn, "WHERE principal = ? AND request_id = ?", (req.principal, req.request_id))
        if not rows:
            raise NotFound(f"request {req.request_id} is no longer in this worker's waiting line (it waited past "
                           "its deadline, or was not re-attached in time after a worker restart); ask again.")
        if rows[0].lease_id is None:
            return None
        self._delete(conn, req)
        lease_id = rows[0].lease_id
        found = self.ledger._load_lease(conn, lease_id)
        if found is None or found.released_at is not None:
            raise NotFound(f"the lease {lease_id} granted to request {req.request_id} was already released or "
                           "reclaimed (not collected within its TTL); ask again.")
        return found

    def collect(self, principal: str, request_id: str) -> LeaseRecord | None:
        """The lease granted to the request (its row is then gone), or None while it waits.
        NotFound when the request is not in the line (dropped)."""
        with self.ledger._write() as conn:
            return self._collect(conn, Request(principal, request_id, 0, 0, 0, 0, "", False, 0, 0, "", {}))

    def leave(self, principal: str, request_id: str) -> str | None:
        """The caller stops waiting (cancelled, deadline). Returns the id of a lease granted but not
        collected, for the caller to release; None otherwise."""
        with self.ledger._write() as conn:
            rows = self._rows(conn, "WHERE principal = ? AND request_id = ?", (principal, request_id))
            conn.execute("DELETE FROM waiting WHERE principal = ? AND request_id = ?", (principal, request_id))
            return rows[0].lease_id if rows else None

    def groups_of_waiting(self) -> dict[str, frozenset[str]]:
        """principal -> the groups its latest waiting request carried (for a pass after a restart)."""
        with self.ledger._lock:
            rows = self._rows(self.ledger._conn, "ORDER BY arrival, rowid")
        return {r.principal: frozenset(r.groups) for r in rows}

    def detach_all(self) -> int:
        """At worker start: every row's caller was the previous process's; each keeps its place for its TTL."""
        with self.ledger._write() as conn:
            now = self.ledger._clock()
            return conn.execute("UPDATE waiting SET detached_at = ? WHERE detached_at IS NULL", (now,)).rowcount

    def expire(self) -> list[Request]:
        """Drop rows past their deadline, detached longer than their TTL, or granted a lease that is
        gone; returns the dropped rows that were still waiting."""
        with self.ledger._write() as conn:
            now = self.ledger._clock()
            # A waiter gives up at its deadline itself; the grace only keeps it from losing that race.
            gone = self._rows(conn, "WHERE lease_id IS NULL AND (deadline + 5 < ? OR detached_at + ttl_seconds < ?)",
                              (now, now))
            for req in gone:
                self._delete(conn, req)
            conn.execute("DELETE FROM waiting WHERE lease_id IS NOT NULL AND lease_id NOT IN "
                         "(SELECT id FROM leases WHERE released_at IS NULL)")
            return gone

    def snapshot(self) -> Served:
        """The line as it stands (nothing granted): every waiting request with position and reason."""
        with self.ledger._read() as conn:
            requests = {r.key: r for r in self._rows(conn, "WHERE lease_id IS NULL")}
            served = Served(requests=requests)
            if requests:
                served.quota = self._pass_quota(conn)
                line = self.line(served.quota)
                for r in requests.values():
                    line.add(r.entry())
                served.decision = line.decide(self._free(conn), self._holdings(conn))
            return served

    def has_waiting(self) -> bool:
        with self.ledger._read() as conn:
            return conn.execute("SELECT 1 FROM waiting WHERE lease_id IS NULL LIMIT 1").fetchone() is not None


def check_request_id(request_id: str) -> str:
    if len(request_id) > 200 or any(not (c.isalnum() or c in "-_.:") for c in request_id):
        raise InvalidArgument(f"request_id {request_id[:60]!r} must be at most 200 letters, digits, '-', '_', '.' "
                              "or ':'; use a UUID.")
    return request_id
