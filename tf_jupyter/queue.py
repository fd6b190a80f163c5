"""The wait queue: vGPU requests that found no room, in the order they will be served.

Order: QoS first (critical, high, medium, low), then arrival. Plain Python with an injected clock;
the server wraps it (wakes it when capacity frees, removes entries when their kernels start or give
up), so nothing here waits, locks or imports asyncio.

Head-of-line rule (see :meth:`WaitQueue.ready`): within one QoS level a later, smaller request may
start while an earlier, bigger one still waits (backfill, so a free 4 GiB slice is not left idle
behind a 40 GiB request); a lower QoS level never starts while a higher one has a request waiting
that does not fit. The queue timeout bounds how long a big request can be passed over.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tf_jupyter.placement import Request
from tf_jupyter.qos import QOS_RANK

__all__ = ["QOS_RANK", "QueueEntry", "WaitQueue"]  # QOS_RANK (lower is served first) from tf_jupyter.qos


@dataclass(frozen=True)
class QueueEntry:
    """One waiting request. ``labels`` are free-form (kernel id, notebook path, profile...)."""

    id: str
    request: Request
    qos: str
    arrival: float
    labels: Mapping[str, str] = field(default_factory=dict)
    seq: int = 0  # ties on arrival keep push order

    @property
    def sort_key(self) -> tuple[int, float, int]:
        return (QOS_RANK[self.qos], self.arrival, self.seq)


class WaitQueue:
    """Requests waiting for capacity, ordered by QoS then arrival."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, QueueEntry] = {}
        self._order: list[QueueEntry] | None = []  # cached sorted view; None when stale
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def push(self, entry_id: str, request: Request, qos: str = "medium",
             labels: Mapping[str, str] | None = None) -> QueueEntry:
        """Add a request; its arrival time is the clock's now. A duplicate id is a ValueError."""
        if qos not in QOS_RANK:
            raise ValueError(f"invalid QoS {qos!r}: use one of {', '.join(QOS_RANK)}")
        if entry_id in self._entries:
            raise ValueError(f"{entry_id!r} is already waiting in the queue (position {self.position(entry_id)})")
        entry = QueueEntry(entry_id, request, qos, self._clock(), dict(labels or {}), next(self._seq))
        self._entries[entry_id] = entry
        self._order = None
        return entry

    def remove(self, entry_id: str) -> QueueEntry | None:
        """Take an entry out (started, cancelled or timed out); None if it was not there."""
        entry = self._entries.pop(entry_id, None)
        if entry is not None:
            self._order = None
        return entry

    def get(self, entry_id: str) -> QueueEntry:
        try:
            return self._entries[entry_id]
        except KeyError:
            raise KeyError(f"{entry_id!r} is not waiting in the queue") from None

    def entries(self) -> list[QueueEntry]:
        """All entries, first served first."""
        if self._order is None:
            self._order = sorted(self._entries.values(), key=lambda e: e.sort_key)
        return list(self._order)

    def position(self, entry_id: str) -> int:
        """1-based place in the queue; KeyError if the id is not waiting."""
        entry = self.get(entry_id)
        return 1 + sum(1 for e in self._entries.values() if e.sort_key < entry.sort_key)

    def ready(self, fits: Callable[[Request], bool]) -> list[QueueEntry]:
        """Entries that may start now, in queue order (they stay queued until removed).

        ``fits`` is called once per entry considered, in queue order, so a predicate that also
        reserves what it finds (e.g. ``lambda r: state.place_and_commit(r) is not None`` on a
        PoolState) never hands one free slice to two entries. Within a QoS level every entry that
        fits is ready (backfill); once an entry does not fit, lower QoS levels are not considered.
        """
        out: list[QueueEntry] = []
        blocked_rank: int | None = None
        for entry in self.entries():
            rank = QOS_RANK[entry.qos]
            if blocked_rank is not None and rank > blocked_rank:
                break
            if fits(entry.request):
                out.append(entry)
            elif blocked_rank is None:
                blocked_rank = rank
        return out

    def expired(self, now: float | None = None, timeout: float = 0.0) -> list[QueueEntry]:
        """Entries that have waited ``timeout`` seconds or more by ``now`` (default: the clock), in order."""
        now = self._clock() if now is None else now
        return [e for e in self.entries() if now - e.arrival >= timeout]
