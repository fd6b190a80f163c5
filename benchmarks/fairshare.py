"""Fair share on a simulated crowded day: the worker's one waiting line against today's per-server FIFO.

    python benchmarks/fairshare.py [--seed S] [--users N] [--hours H] [--days D] [--load L] [--idle-share F]
                                   [--json PATH]

One worker with 4 devices of 48 GiB, 20 users, each with their own Jupyter server. Each user's
requests arrive as a Poisson process (the same rate for every user: equal demand); each asks for a
built-in profile (tf_jupyter.profiles: small, medium, large, whole) at a QoS drawn per request, and
holds its slice for an exponential lifetime (longer for bigger profiles). The arrival rate is set
so the offered load is ``--load`` times the pool's VRAM. A request gives up after ``--timeout``
seconds of waiting (c.TfVgpu.queue_timeout). A kernel spends the end of its life idle (the user stopped
running cells but kept the notebook open): a share of its lifetime uniform in [0, 2 x ``--idle-share``],
default 0.2 (a mean of 20 %, less than notebooks are commonly idle); ``--idle-share 0`` models kernels that
work until they end, where no QoS release can help. Simulated time (an event heap, no sleeping), seeded:
the same seed gives the same figures.

Both systems see the same requests, in the same run, on a model of the worker's ledger (best fit:
the device left with the least free VRAM, then compute, then lowest index, as
tf_remoting.worker.leases.Ledger.allocate; a whole device needs an untouched device):

- **fifo** (today, tf_jupyter at 2c66ee3): each user's server keeps its own queue (tf_jupyter/queue.py:
  QoS, then arrival; within a QoS level a later request that fits starts, a lower level waits behind
  a higher one that does not fit) and tries to place a newcomer *before* looking at its queue
  (Scheduler.allocate). When a lease ends, every server's queue is woken (Watch -> on_capacity ->
  wake_queue): the releasing server first, the others in a random order (they race for the freed
  room; the worker serves whoever calls first). Copied here as the baseline model, because the
  waiting line replaces that code.
- **line**: the worker's one waiting line (tf_remoting.worker.waiting_line, the real module) with
  the real quota code (tf_remoting.worker.quotas): QoS, then fair share between principals, then
  arrival, with its reservations (backfill rule), and the worker's QoS release of idle lower-QoS
  kernels (tf_remoting.worker.preemption, the real rule). Today's servers have no QoS release.

Figures: p95 wait by QoS (a request that gave up counts with the time it waited), Jain's fairness
index over the users' mean waits (every user has the same demand, so equal treatment means equal
waits), mean VRAM utilisation of the pool over the day, and the line's decision time per Allocate
and per release with 1,000 requests waiting.
Targets (shared/design/BASELINES.md): critical p95 wait <= 0.25 x FIFO's, Jain >= 0.95,
utilisation >= FIFO's, <= 5 ms per decision with 1,000 waiting.
"""

from __future__ import annotations

import abc
import argparse
import heapq
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tf_jupyter.profiles import BUILTIN_PROFILES  # noqa: E402
from tf_jupyter.qos import QOS_NAMES, QOS_RANK, qos_value  # noqa: E402

GiB = 1 << 30
DEVICES = 4
DEVICE_VRAM = 48 * GiB
PROFILE_MIX = {"small": 0.5, "medium": 0.3, "large": 0.15, "whole": 0.05}
LIFETIME_S = {"small": 1200.0, "medium": 1800.0, "large": 2700.0, "whole": 3600.0}  # means, exponential
QOS_MIX = {"low": 0.3, "medium": 0.45, "high": 0.15, "critical": 0.1}


# ---------------------------------------------------------------- the day's requests


@dataclass(frozen=True)
class Ask:
    id: str
    user: str
    arrival: float
    profile: str
    qos: str
    lifetime: float
    active: float = 0.0  # seconds of work after the grant; idle from then until the lifetime ends

    @property
    def whole(self) -> bool:
        return BUILTIN_PROFILES[self.profile].whole_device

    @property
    def vram(self) -> int:
        return DEVICE_VRAM if self.whole else BUILTIN_PROFILES[self.profile].vram

    @property
    def compute(self) -> int:
        return 100 if self.whole else BUILTIN_PROFILES[self.profile].compute


def offered_vram_seconds_per_request() -> float:
    return sum(w * (DEVICE_VRAM if BUILTIN_PROFILES[p].whole_device else BUILTIN_PROFILES[p].vram) * LIFETIME_S[p]
               for p, w in PROFILE_MIX.items())


def make_day(seed: int, users: int, hours: float, load: float, idle_share: float = 0.0) -> list[Ask]:
    """One day's requests. ``idle_share``: the mean share of a kernel's life spent idle at its end (the user
    stopped running cells but kept the notebook open), uniform in [0, 2 x idle_share]; drawn from its own
    generator, so the arrivals, profiles, QoS and lifetimes do not depend on it."""
    rng = random.Random(seed)
    idle_rng = random.Random(seed + 7919)
    day = hours * 3600
    rate = load * DEVICES * DEVICE_VRAM / offered_vram_seconds_per_request() / users  # per user, per second
    asks: list[Ask] = []
    for u in range(users):
        t = rng.expovariate(rate)
        while t < day:
            profile = rng.choices(list(PROFILE_MIX), weights=list(PROFILE_MIX.values()))[0]
            qos = rng.choices(list(QOS_MIX), weights=list(QOS_MIX.values()))[0]
            lifetime = rng.expovariate(1 / LIFETIME_S[profile])
            idle = min(1.0, idle_rng.uniform(0, 2 * idle_share))
            asks.append(Ask(f"s{seed}-r{len(asks)}", f"user{u:02d}", t, profile, qos, lifetime,
                            active=lifetime * (1 - idle)))
            t += rng.expovariate(rate)
    asks.sort(key=lambda a: (a.arrival, a.id))
    return asks


# ---------------------------------------------------------------- the worker's ledger (model)


class Ledger:
    """Free VRAM and compute per device; best fit as tf_remoting.worker.leases.Ledger.allocate."""

    def __init__(self) -> None:
        self.free = [[DEVICE_VRAM, 100] for _ in range(DEVICES)]
        self.held: dict[str, tuple[int, int, int]] = {}  # ask id -> (device, vram, compute)
        self.owner: dict[str, str] = {}  # ask id -> user
        self.leased_vram = 0

    def pick(self, ask: Ask) -> int | None:
        fitting = [(f[0] - ask.vram, f[1] - ask.compute, i) for i, f in enumerate(self.free)
                   if f[0] >= ask.vram and f[1] >= ask.compute and (not ask.whole or f == [DEVICE_VRAM, 100])]
        return min(fitting)[2] if fitting else None

    def allocate(self, ask: Ask) -> bool:
        i = self.pick(ask)
        if i is None:
            return False
        self.free[i][0] -= ask.vram
        self.free[i][1] -= ask.compute
        self.held[ask.id] = (i, ask.vram, ask.compute)
        self.owner[ask.id] = ask.user
        self.leased_vram += ask.vram
        return True

    def take(self, ask: Ask, device: int, vram: int, compute: int) -> None:
        """A grant the line placed: `vram`/`compute` on `device` (a whole device: all of it)."""
        self.free[device][0] -= DEVICE_VRAM if ask.whole else vram
        self.free[device][1] -= compute
        self.held[ask.id] = (device, DEVICE_VRAM if ask.whole else vram, compute)
        self.owner[ask.id] = ask.user
        self.leased_vram += DEVICE_VRAM if ask.whole else vram

    def usage(self) -> dict[str, tuple[int, int]]:
        """user -> (VRAM, compute) held: the line's fair share reads it."""
        out: dict[str, tuple[int, int]] = {}
        for ask_id, (_, vram, compute) in self.held.items():
            user = self.owner[ask_id]
            v, c = out.get(user, (0, 0))
            out[user] = (v + vram, c + compute)
        return out

    def release(self, ask_id: str) -> None:
        i, vram, compute = self.held.pop(ask_id)
        del self.owner[ask_id]
        self.free[i][0] += vram
        self.free[i][1] += compute
        self.leased_vram -= vram


# ---------------------------------------------------------------- the simulation, for any system


@dataclass
class Outcome:
    waits: dict[str, float] = field(default_factory=dict)  # ask id -> seconds waited (granted or gave up)
    gave_up: set[str] = field(default_factory=set)
    vram_seconds: float = 0.0  # integral of leased VRAM over the day
    day: float = 0.0
    released_idle: int = 0  # kernels released (idle, lower QoS) so a higher-QoS request could start


class System(abc.ABC):
    """What a system does on arrival, on a release, and when a request gives up; it grants through `grant`,
    and may end an idle kernel early through `release_at` (QoS release) or ask to be called back at a time
    through `call_at` (`tick`). Two systems implement it: today's per-server FIFO and the worker's line."""

    name = ""

    def __init__(self, ledger: Ledger, grant: Callable[[Ask], None], rng: random.Random) -> None:
        self.ledger, self.grant, self.rng = ledger, grant, rng
        self.release_at: Callable[[Ask, float], None] = lambda ask, when: None
        self.call_at: Callable[[float], None] = lambda when: None

    @abc.abstractmethod
    def arrive(self, ask: Ask, now: float) -> None:
        """A request arrives: grant it now or keep it waiting."""

    @abc.abstractmethod
    def released(self, ask: Ask, now: float) -> None:
        """A granted request's lifetime ended: its room is free again."""

    @abc.abstractmethod
    def give_up(self, ask: Ask, now: float) -> bool:
        """Take the request out of the waiting; False if it was granted already."""

    def tick(self, now: float) -> None:  # noqa: B027 (optional: a system that never calls call_at ignores it)
        """A time asked for with `call_at` has come."""


def simulate(asks: list[Ask], make: Callable[[Ledger, Callable[[Ask], None], random.Random], System],
             seed: int, timeout: float, day: float) -> Outcome:
    ledger = Ledger()
    out = Outcome(day=day)
    heap: list[tuple[float, int, str, Ask | None]] = []
    seq = 0
    now = 0.0
    last = 0.0

    def push(t: float, kind: str, ask: Ask | None) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, ask))
        seq += 1

    granted_at: dict[str, float] = {}
    ended: set[str] = set()

    def grant(ask: Ask) -> None:
        out.waits[ask.id] = now - ask.arrival
        granted_at[ask.id] = now
        push(now + ask.lifetime, "end", ask)

    def release_at(ask: Ask, when: float) -> None:
        push(when, "release", ask)

    system = make(ledger, grant, random.Random(seed + 1))
    system.release_at = release_at
    system.call_at = lambda when: push(when, "tick", None)
    for a in asks:
        push(a.arrival, "arrive", a)
    while heap:
        t, _, kind, ask = heapq.heappop(heap)
        if t > day and kind not in ("end", "release"):
            continue
        span_end = min(t, day)
        out.vram_seconds += ledger.leased_vram * max(0.0, span_end - last)
        last = max(last, span_end)
        now = t
        if ask is None:  # a "tick"
            system.tick(now)
        elif kind == "arrive":
            system.arrive(ask, now)
            if ask.id not in out.waits:
                push(now + timeout, "timeout", ask)
        elif kind in ("end", "release"):
            if ask.id in ended:
                continue
            if kind == "release":  # QoS release: only a kernel idle by now (idle lasts to the end of its life)
                assert now >= granted_at[ask.id] + ask.active, "released a kernel that was not idle"
                out.released_idle += 1
            ended.add(ask.id)
            ledger.release(ask.id)
            system.released(ask, now)
        elif kind == "timeout" and ask.id not in out.waits and system.give_up(ask, now):
            out.waits[ask.id] = now - ask.arrival
            out.gave_up.add(ask.id)
    for a in asks:  # still waiting at the end of the day: count what they waited
        out.waits.setdefault(a.id, day - a.arrival)
    return out


# ---------------------------------------------------------------- today: one FIFO per server (baseline model)


class Fifo(System):
    """Each user's server: its own queue ordered by QoS then arrival (tf_jupyter/queue.py WaitQueue),
    placement tried before the queue (Scheduler.allocate), every queue woken when capacity frees
    (Scheduler.wake_queue -> WaitQueue.ready), the releasing server first, the others racing."""

    name = "fifo"

    def __init__(self, ledger: Ledger, grant: Callable[[Ask], None], rng: random.Random) -> None:
        super().__init__(ledger, grant, rng)
        self.queues: dict[str, list[Ask]] = {}
        self.seq: dict[str, int] = {}

    def arrive(self, ask: Ask, now: float) -> None:
        if self.ledger.allocate(ask):  # placed before the queue is looked at
            self.grant(ask)
            return
        self.seq[ask.id] = len(self.seq)
        self.queues.setdefault(ask.user, []).append(ask)

    def _order(self, user: str) -> list[Ask]:
        return sorted(self.queues.get(user, []), key=lambda a: (QOS_RANK[a.qos], a.arrival, self.seq[a.id]))

    def _wake(self, user: str) -> None:
        """WaitQueue.ready with a `fits` that allocates: within a QoS level all that fit start; after
        the first that does not fit, lower levels are not considered."""
        blocked: int | None = None
        for ask in self._order(user):
            rank = QOS_RANK[ask.qos]
            if blocked is not None and rank > blocked:
                break
            if self.ledger.allocate(ask):
                self.queues[user].remove(ask)
                self.grant(ask)
            elif blocked is None:
                blocked = rank

    def released(self, ask: Ask, now: float) -> None:
        others = [u for u in self.queues if u != ask.user]
        self.rng.shuffle(others)
        for user in [ask.user, *others]:
            self._wake(user)

    def give_up(self, ask: Ask, now: float) -> bool:
        queue = self.queues.get(ask.user, [])
        if ask in queue:
            queue.remove(ask)
            return True
        return False


class Line(System):
    """The worker's one waiting line: every request is an entry of tf_remoting.worker.waiting_line
    (the real module), a newcomer included (it is the last entry; the reservations decide whether it may
    start); on each arrival, release and give-up one pass grants what the line allows, on the
    devices the line picks, as the worker's ledger does. With ``quota_of`` (a principal's
    tf_remoting.worker.quotas.Quota) the real quota check runs in each pass (LineQuota).

    QoS release (tf_remoting.worker.preemption.to_release, the real rule, run over every user's leases as
    the worker does; the owner's server then warns and shuts the kernel down): after each pass, a kernel
    of a lower QoS than a request that waits for room, idle for the worker's qos_release_idle seconds, is
    released c.TfVgpu.qos_release_grace seconds later (the defaults). A kernel is idle only at the end
    of its life (``Ask.active``), so it never becomes active again in the grace; with ``--idle-share 0``
    nothing is ever idle and nothing is released."""

    name = "line"
    quota_of: Callable[[str], Any] | None = None

    def __init__(self, ledger: Ledger, grant: Callable[[Ask], None], rng: random.Random) -> None:
        from tf_jupyter.config import TfVgpu
        from tf_remoting.worker.config import WorkerConfig
        from tf_remoting.worker.quotas import LineQuota
        from tf_remoting.worker.waiting_line import Device, WaitingLine

        super().__init__(ledger, grant, rng)
        self.devices = [Device(f"d{i}", i, "simulated 48 GiB", DEVICE_VRAM, 100) for i in range(DEVICES)]
        self.make_line = WaitingLine
        self.line_quota = LineQuota
        self.asks: dict[str, Ask] = {}
        self.entries: dict[str, object] = {}
        self.held: dict[str, tuple[Ask, float]] = {}  # granted ask id -> (ask, time it turns idle)
        self.releasing: set[str] = set()
        traits = TfVgpu.class_traits()
        self.min_idle = WorkerConfig().qos_release_idle
        self.grace = float(traits["qos_release_grace"].default_value)

    def _entry(self, ask: Ask, now: float) -> object:
        from tf_remoting.worker.waiting_line import Entry

        return Entry(ask.id, ask.user, qos_value(ask.qos), ask.vram, ask.compute, arrival=now, whole=ask.whole)

    def arrive(self, ask: Ask, now: float) -> None:
        self.asks[ask.id] = ask
        self.entries[ask.id] = self._entry(ask, now)
        self._serve(now)

    def released(self, ask: Ask, now: float) -> None:
        self.held.pop(ask.id, None)
        self.releasing.discard(ask.id)
        self._serve(now)

    def give_up(self, ask: Ask, now: float) -> bool:
        if self.entries.pop(ask.id, None) is None:
            return False
        del self.asks[ask.id]
        self._serve(now)  # it may have reserved devices others can use
        return True

    def tick(self, now: float) -> None:
        self._serve(now)

    def _serve(self, now: float) -> None:
        """One pass, as line_store.LineStore serves the line in the ledger's transaction; then the
        worker's QoS release."""
        usage = self.ledger.usage()
        quota = None
        if self.quota_of is not None:
            from tf_remoting.worker.quotas import Use

            quota = self.line_quota(self.quota_of, {u: Use(vram=v, compute=c) for u, (v, c) in usage.items()})
        line = self.make_line(self.devices, quota) if quota is not None else self.make_line(self.devices)
        for entry in self.entries.values():
            line.add(entry)  # type: ignore[arg-type]
        free = {d.uuid: (self.ledger.free[d.index][0], self.ledger.free[d.index][1]) for d in self.devices}
        decision = line.decide(free, usage)
        for g in decision.grants:
            ask = self.asks.pop(g.entry.id)
            del self.entries[g.entry.id]
            self.ledger.take(ask, int(g.devices[0][1:]), g.vram, g.compute)
            self.grant(ask)
            self.held[ask.id] = (ask, now + ask.active)
            if ask.active < ask.lifetime:
                self.call_at(now + ask.active + self.min_idle)  # look again once it may be released
        if decision.waiting:
            self._qos_release(decision.waiting, now)

    def _qos_release(self, waiting: dict[str, tuple[int, str, str]], now: float) -> None:
        from tf_remoting.worker.preemption import Device, Held, Waiter, to_release
        from tf_remoting.worker.waiting_line import QUOTA

        in_order = sorted(waiting, key=lambda i: waiting[i][0])
        waiters = [Waiter(qos_value(self.asks[i].qos), self.asks[i].vram, self.asks[i].compute,
                          whole_device=self.asks[i].whole, for_room=waiting[i][1] != QUOTA) for i in in_order]
        idle: list[Held] = []
        for ask_id, (ask, idle_from) in self.held.items():
            if ask_id not in self.releasing and now - idle_from >= self.min_idle:
                device, vram, compute = self.ledger.held[ask_id]
                idle.append(Held(ask_id, qos_value(ask.qos), now - idle_from, ((f"d{device}", vram, compute),)))
        if not idle:
            return
        devices = [Device(f"d{i}", DEVICE_VRAM, f[0], 100, f[1]) for i, f in enumerate(self.ledger.free)]
        for r in to_release(waiters, idle, devices, self.min_idle):  # the worker: every user's leases at once
            self.releasing.add(r.lease_id)
            self.release_at(self.held[r.lease_id][0], now + self.grace)


def line_system(quota_vram: int | None = None) -> Callable[[Ledger, Callable[[Ask], None], random.Random], System]:
    """The worker's line (real module); with ``quota_vram`` every user's quota on the worker is that
    much VRAM (the real quota code, tf_remoting.worker.quotas); ImportError where it does not exist."""
    from tf_remoting.worker import waiting_line  # noqa: F401

    if quota_vram is None:
        return Line
    from tf_remoting.worker.quotas import Quotas

    quotas = Quotas.parse({"default": {"vram": quota_vram}})
    return type("QuotaLine", (Line,), {"quota_of": staticmethod(lambda principal: quotas.resolve(principal))})


def decision_ms(waiting: int = 1000, repeats: int = 50, seed: int = 7) -> dict[str, float]:
    """The line's decision time with `waiting` requests waiting (20 users, the day's mix) on a full
    pool: per Allocate (a newcomer joins, one pass) and per release (a lease ends, one pass), and the
    worker's QoS release plan per sample tick (``qos_plan``), the median of `repeats`, in ms."""
    import statistics
    import time

    from tf_remoting.worker.waiting_line import Device, Entry, WaitingLine

    rng = random.Random(seed)
    devices = [Device(f"d{i}", i, "simulated 48 GiB", DEVICE_VRAM, 100) for i in range(DEVICES)]
    line = WaitingLine(devices)

    def entry(i: int) -> Entry:
        p = rng.choices(list(PROFILE_MIX), weights=list(PROFILE_MIX.values()))[0]
        prof = BUILTIN_PROFILES[p]
        return Entry(f"e{i}", f"user{i % 20:02d}", qos_value(rng.choice(QOS_NAMES)),
                     DEVICE_VRAM if prof.whole_device else prof.vram, 100 if prof.whole_device else prof.compute,
                     arrival=float(i), whole=prof.whole_device)

    for i in range(waiting):
        line.add(entry(i))
    usage = {f"user{u:02d}": (rng.randrange(0, 16) * GiB, rng.randrange(0, 100)) for u in range(20)}
    full = {d.uuid: (0, 0) for d in devices}
    one_free = dict(full, d0=(8 * GiB, 40))  # a small lease ended on device 0
    times: dict[str, list[float]] = {"allocate": [], "release": []}
    for r in range(repeats):
        newcomer = entry(waiting + r)
        t = time.perf_counter()
        line.add(newcomer)
        line.decide(full, usage)
        times["allocate"].append(time.perf_counter() - t)
        line.remove(newcomer.id)
        t = time.perf_counter()
        line.decide(one_free, usage)
        times["release"].append(time.perf_counter() - t)
    # The worker's QoS release plan (tf_remoting.worker.preemption), run on each sample tick while
    # requests wait: the same line, 200 leases on the full pool, a quarter of them idle.
    from tf_remoting.worker import preemption

    decision = line.decide(full, usage)
    order = sorted(decision.waiting, key=lambda i: decision.waiting[i][0])
    waiters = [preemption.Waiter(line.entries[i].qos, line.entries[i].vram, line.entries[i].compute,
                                 whole_device=line.entries[i].whole) for i in order]
    leases = [preemption.Held(f"l{i}", qos_value(rng.choice(QOS_NAMES)), 600.0 if rng.random() < 0.25 else 0.0,
                              ((f"d{i % DEVICES}", DEVICE_VRAM // 25, 4),)) for i in range(200)]
    pool = [preemption.Device(d.uuid, DEVICE_VRAM, 0, 100, 0) for d in devices]
    times["qos_plan"] = []
    for _ in range(repeats):
        t = time.perf_counter()
        preemption.to_release(waiters, leases, pool, min_idle=60.0)
        times["qos_plan"].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


SYSTEMS: dict[str, Callable[[Ledger, Callable[[Ask], None], random.Random], System]] = {"fifo": Fifo}


# ---------------------------------------------------------------- figures


def merge(outcomes: list[Outcome]) -> Outcome:
    out = Outcome(day=sum(o.day for o in outcomes))
    for o in outcomes:
        out.waits.update(o.waits)
        out.gave_up |= o.gave_up
        out.vram_seconds += o.vram_seconds
        out.released_idle += o.released_idle
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def jain(values: list[float]) -> float:
    """(sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one takes everything; 1 when all are 0."""
    square_sum = sum(x * x for x in values)
    return sum(values) ** 2 / (len(values) * square_sum) if square_sum else 1.0


def figures(asks: list[Ask], out: Outcome) -> dict[str, object]:
    by_qos = {q: [out.waits[a.id] for a in asks if a.qos == q] for q in QOS_NAMES}
    users = sorted({a.user for a in asks})
    mean_wait = {u: sum(out.waits[a.id] for a in asks if a.user == u) / max(1, sum(a.user == u for a in asks))
                 for u in users}
    return {
        "p95_wait_s": {q: percentile(v, 95) for q, v in by_qos.items()},
        "mean_wait_s": {q: (sum(v) / len(v) if v else 0.0) for q, v in by_qos.items()},
        "requests": {q: len(v) for q, v in by_qos.items()},
        "gave_up": len(out.gave_up),
        "released_idle": out.released_idle,
        "jain_mean_wait": jain(list(mean_wait.values())),
        "utilisation": out.vram_seconds / (DEVICES * DEVICE_VRAM * out.day),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--days", type=int, default=20, help="independent crowded days, each from an empty pool")
    parser.add_argument("--load", type=float, default=1.0, help="offered VRAM load ÷ the pool's VRAM")
    parser.add_argument("--idle-share", type=float, default=0.2, help="mean share of a kernel's life spent idle "
                        "at its end (uniform in [0, 2 x share]); the line's QoS release may end such kernels; "
                        "0: never idle")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a request waits before giving up")
    parser.add_argument("--quota", metavar="VRAM", help="every user's VRAM quota on the worker for the line "
                        "(e.g. 48Gi; the real quota code); default: no quotas")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    day = args.hours * 3600
    days = [make_day(args.seed * 1000 + d, args.users, args.hours, args.load, args.idle_share)
            for d in range(args.days)]
    asks = [a for d in days for a in d]
    result: dict[str, object] = {"seed": args.seed, "users": args.users, "hours": args.hours, "days": args.days,
                                 "load": args.load, "idle_share": args.idle_share, "requests": len(asks),
                                 "devices": DEVICES, "device_vram": DEVICE_VRAM, "quota": args.quota or "none"}
    systems = dict(SYSTEMS)
    try:
        from tf_remoting.quantities import parse_bytes

        systems["line"] = line_system(parse_bytes(args.quota) if args.quota else None)
        result["decision_ms"] = decision_ms()
    except ImportError as exc:
        result["line_missing"] = f"the worker's waiting line is not importable ({exc})"
    for name, make in systems.items():
        outcomes = [simulate(d, make, args.seed * 1000 + i, args.timeout, day) for i, d in enumerate(days)]
        result[name] = figures(asks, merge(outcomes))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
