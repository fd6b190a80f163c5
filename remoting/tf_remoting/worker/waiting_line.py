"""A worker's waiting line: who is served next when capacity frees (plain Python, no gRPC).

Every Allocate on a worker goes through one line, whichever Jupyter server sent it. The line
decides, in one pass, which requests are granted now and on which devices; the worker's ledger
(`line_store.py`) stores the entries and applies the grants in the same transaction.

Order
    1. QoS, highest first (critical, high, medium, low).
    2. Fair share between principals: dominant resource fairness over VRAM and compute. A
       principal's dominant share is max(VRAM it holds / the worker's VRAM, compute it holds /
       the worker's compute capacity), counted from the leases it holds when the pass starts;
       the smaller share goes first. So a user holding nothing is served before one holding half
       the worker, whatever their arrival.
    3. Arrival (then the request id, so the order is total).

Backfill (who may start ahead of a request that waits): reservations
    The pass walks the line in order and keeps per device the free VRAM and compute, and which
    devices are reserved. An entry is granted only on devices not reserved by an earlier entry.
    An entry that cannot be granted *reserves* ``count`` of the devices it could use (its model
    filter allows them and they are large enough for it on an empty worker): those nearest to
    fitting it (the least VRAM, then compute, still missing; for a whole device, the least
    leased), among those not reserved already. A reserved device takes no new grant, so it only
    empties until the entry fits there; a later entry may still start on the other devices, which
    the waiting entry is not waiting for. Reservations are recomputed on every pass, so an entry
    moves to a device that has become nearer. A newcomer is simply the last entry of the line and
    obeys the same rule, so it never takes room an earlier entry waits for. An entry that waits
    for its quota (not for room) reserves nothing: room it would not take anyway is not kept.

Placement of a grant: best fit on the unreserved devices that fit (least VRAM left, then least
compute left, then lowest index), `count` distinct devices; an exclusive ("whole") request needs
a device with nothing leased on it and takes the smallest such device that fits.

API (also for benchmarks): ``line = WaitingLine(devices)``; ``line.add(entry)``;
``line.remove(id)``; ``line.grantable(free_by_device, usage_by_principal) -> list[Grant]`` (one
pass, nothing changed: the caller applies the grants and removes those entries);
``line.decide(...)`` returns the grants and, for each waiting entry, its position and why it waits;
``line.position(id, usage_by_principal)`` (1-based). ``quota`` is a callable
``(entry, usage_by_principal) -> str | None``: a sentence when the entry's principal would go over
its quota with it (None: within quota).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tf_remoting.proto import WAIT_BEHIND, WAIT_NO_ROOM, WAIT_QUOTA

# Why an entry waits.
NO_ROOM, QUOTA, BEHIND = WAIT_NO_ROOM, WAIT_QUOTA, WAIT_BEHIND  # the reasons (tf_remoting.proto says each)

Usage = Mapping[str, tuple[int, int]]  # principal -> (VRAM bytes held, compute percent held)
Free = Mapping[str, tuple[int, int]]  # device uuid -> (free VRAM, free compute)
QuotaCheck = Callable[["Entry", Usage], "str | None"]


@dataclass(frozen=True)
class Device:
    uuid: str
    index: int
    name: str
    vram_total: int
    compute_capacity: int


@dataclass(frozen=True)
class Entry:
    """One waiting request. ``vram``/``compute`` per device, on ``count`` distinct devices;
    ``whole``: an exclusive request (a device with nothing else on it, ``vram`` the least size)."""

    id: str
    principal: str
    qos: int
    vram: int
    compute: int
    count: int = 1
    arrival: float = 0.0
    model: str = ""
    whole: bool = False


@dataclass(frozen=True)
class Grant:
    entry: Entry
    devices: tuple[str, ...]  # uuids, by index
    vram: int  # per device (a whole request gets the device's total)
    compute: int


@dataclass
class Decision:
    grants: list[Grant] = field(default_factory=list)
    # id -> (1-based position among those still waiting, reason: NO_ROOM / QUOTA / BEHIND, quota sentence)
    waiting: dict[str, tuple[int, str, str]] = field(default_factory=dict)


def no_quota(entry: Entry, usage: Usage) -> str | None:
    return None


class WaitingLine:
    def __init__(self, devices: Iterable[Device], quota: QuotaCheck = no_quota) -> None:
        self.devices = sorted(devices, key=lambda d: d.index)
        self.quota = quota
        self.entries: dict[str, Entry] = {}
        self._vram_total = sum(d.vram_total for d in self.devices) or 1
        self._compute_total = sum(d.compute_capacity for d in self.devices) or 1

    def add(self, entry: Entry) -> None:
        self.entries[entry.id] = entry

    def remove(self, entry_id: str) -> None:
        self.entries.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------ the rules

    def eligible(self, entry: Entry) -> list[Device]:
        """Devices the entry could ever use (model filter, large enough when empty)."""
        model = entry.model.lower()
        return [d for d in self.devices
                if (not model or model in d.name.lower()) and d.vram_total >= entry.vram
                and (entry.whole or d.compute_capacity >= entry.compute)]

    def can_ever_fit(self, entry: Entry) -> bool:
        return len(self.eligible(entry)) >= entry.count

    def dominant_share(self, principal: str, usage: Usage) -> float:
        vram, compute = usage.get(principal, (0, 0))
        return max(vram / self._vram_total, compute / self._compute_total)

    def ordered(self, usage: Usage) -> list[Entry]:
        shares: dict[str, float] = {}
        for e in self.entries.values():
            if e.principal not in shares:
                shares[e.principal] = self.dominant_share(e.principal, usage)
        return sorted(self.entries.values(), key=lambda e: (-e.qos, shares[e.principal], e.arrival, e.id))

    def decide(self, free_by_device: Free, usage_by_principal: Usage) -> Decision:
        """One pass over the line: the grants to make now, and every other entry's position and
        reason. ``free_by_device`` and ``usage_by_principal`` are read, never changed."""
        free = {d.uuid: free_by_device.get(d.uuid, (d.vram_total, d.compute_capacity)) for d in self.devices}
        usage = dict(usage_by_principal)
        reserved: set[str] = set()
        decision = Decision()
        for entry in self.ordered(usage_by_principal):
            quota = self.quota(entry, usage)
            if quota is not None:
                decision.waiting[entry.id] = (len(decision.waiting) + 1, QUOTA, quota)
                continue
            eligible = self.eligible(entry)
            fitting = [d for d in eligible if self._fits(entry, d, free[d.uuid])]
            open_ = [d for d in fitting if d.uuid not in reserved]
            if len(open_) >= entry.count:
                chosen = self._place(entry, open_, free)
                vram = chosen[0].vram_total if entry.whole else entry.vram
                compute = min(entry.compute, chosen[0].compute_capacity) if entry.whole else entry.compute
                for d in chosen:
                    fv, fc = free[d.uuid]
                    free[d.uuid] = (fv - (d.vram_total if entry.whole else vram), fc - compute)
                held = usage.get(entry.principal, (0, 0))
                usage[entry.principal] = (held[0] + vram * len(chosen), held[1] + compute * len(chosen))
                decision.grants.append(Grant(entry, tuple(d.uuid for d in chosen), vram, compute))
                continue
            reason = BEHIND if len(fitting) >= entry.count else NO_ROOM
            decision.waiting[entry.id] = (len(decision.waiting) + 1, reason, "")
            reserved.update(self._reserve(entry, [d for d in eligible if d.uuid not in reserved], free))
        return decision

    def grantable(self, free_by_device: Free, usage_by_principal: Usage) -> list[Grant]:
        return self.decide(free_by_device, usage_by_principal).grants

    def position(self, entry_id: str, usage_by_principal: Usage) -> int:
        """1-based place in the order (0: not in the line)."""
        for i, e in enumerate(self.ordered(usage_by_principal), 1):
            if e.id == entry_id:
                return i
        return 0

    # ------------------------------------------------------------------ placement

    def _fits(self, entry: Entry, device: Device, free: tuple[int, int]) -> bool:
        if entry.whole:
            return free[0] >= device.vram_total and free[1] >= min(entry.compute, device.compute_capacity)
        return free[0] >= entry.vram and free[1] >= entry.compute

    def _reserve(self, entry: Entry, candidates: list[Device], free: Mapping[str, tuple[int, int]]) -> list[str]:
        """The ``count`` candidates nearest to fitting the entry (uuids)."""
        def missing(d: Device) -> tuple[int, int, int]:
            fv, fc = free[d.uuid]
            if entry.whole:
                return (d.vram_total - fv, max(0, min(entry.compute, d.compute_capacity) - fc), d.index)
            return (max(0, entry.vram - fv), max(0, entry.compute - fc), d.index)

        return [d.uuid for d in sorted(candidates, key=missing)[:entry.count]]

    def _place(self, entry: Entry, candidates: list[Device], free: Mapping[str, tuple[int, int]]) -> list[Device]:
        if entry.whole:  # the smallest untouched devices that fit
            best = sorted(candidates, key=lambda d: (d.vram_total, d.index))
        else:  # best fit
            best = sorted(candidates, key=lambda d: (free[d.uuid][0] - entry.vram,
                                                     free[d.uuid][1] - entry.compute, d.index))
        return sorted(best[:entry.count], key=lambda d: d.index)


def describe_wait(reason: str, quota_sentence: str = "") -> str:
    """A sentence for the owner of a waiting request."""
    if reason == QUOTA:
        return f"waits for its principal's quota: {quota_sentence}" if quota_sentence else "waits for its quota"
    if reason == BEHIND:
        return ("it would fit now, but only on devices a request ahead of it in the line waits for; "
                "it starts when they are served or when room frees elsewhere")
    return "waits for room: no device has that much free VRAM and compute now"
