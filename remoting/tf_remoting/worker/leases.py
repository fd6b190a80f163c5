"""The worker's lease ledger: the single source of truth for what is leased on which device.

Leases, their slices and the kernels started in them live in one SQLite file. Every change runs in
one ``BEGIN IMMEDIATE`` transaction that reads the current usage and writes the new rows, so capacity
is never over-committed, even by several processes sharing the file. Rows survive a worker restart.
Released leases stay as tombstones for a while, so releasing twice is answered, not an error.

Reads of active leases and live kernels (what the telemetry tick asks for every second) are served
from an in-memory view of those rows. SQLite stays the source of truth: the view is patched by each
write this ``Ledger`` commits, and reloaded whenever ``PRAGMA data_version`` says that another
connection (another process, or another ``Ledger`` on the same file) committed since it was loaded.

Errors carry a ``code`` named after the gRPC status the server answers with, and a sentence a
person can act on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tf_remoting.quantities import format_bytes, format_percent
from tf_remoting.worker.quotas import OverQuota, Quota, Use, check

__all__ = [
    "DeviceCapacity",
    "SliceAlloc",
    "LeaseRecord",
    "KernelRecord",
    "LedgerError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "InvalidArgument",
    "LedgerUnavailable",
    "OverQuotaError",
    "Ledger",
    "LiveRows",
]

MAX_VRAM = 2**62
MAX_COUNT = 64
MAX_TTL_SECONDS = 86400
MAX_QOS = 4
KERNEL_STATUSES = ("starting", "running", "exited")
# How long a released lease is remembered (release answers False rather than NOT_FOUND).
TOMBSTONE_SECONDS = 7 * 86400
# How long a write waits for another process holding the ledger before giving up.
BUSY_TIMEOUT_SECONDS = 30.0
# pb.ISOLATION_MODE_EXCLUSIVE: a lease in this mode holds whole devices (the quota's ``devices``).
WHOLE_MODE = 3


@dataclass(frozen=True)
class DeviceCapacity:
    """What one device offers: its VRAM and the compute percent that can be leased.

    ``compute_capacity`` is 100 x the oversubscription ratio (200: two 100 % slices fit).
    """

    uuid: str
    index: int
    name: str
    vram_total: int
    compute_capacity: int


@dataclass(frozen=True)
class SliceAlloc:
    """A lease's share of one device."""

    device_uuid: str
    device_index: int
    vram: int
    compute: int


@dataclass
class LeaseRecord:
    """A lease as stored: its owner, slices and expiry (unix seconds)."""

    id: str
    principal: str
    slices: list[SliceAlloc]
    qos: int
    mode: int
    created_at: float
    expires_at: float
    ttl_seconds: int
    profile: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    released_at: float | None = None


def _copy_lease(rec: LeaseRecord) -> LeaseRecord:
    """A copy the caller may change without touching the view (slices are frozen, labels are not)."""
    copy = object.__new__(LeaseRecord)
    values = rec.__dict__.copy()
    values["slices"] = list(rec.slices)
    values["labels"] = dict(rec.labels)
    copy.__dict__ = values
    return copy


@dataclass
class KernelRecord:
    """A kernel started in a lease; ``status`` is "starting", "running" or "exited"."""

    id: str
    lease_id: str
    principal: str
    nanny_pid: int
    pid: int
    status: str
    exit_code: int | None
    cwd: str
    environment: str
    started_at: float
    directory: str
    labels: dict[str, str]


def _copy_kernel(rec: KernelRecord) -> KernelRecord:
    copy = object.__new__(KernelRecord)
    values = rec.__dict__.copy()
    values["labels"] = dict(rec.labels)
    copy.__dict__ = values
    return copy


@dataclass
class _View:
    """Active leases and live (not exited) kernels as of ``data_version``, plus this Ledger's own
    writes since. ``leases``/``kernels`` are ordered tuples built on demand from the dicts.

    Records in the view are never changed in place (a write puts a new copy), so the tuples can
    be handed out as they are (``Ledger.live``).
    """

    data_version: int
    lease_by_id: dict[str, LeaseRecord]
    kernel_by_id: dict[str, KernelRecord]
    _leases: tuple[LeaseRecord, ...] | None = None
    _kernels: tuple[KernelRecord, ...] | None = None
    _usage: dict[str, tuple[int, int]] | None = None

    @property
    def leases(self) -> tuple[LeaseRecord, ...]:
        if self._leases is None:
            self._leases = tuple(sorted(self.lease_by_id.values(), key=lambda r: (r.created_at, r.id)))
        return self._leases

    @property
    def kernels(self) -> tuple[KernelRecord, ...]:
        if self._kernels is None:
            self._kernels = tuple(sorted(self.kernel_by_id.values(), key=lambda r: (r.started_at, r.id)))
        return self._kernels

    @property
    def usage(self) -> dict[str, tuple[int, int]]:
        """Device uuid -> (VRAM leased, compute leased), devices with leases only."""
        if self._usage is None:
            usage: dict[str, tuple[int, int]] = {}
            for lease in self.lease_by_id.values():
                for s in lease.slices:
                    vram, compute = usage.get(s.device_uuid, (0, 0))
                    usage[s.device_uuid] = (vram + s.vram, compute + s.compute)
            self._usage = usage
        return self._usage

    def put_lease(self, rec: LeaseRecord) -> None:
        if rec.released_at is None:
            self.lease_by_id[rec.id] = _copy_lease(rec)
        else:
            self.lease_by_id.pop(rec.id, None)
        self._leases = self._usage = None

    def drop_lease(self, lease_id: str) -> None:
        if self.lease_by_id.pop(lease_id, None) is not None:
            self._leases = self._usage = None

    def put_kernel(self, rec: KernelRecord) -> None:
        if rec.status != "exited":
            self.kernel_by_id[rec.id] = _copy_kernel(rec)
        else:
            self.kernel_by_id.pop(rec.id, None)
        self._kernels = None

    def drop_kernel(self, kernel_id: str) -> None:
        if self.kernel_by_id.pop(kernel_id, None) is not None:
            self._kernels = None


@dataclass(frozen=True)
class LiveRows:
    """What ``Ledger.live`` returns: shared, read-only records."""

    leases: tuple[LeaseRecord, ...]  # active, oldest first
    kernels: tuple[KernelRecord, ...]  # not exited, oldest first
    device_usage: Mapping[str, tuple[int, int]]  # every device, zeros included


class LedgerError(Exception):
    """A ledger operation that cannot be done; ``code`` names the gRPC status to answer with."""

    code = "INTERNAL"


class NotFound(LedgerError):
    code = "NOT_FOUND"


class PermissionDenied(LedgerError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(LedgerError):
    code = "RESOURCE_EXHAUSTED"


class InvalidArgument(LedgerError):
    code = "INVALID_ARGUMENT"


class OverQuotaError(LedgerError):
    """Held + asked would pass the principal's quota (not RESOURCE_EXHAUSTED: there may be room)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, over: OverQuota) -> None:
        super().__init__(over.sentence())
        self.over = over


class LedgerUnavailable(LedgerError):
    """The ledger cannot be written (disk full, read-only state directory, locked too long)."""

    code = "UNAVAILABLE"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    qos INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    profile TEXT NOT NULL,
    labels TEXT NOT NULL,
    released_at REAL
);
CREATE TABLE IF NOT EXISTS slices (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    device_uuid TEXT NOT NULL,
    device_index INTEGER NOT NULL,
    vram INTEGER NOT NULL,
    compute INTEGER NOT NULL,
    PRIMARY KEY (lease_id, device_uuid)
);
CREATE INDEX IF NOT EXISTS slices_device ON slices(device_uuid);
CREATE TABLE IF NOT EXISTS kernels (
    id TEXT PRIMARY KEY,
    lease_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    nanny_pid INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    cwd TEXT NOT NULL,
    environment TEXT NOT NULL,
    started_at REAL NOT NULL,
    directory TEXT NOT NULL,
    labels TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kernels_lease ON kernels(lease_id);
CREATE TABLE IF NOT EXISTS tenant_uids (
    principal TEXT PRIMARY KEY,
    uid INTEGER NOT NULL UNIQUE
);
"""

_LEASE_COLUMNS = "id, principal, qos, mode, created_at, expires_at, ttl_seconds, profile, labels, released_at"
_KERNEL_COLUMNS = [f.name for f in fields(KernelRecord)]


def _slice_text(vram: int, compute: int) -> str:
    return f"{format_bytes(vram)} VRAM / {format_percent(compute)} compute"


def _check_int(name: str, value: object, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} {value!r} is out of range: {hint}.")
    return value


def _check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    labels = dict(labels or {})
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"label {key!r}: {value!r} is not text; labels map strings to strings.")
    return labels


class Ledger:
    """The lease ledger of one worker, in the SQLite file at ``path``.

    Thread-safe, and atomic across processes that share the file. ``devices`` are the leasable
    devices with their capacities; ``clock`` gives unix seconds (tests inject their own).
    """

    def __init__(
        self,
        path: str | Path,
        devices: list[DeviceCapacity],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceCapacity] = {}
        self._view: _View | None = None  # see the module docstring; guarded by _lock
        self._patches: list[Callable[[_View], None]] = []  # of the write in progress
        self.set_devices(devices)
        try:
            # Autocommit mode: transactions are only the explicit BEGIN IMMEDIATE ones below.
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
            )
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc, opening=True) from exc
        try:
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._setup_schema()
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise self._unavailable(exc, opening=True) from exc

    def _setup_schema(self) -> None:
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.OperationalError:
            # A ledger that cannot be written (full disk, read-only state) but already holds the
            # tables still answers reads; writes will say why they fail.
            tables = {
                row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not {"leases", "slices", "kernels"} <= tables:
                raise

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._view = None
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ devices

    def set_devices(self, devices: list[DeviceCapacity]) -> None:
        """Replace the device list (e.g. the oversubscription ratio changed); leases are kept."""
        by_uuid: dict[str, DeviceCapacity] = {}
        for device in devices:
            if device.uuid in by_uuid:
                raise ValueError(f"device {device.uuid} is listed twice")
            if device.vram_total < 0 or device.compute_capacity < 0:
                raise ValueError(f"device {device.uuid} has a negative capacity")
            by_uuid[device.uuid] = device
        self._devices = by_uuid

    @property
    def devices(self) -> list[DeviceCapacity]:
        """The devices, by index."""
        return sorted(self._devices.values(), key=lambda d: d.index)

    # ------------------------------------------------------------------ transactions

    def _unavailable(self, exc: sqlite3.OperationalError, opening: bool = False) -> LedgerUnavailable:
        reason = str(exc)
        if "locked" in reason or "busy" in reason:
            return LedgerUnavailable(
                f"the lease ledger {self.path} stayed locked by another process for more than "
                f"{BUSY_TIMEOUT_SECONDS:g} s ({reason}); try again."
            )
        if opening:
            return LedgerUnavailable(
                f"the lease ledger {self.path} cannot be opened ({reason}); check that the state "
                "directory exists, is writable and that the disk is not full."
            )
        return LedgerUnavailable(
            f"the lease ledger {self.path} cannot be written ({reason}); existing leases and kernels "
            "keep running, but no lease can be created or changed until the state directory is "
            "writable and the disk has free space again."
        )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic read-modify-write: BEGIN IMMEDIATE takes the write lock before reading.

        The body says how its rows change the view with ``_on_commit``; those patches are applied
        right after COMMIT, still under the lock, so writes of several threads patch in commit order.
        """
        with self._lock:
            conn = self._conn
            self._patches = []
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._unavailable(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._patches = []
                self._rollback()
                raise self._unavailable(exc) from exc
            except BaseException:
                self._patches = []
                self._rollback()
                raise
            patches, self._patches = self._patches, []
            if self._view is not None:
                for patch in patches:
                    patch(self._view)

    def _on_commit(self, patch: Callable[[_View], None]) -> None:
        """Inside ``_write``: how the view changes once this transaction commits."""
        self._patches.append(patch)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for reads made of several queries."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN DEFERRED")
                try:
                    yield conn
                finally:
                    self._rollback()
            except sqlite3.OperationalError as exc:
                raise LedgerUnavailable(
                    f"the lease ledger {self.path} cannot be read ({exc}); check the state directory."
                ) from exc

    def _current_view(self) -> _View:
        """The view of active leases and live kernels, reloaded when another connection committed.

        Call with ``_lock`` held. ``PRAGMA data_version`` changes when any other connection commits
        to the file (never for this connection's own commits, which patch the view themselves).
        """
        conn = self._conn
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            view = self._view
            if view is not None and view.data_version == version:
                return view
            # The version is read before the rows: a commit in between makes the next read reload
            # again (harmless), never a view older than its version.
            conn.execute("BEGIN DEFERRED")
            try:
                rows = conn.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE released_at IS NULL").fetchall()
                slices: dict[str, list[SliceAlloc]] = {}
                for lease_id, u, i, v, c in conn.execute(
                    "SELECT s.lease_id, s.device_uuid, s.device_index, s.vram, s.compute FROM slices s "
                    "JOIN leases l ON l.id = s.lease_id WHERE l.released_at IS NULL "
                    "ORDER BY s.device_index, s.device_uuid"
                ):
                    slices.setdefault(lease_id, []).append(SliceAlloc(u, i, v, c))
                kernel_rows = conn.execute(
                    f"SELECT {', '.join(_KERNEL_COLUMNS)} FROM kernels WHERE status != 'exited'"
                ).fetchall()
            finally:
                self._rollback()
        except sqlite3.OperationalError as exc:
            self._view = None
            raise LedgerUnavailable(
                f"the lease ledger {self.path} cannot be read ({exc}); check the state directory."
            ) from exc
        leases = {row[0]: self._lease_record(row, slices.get(row[0], [])) for row in rows}
        kernels = {k.id: k for k in map(self._kernel_from_row, kernel_rows)}
        self._view = _View(version, leases, kernels)
        return self._view

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass  # SQLite already rolled back after the error.

    # ------------------------------------------------------------------ rows

    @staticmethod
    def _usage(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        rows = conn.execute(
            "SELECT s.device_uuid, SUM(s.vram), SUM(s.compute) FROM slices s "
            "JOIN leases l ON l.id = s.lease_id WHERE l.released_at IS NULL GROUP BY s.device_uuid"
        )
        return {uuid_: (vram, compute) for uuid_, vram, compute in rows}

    @staticmethod
    def _held(conn: sqlite3.Connection, principal: str | None = None) -> dict[str, Use]:
        """Principal -> what it holds on this worker (active leases' slices, kernels not exited),
        read inside the caller's transaction; only ``principal``'s when given."""
        where, args = ("AND l.principal = ?", (principal,)) if principal is not None else ("", ())
        held: dict[str, Use] = {}
        for p, vram, compute, devices in conn.execute(
                "SELECT l.principal, SUM(s.vram), SUM(s.compute), SUM(l.mode = ?) FROM slices s "
                f"JOIN leases l ON l.id = s.lease_id WHERE l.released_at IS NULL {where} GROUP BY l.principal",
                (WHOLE_MODE, *args)):
            held[p] = Use(vram=int(vram), compute=int(compute), devices=int(devices))
        where = "AND principal = ?" if principal is not None else ""
        for p, kernels in conn.execute(
                f"SELECT principal, COUNT(*) FROM kernels WHERE status != 'exited' {where} GROUP BY principal", args):
            held[p] = held.get(p, Use()) + Use(kernels=int(kernels))
        return held

    def quota_use(self, principal: str) -> Use:
        """What the principal holds on this worker, in the quota's dimensions."""
        with self._read() as conn:
            return self._held(conn, principal).get(principal, Use())

    def _check_quota(self, conn: sqlite3.Connection, principal: str, quota: Quota | None, asked: Use) -> None:
        """Inside ``_write``: OverQuotaError when held + asked passes the quota."""
        if quota is None or quota.unlimited:
            return
        over = check(quota, self._held(conn, principal).get(principal, Use()), asked, principal)
        if over is not None:
            raise OverQuotaError(over)

    @classmethod
    def _lease_from_row(cls, conn: sqlite3.Connection, row: tuple[Any, ...]) -> LeaseRecord:
        slices = [
            SliceAlloc(device_uuid=u, device_index=i, vram=v, compute=c)
            for u, i, v, c in conn.execute(
                "SELECT device_uuid, device_index, vram, compute FROM slices WHERE lease_id = ? "
                "ORDER BY device_index, device_uuid",
                (row[0],),
            )
        ]
        return cls._lease_record(row, slices)

    @staticmethod
    def _lease_record(row: tuple[Any, ...], slices: list[SliceAlloc]) -> LeaseRecord:
        return LeaseRecord(
            id=row[0],
            principal=row[1],
            slices=slices,
            qos=row[2],
            mode=row[3],
            created_at=row[4],
            expires_at=row[5],
            ttl_seconds=row[6],
            profile=row[7],
            labels=json.loads(row[8]),
            released_at=row[9],
        )

    def _load_lease(self, conn: sqlite3.Connection, lease_id: str) -> LeaseRecord | None:
        row = conn.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE id = ?", (lease_id,)).fetchone()
        return None if row is None else self._lease_from_row(conn, row)

    def _owned_lease(self, conn: sqlite3.Connection, principal: str | None, lease_id: str) -> LeaseRecord:
        """An active lease, checked against its owner (``principal=None`` skips the check)."""
        lease = self._load_lease(conn, lease_id)
        if lease is None:
            raise NotFound(f"lease {lease_id} does not exist on this worker; it may have expired long ago.")
        if lease.released_at is not None:
            raise NotFound(f"lease {lease_id} was released; allocate a new one.")
        if principal is not None and lease.principal != principal:
            raise PermissionDenied(f"lease {lease_id} belongs to another principal.")
        return lease

    @staticmethod
    def _kernel_from_row(row: tuple[Any, ...]) -> KernelRecord:
        values = dict(zip(_KERNEL_COLUMNS, row, strict=True))
        values["labels"] = json.loads(values["labels"])
        return KernelRecord(**values)

    def _describe(self, device: DeviceCapacity) -> str:
        return f"{device.uuid} ({device.name})" if device.name else device.uuid

    # ------------------------------------------------------------------ leases

    @staticmethod
    def _validate_slice(vram: int, compute: int) -> None:
        _check_int(
            "vram", vram, 1, MAX_VRAM, f"ask for more than 0 bytes and at most {format_bytes(MAX_VRAM)}"
        )
        _check_int("compute", compute, 1, 100, "ask for a whole percent of one device, from 1 to 100")

    def allocate(
        self,
        principal: str,
        vram: int,
        compute: int,
        count: int = 1,
        qos: int = 2,
        model: str = "",
        mode: int = 0,
        ttl_seconds: int = 60,
        profile: str = "",
        labels: dict[str, str] | None = None,
        quota: Quota | None = None,
    ) -> LeaseRecord:
        """Lease ``count`` slices of ``vram`` bytes and ``compute`` percent on distinct devices.

        ``quota``: the principal's (worker/quotas.py), checked in the same transaction: OverQuotaError.

        Best fit: each slice goes on the device it leaves with the least free VRAM (then least free
        compute, then lowest index). All or nothing: ResourceExhausted says what was missing.
        """
        if not isinstance(principal, str) or not principal:
            raise InvalidArgument("the principal is empty; every lease needs an owner.")
        self._validate_slice(vram, compute)
        _check_int("count", count, 1, MAX_COUNT, f"ask for 1 to {MAX_COUNT} devices")
        _check_int("qos", qos, 0, MAX_QOS, f"use 0 to {MAX_QOS} (unspecified, low, medium, high, critical)")
        _check_int("mode", mode, 0, 2**31 - 1, "use one of the isolation modes the worker lists")
        _check_int("ttl_seconds", ttl_seconds, 1, MAX_TTL_SECONDS, f"use 1 to {MAX_TTL_SECONDS} seconds")
        labels = _check_labels(labels)

        devices = self.devices
        if model:
            devices = [d for d in devices if model.lower() in d.name.lower()]
            if not devices:
                names = sorted({d.name for d in self._devices.values()})
                have = ", ".join(names) if names else "no devices"
                raise ResourceExhausted(f"no device matches model {model!r}; this worker has: {have}.")
        if not devices:
            raise ResourceExhausted("this worker has no devices to lease.")

        with self._write() as conn:
            now = self._clock()
            self._check_quota(conn, principal, quota, Use(
                vram=vram * count, compute=compute * count, devices=count if mode == WHOLE_MODE else 0))
            usage = self._usage(conn)
            free = {
                d.uuid: (
                    d.vram_total - usage.get(d.uuid, (0, 0))[0],
                    d.compute_capacity - usage.get(d.uuid, (0, 0))[1],
                )
                for d in devices
            }
            fitting = [d for d in devices if free[d.uuid][0] >= vram and free[d.uuid][1] >= compute]
            # Each slice fits a device on its own, so best-fit order picks the count tightest devices.
            fitting.sort(key=lambda d: (free[d.uuid][0] - vram, free[d.uuid][1] - compute, d.index))
            if len(fitting) < count:
                raise ResourceExhausted(
                    self._exhausted_message(vram, compute, count, model, devices, free, fitting)
                )
            chosen = sorted(fitting[:count], key=lambda d: d.index)

            conn.execute(
                "DELETE FROM leases WHERE released_at IS NOT NULL AND released_at < ?",
                (now - TOMBSTONE_SECONDS,),
            )
            lease = LeaseRecord(
                id="lease-" + uuid.uuid4().hex,
                principal=principal,
                slices=[SliceAlloc(d.uuid, d.index, vram, compute) for d in chosen],
                qos=qos,
                mode=mode,
                created_at=now,
                expires_at=now + ttl_seconds,
                ttl_seconds=ttl_seconds,
                profile=profile,
                labels=labels,
            )
            self._insert_lease(conn, lease)
        return lease

    def _insert_lease(self, conn: sqlite3.Connection, lease: LeaseRecord) -> None:
        """Inside ``_write``: store a new lease and its slices (capacity already checked)."""
        conn.execute(
            f"INSERT INTO leases ({_LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (lease.id, lease.principal, lease.qos, lease.mode, lease.created_at, lease.expires_at,
             lease.ttl_seconds, lease.profile, json.dumps(lease.labels)),
        )
        conn.executemany(
            "INSERT INTO slices (lease_id, device_uuid, device_index, vram, compute) VALUES (?, ?, ?, ?, ?)",
            [(lease.id, s.device_uuid, s.device_index, s.vram, s.compute) for s in lease.slices],
        )
        self._on_commit(lambda view: view.put_lease(lease))

    def _exhausted_message(
        self,
        vram: int,
        compute: int,
        count: int,
        model: str,
        devices: list[DeviceCapacity],
        free: dict[str, tuple[int, int]],
        fitting: list[DeviceCapacity],
    ) -> str:
        where = "1 device" if count == 1 else f"each of {count} distinct devices"
        asked = f"needs {format_bytes(vram)} VRAM and {format_percent(compute)} compute on {where}"
        among = f" matching {model!r}" if model else ""
        if count > 1 and fitting:
            have = ", ".join(self._describe(d) for d in fitting)
            return (
                f"{asked}; only {len(fitting)} device{'s' if len(fitting) > 1 else ''}{among} "
                f"{'have' if len(fitting) > 1 else 'has'} that free ({have}). "
                "Ask for fewer devices or a smaller slice, or wait for leases to be released."
            )
        largest = max(devices, key=lambda d: (free[d.uuid][0], free[d.uuid][1], -d.index))
        return (
            f"{asked}; the largest free slice{among} is {_slice_text(*free[largest.uuid])} on "
            f"{self._describe(largest)}. Ask for a smaller slice or wait for leases to be released."
        )

    def renew(self, principal: str, lease_id: str) -> LeaseRecord:
        """Heartbeat: push the lease's expiry ``ttl_seconds`` into the future."""
        with self._write() as conn:
            lease = self._owned_lease(conn, principal, lease_id)
            lease.expires_at = self._clock() + lease.ttl_seconds
            conn.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (lease.expires_at, lease_id))
            self._on_commit(lambda view: view.put_lease(lease))
        return _copy_lease(lease)

    def _release(self, principal: str | None, lease_id: str) -> bool:
        with self._write() as conn:
            lease = self._load_lease(conn, lease_id)
            if lease is None:
                raise NotFound(f"lease {lease_id} does not exist on this worker.")
            if principal is not None and lease.principal != principal:
                raise PermissionDenied(f"lease {lease_id} belongs to another principal.")
            if lease.released_at is not None:
                return False
            conn.execute("UPDATE leases SET released_at = ? WHERE id = ?", (self._clock(), lease_id))
            self._on_commit(lambda view: view.drop_lease(lease_id))
            return True

    def release(self, principal: str, lease_id: str) -> bool:
        """Free a lease. Idempotent: False when it was already released (its kernels are the caller's)."""
        return self._release(principal, lease_id)

    def reclaim(self, lease_id: str) -> bool:
        """Release a lease whatever its owner (the expiry reaper); False when already released."""
        return self._release(None, lease_id)

    def resize(self, principal: str, lease_id: str, vram: int | None, compute: int | None,
               quota: Quota | None = None) -> LeaseRecord:
        """Give each of the lease's slices ``vram`` bytes and ``compute`` percent, on the same devices.

        A dimension given as None keeps the lease's current value, read in this transaction, so a
        concurrent resize of the other dimension is never undone. Growth is checked against ``quota``.
        """
        if vram is None and compute is None:
            raise InvalidArgument(f"resizing lease {lease_id} needs a new VRAM size, a new compute share, or both.")
        if vram is not None:
            self._validate_slice(vram, 1)
        if compute is not None:
            self._validate_slice(1, compute)
        with self._write() as conn:
            lease = self._owned_lease(conn, principal, lease_id)
            old = lease.slices[0]
            vram = old.vram if vram is None else vram
            compute = old.compute if compute is None else compute
            n = len(lease.slices)
            self._check_quota(conn, principal, quota, Use(
                vram=max(0, vram - old.vram) * n, compute=max(0, compute - old.compute) * n))
            usage = self._usage(conn)
            for s in lease.slices:
                device = self._devices.get(s.device_uuid)
                if device is None:
                    raise ResourceExhausted(
                        f"lease {lease_id} is on device {s.device_uuid}, which this worker no longer lists; "
                        "release it and allocate a new one."
                    )
                used_vram, used_compute = usage.get(s.device_uuid, (0, 0))
                free_vram = device.vram_total - used_vram
                free_compute = device.compute_capacity - used_compute
                if vram > free_vram + s.vram or compute > free_compute + s.compute:
                    raise ResourceExhausted(
                        f"cannot resize lease {lease_id} to {_slice_text(vram, compute)}: "
                        f"{self._describe(device)} has "
                        f"{_slice_text(max(free_vram, 0), max(free_compute, 0))} "
                        f"free besides the lease's own {_slice_text(s.vram, s.compute)}. "
                        "Ask for less, or release other leases on that device."
                    )
            conn.execute(
                "UPDATE slices SET vram = ?, compute = ? WHERE lease_id = ?", (vram, compute, lease_id)
            )
            lease.slices = [replace(s, vram=vram, compute=compute) for s in lease.slices]
            self._on_commit(lambda view: view.put_lease(lease))
        return _copy_lease(lease)

    def get(self, principal: str | None, lease_id: str) -> LeaseRecord:
        """An active lease; ``principal=None`` skips the ownership check."""
        with self._lock:
            lease = self._current_view().lease_by_id.get(lease_id)
            if lease is not None:
                if principal is not None and lease.principal != principal:
                    raise PermissionDenied(f"lease {lease_id} belongs to another principal.")
                return _copy_lease(lease)
        with self._read() as conn:  # not active: the rows say why
            return self._owned_lease(conn, principal, lease_id)

    def is_active(self, lease_id: str) -> bool:
        """Whether the lease exists and was neither released nor reclaimed."""
        with self._lock:
            return lease_id in self._current_view().lease_by_id

    def leases(self, principal: str | None = None) -> list[LeaseRecord]:
        """Active leases, oldest first; only ``principal``'s when given."""
        with self._lock:
            leases = self._current_view().leases
            return [_copy_lease(r) for r in leases if principal is None or r.principal == principal]

    def expired(self, now: float | None = None) -> list[LeaseRecord]:
        """Active leases whose expiry has passed (for the reaper to ``reclaim``)."""
        now = self._clock() if now is None else now
        with self._lock:
            due = [r for r in self._current_view().leases if r.expires_at < now]
            due.sort(key=lambda r: (r.expires_at, r.id))
            return [_copy_lease(r) for r in due]

    def device_usage(self) -> dict[str, tuple[int, int]]:
        """Device uuid -> (VRAM leased, compute leased) for every device, zeros included."""
        with self._lock:
            usage = self._current_view().usage
        return {d.uuid: usage.get(d.uuid, (0, 0)) for d in self.devices}

    def live(self) -> LiveRows:
        """Active leases, live kernels and device_usage() at once, without copies: for the
        telemetry tick, which reads them every second. The records are shared: change nothing in
        them (leases(), kernels() and get() give copies to change)."""
        with self._lock:
            view = self._current_view()
            usage = view.usage
            return LiveRows(view.leases, view.kernels,
                            MappingProxyType({d.uuid: usage.get(d.uuid, (0, 0)) for d in self.devices}))

    def check(self) -> list[str]:
        """Consistency problems, as sentences: devices leased past capacity, slices without a lease.

        Empty when all is well. Past capacity can only happen after ``set_devices`` shrank a device.
        """
        problems = []
        with self._read() as conn:
            usage = self._usage(conn)
            orphans = conn.execute(
                "SELECT COUNT(*) FROM slices WHERE lease_id NOT IN (SELECT id FROM leases)"
            ).fetchone()[0]
        for device in self.devices:
            vram, compute = usage.get(device.uuid, (0, 0))
            if vram > device.vram_total or compute > device.compute_capacity:
                problems.append(
                    f"{self._describe(device)} is leased {_slice_text(vram, compute)} but has only "
                    f"{_slice_text(device.vram_total, device.compute_capacity)}."
                )
        if orphans:
            problems.append(f"{orphans} slice(s) belong to no lease.")
        return problems

    # ------------------------------------------------------------------ kernels

    def tenant_uid(self, principal: str, first: int, last: int, has_account: Callable[[int], bool]) -> int:
        """The uid of the principal's kernels (``--tenant-uids FIRST-LAST``), remembered across restarts.

        Its uid so far while that is still in the range; else the lowest uid of the range that no
        other principal has and no account of this host uses. ResourceExhausted when none is left.
        """
        from tf_remoting.worker.tenants import pick_uid

        with self._write() as conn:
            rows = dict(conn.execute("SELECT principal, uid FROM tenant_uids").fetchall())
            current = rows.pop(principal, None)
            uid = pick_uid(current, set(rows.values()), first, last, has_account)
            if uid is None:
                raise ResourceExhausted(
                    f"no uid is left for principal {principal!r}: all {last - first + 1} uids of the "
                    f"tenant range {first}-{last} belong to other principals or to accounts of this host; "
                    "the worker's administrator can widen --tenant-uids")
            if uid != current:
                conn.execute("INSERT OR REPLACE INTO tenant_uids (principal, uid) VALUES (?, ?)", (principal, uid))
            return uid

    def add_kernel(self, rec: KernelRecord, quota: Quota | None = None) -> None:
        """Record a kernel started in an active lease; it counts against ``quota``'s kernels."""
        if rec.status not in KERNEL_STATUSES:
            raise InvalidArgument(f"kernel status {rec.status!r} is not one of {', '.join(KERNEL_STATUSES)}.")
        labels = _check_labels(rec.labels)
        with self._write() as conn:
            self._owned_lease(conn, rec.principal, rec.lease_id)
            self._check_quota(conn, rec.principal, quota, Use(kernels=1))
            if conn.execute("SELECT 1 FROM kernels WHERE id = ?", (rec.id,)).fetchone():
                raise InvalidArgument(f"kernel {rec.id} is already recorded; use a new kernel id.")
            values = [getattr(rec, name) for name in _KERNEL_COLUMNS]
            values[_KERNEL_COLUMNS.index("labels")] = json.dumps(labels)
            conn.execute(
                f"INSERT INTO kernels ({', '.join(_KERNEL_COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            added = replace(rec, labels=labels)
            self._on_commit(lambda view: view.put_kernel(added))

    def update_kernel(self, kernel_id: str, **changes: Any) -> KernelRecord:
        """Change a kernel's fields (``status=``, ``pid=``, ``exit_code=`` ...); returns the new record."""
        unknown = set(changes) - set(_KERNEL_COLUMNS) | ({"id"} & set(changes))
        if unknown:
            raise TypeError(f"update_kernel() cannot change {', '.join(sorted(unknown))}")
        if "status" in changes and changes["status"] not in KERNEL_STATUSES:
            raise InvalidArgument(
                f"kernel status {changes['status']!r} is not one of {', '.join(KERNEL_STATUSES)}."
            )
        if "labels" in changes:
            changes["labels"] = json.dumps(_check_labels(changes["labels"]))
        with self._write() as conn:
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                conn.execute(f"UPDATE kernels SET {assignments} WHERE id = ?", (*changes.values(), kernel_id))
            row = conn.execute(
                f"SELECT {', '.join(_KERNEL_COLUMNS)} FROM kernels WHERE id = ?", (kernel_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"kernel {kernel_id} does not exist on this worker.")
            updated = self._kernel_from_row(row)
            self._on_commit(lambda view: view.put_kernel(updated))
            return _copy_kernel(updated)

    def get_kernel(self, principal: str | None, kernel_id: str) -> KernelRecord:
        """One kernel; ``principal=None`` skips the ownership check."""
        with self._lock:
            live = self._current_view().kernel_by_id.get(kernel_id)
            kernel = None if live is None else _copy_kernel(live)
        if kernel is None:  # exited or unknown: ask the rows
            with self._read() as conn:
                row = conn.execute(
                    f"SELECT {', '.join(_KERNEL_COLUMNS)} FROM kernels WHERE id = ?", (kernel_id,)
                ).fetchone()
            if row is None:
                raise NotFound(f"kernel {kernel_id} does not exist on this worker.")
            kernel = self._kernel_from_row(row)
        if principal is not None and kernel.principal != principal:
            raise PermissionDenied(f"kernel {kernel_id} belongs to another principal.")
        return kernel

    def kernels(self, lease_id: str | None = None, include_exited: bool = False) -> list[KernelRecord]:
        """Kernels, oldest first: of one lease when given, exited ones only with ``include_exited``."""
        if not include_exited:
            with self._lock:
                live = self._current_view().kernels
                return [_copy_kernel(k) for k in live if lease_id is None or k.lease_id == lease_id]
        query = f"SELECT {', '.join(_KERNEL_COLUMNS)} FROM kernels WHERE 1 = 1"
        params: list[str] = []
        if lease_id is not None:
            query += " AND lease_id = ?"
            params.append(lease_id)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY started_at, id", params).fetchall()
        return [self._kernel_from_row(row) for row in rows]

    def remove_kernel(self, kernel_id: str) -> bool:
        """Forget a kernel; False when it was not recorded."""
        with self._write() as conn:
            self._on_commit(lambda view: view.drop_kernel(kernel_id))
            return conn.execute("DELETE FROM kernels WHERE id = ?", (kernel_id,)).rowcount > 0
