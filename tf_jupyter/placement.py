"""Placement: which worker should serve a vGPU request, and which of its devices it will use.

The Jupyter side only chooses a *worker*: ``Allocate`` has no device field, and each worker picks
its own devices by best fit (least VRAM left, then least compute left, then lowest index; see
``tf_remoting.worker.leases``). So a :class:`Candidate` names a worker and the devices that worker is
expected to pick; the worker's ledger has the last word (``RESOURCE_EXHAUSTED`` -> next candidate).

Policies rank the workers:

- ``binpack`` (default): best fit, devices already in use first. A worker is ranked by its best
  device for the request: a device that already holds a lease and is left with the least VRAM
  (then compute) wins. Only when no used device fits is an untouched one opened: the one whose
  VRAM and compute would be left in the same proportion (|VRAM left / total - compute left /
  capacity| smallest, then the largest), so that a slice heavy on VRAM opens a big-memory device
  and one heavy on compute a small one, and neither resource is stranded when the other runs out
  (4 % fewer devices than opening the largest first, on the placement benchmark). Whole-device
  requests take the smallest untouched device.
- ``spread``: worst fit; the worker whose device would keep the most free VRAM (then compute) first.

Plain Python: no tornado, no grpc, no asyncio.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tf_remoting.quantities import format_bytes, format_percent

__all__ = ["POLICIES", "Candidate", "DeviceView", "PoolState", "Request", "explain", "fits", "place"]

POLICIES = ("binpack", "spread")


@dataclass
class DeviceView:
    """One device as the pool view last saw it (a cache of the worker's ledger)."""

    worker: str
    uuid: str
    name: str
    vram_total: int
    vram_free: int
    compute_capacity: int
    compute_free: int
    up: bool = True

    @property
    def untouched(self) -> bool:
        """Nothing leased on it."""
        return self.vram_free >= self.vram_total and self.compute_free >= self.compute_capacity


@dataclass(frozen=True)
class Request:
    """What a kernel asks for: ``vram`` bytes and ``compute`` percent on each of ``count`` devices."""

    vram: int
    compute: int
    count: int = 1
    model: str = ""
    whole_device: bool = False

    def __post_init__(self) -> None:
        for name in ("vram", "compute", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"request {name} must be a non-negative integer, not {value!r}")
        if self.count < 1:
            raise ValueError("request count must be at least 1 device")

    def describe(self) -> str:
        where = "1 device" if self.count == 1 else f"each of {self.count} distinct devices on one worker"
        model = f" matching {self.model!r}" if self.model else ""
        if self.whole_device:
            what = "a whole device" if self.count == 1 else f"{self.count} whole devices on one worker"
            return f"{what}{model} (nothing else leased on it)"
        return f"{format_bytes(self.vram)} VRAM and {format_percent(self.compute)} compute on {where}{model}"


@dataclass(frozen=True)
class Candidate:
    """A worker to try, and the devices it is expected to pick."""

    worker: str
    devices: tuple[str, ...]


def _model_ok(device: DeviceView, request: Request) -> bool:
    return not request.model or request.model.lower() in device.name.lower()


def fits(device: DeviceView, request: Request) -> bool:
    """Whether one slice of ``request`` fits on ``device`` now (up, right model, enough free)."""
    if not device.up or not _model_ok(device, request):
        return False
    if request.whole_device:
        return device.untouched
    return device.vram_free >= request.vram and device.compute_free >= request.compute


def _open_score(device: DeviceView, request: Request) -> float:
    """How unevenly an untouched device would be left by one slice (0 = VRAM and compute alike)."""
    return abs((device.vram_free - request.vram) / max(device.vram_total, 1)
               - (device.compute_free - request.compute) / max(device.compute_capacity, 1))


def _device_key(device: DeviceView, request: Request, policy: str, pos: int) -> tuple[float, ...]:
    """Smaller is better. Must agree with PoolState's index (see PoolState._key)."""
    if policy == "spread":
        return (device.vram_total - device.vram_free if request.whole_device else request.vram - device.vram_free,
                request.compute - device.compute_free, pos)
    if request.whole_device:
        return (1, device.vram_total, device.compute_capacity, pos)
    if not device.untouched:
        return (0, device.vram_free - request.vram, device.compute_free - request.compute, pos)
    return (1, _open_score(device, request), -device.vram_free, -device.compute_free, pos)


def _worker_pick(devices: Sequence[tuple[int, DeviceView]], request: Request) -> tuple[str, ...] | None:
    """The devices the worker's own ledger would pick (best fit, then index), or None."""
    fitting = [(pos, d) for pos, d in devices if fits(d, request)]
    if len(fitting) < request.count:
        return None
    if request.whole_device:  # the smallest untouched devices (worker/waiting_line.py places them so)
        fitting.sort(key=lambda pd: (pd[1].vram_total, pd[0]))
    else:
        fitting.sort(key=lambda pd: (pd[1].vram_free - request.vram, pd[1].compute_free - request.compute, pd[0]))
    return tuple(d.uuid for _, d in fitting[: request.count])


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown placement policy {policy!r}: use one of {', '.join(POLICIES)}")


def _rank(request: Request, devices: Iterable[tuple[int, DeviceView]], policy: str) -> list[Candidate]:
    by_worker: dict[str, list[tuple[int, DeviceView]]] = {}
    for pos, d in devices:
        by_worker.setdefault(d.worker, []).append((pos, d))
    ranked = []
    for worker, members in by_worker.items():
        picked = _worker_pick(members, request)
        if picked is None:
            continue
        keys = sorted(_device_key(d, request, policy, pos) for pos, d in members if fits(d, request))
        ranked.append((tuple(keys[: request.count]), Candidate(worker, picked)))
    ranked.sort(key=lambda kc: kc[0])
    return [c for _, c in ranked]


def place(request: Request, devices: Iterable[DeviceView], policy: str = "binpack") -> list[Candidate]:
    """Workers to try for ``request``, best first; one candidate per worker, none for down workers.

    ``count > 1`` needs that many distinct fitting devices on one worker.
    """
    _check_policy(policy)
    return _rank(request, enumerate(devices), policy)


def explain(request: Request, devices: Iterable[DeviceView], down_workers: Iterable[str] = ()) -> str:
    """A sentence for a person: what was asked, and what the pool had.

    ``down_workers`` adds workers known to be down whose devices the pool view does not list.
    """
    devices = list(devices)
    up = {d.worker for d in devices if d.up}
    down = ({d.worker for d in devices if not d.up} | set(down_workers)) - up
    workers = f"{len(up)} worker{'' if len(up) == 1 else 's'} up"
    if down:
        workers += f", {len(down)} down ({', '.join(sorted(down))})"
    asked = f"Asked for {request.describe()}"
    live = [d for d in devices if d.up and _model_ok(d, request)]
    if not live:
        among = f" with a device matching {request.model!r}" if request.model else ""
        return f"{asked}; the pool has no device up{among} ({workers})."
    if request.whole_device:
        free = sum(1 for d in live if d.untouched)
        return (f"{asked}; the pool has {free} untouched device{'' if free == 1 else 's'} "
                f"out of {len(live)} ({workers}).")
    best = max(live, key=lambda d: (d.vram_free, d.compute_free))
    text = (f"{asked}; the largest free slice is {format_bytes(best.vram_free)} and "
            f"{format_percent(best.compute_free)} on {best.name} {best.uuid} at worker {best.worker} ({workers})")
    if request.count > 1:
        most = max(sum(1 for d in live if d.worker == w and fits(d, request)) for w in up)
        text += f"; at most {most} device{'' if most == 1 else 's'} on one worker can take the slice"
    return text + "."


class PoolState:
    """A mutable copy of the pool, indexed for fast best-fit placement.

    Used to simulate a filling pool (benchmarks, tests) and to reserve what the queue hands out.
    Single-device binpack requests take a fast path: devices that hold leases sit in sorted lists
    (by free VRAM, then free compute), one list per band of free compute, so that devices whose
    compute is spent are not walked over on every request; untouched devices sit in one list,
    largest first, scored once per size. Everything else goes through the same ranking as :func:`place`.
    """

    _BAND = 8  # percent of free compute per band

    def __init__(self, devices: Iterable[DeviceView]) -> None:
        self._devices: list[DeviceView] = []
        self._pos: dict[tuple[str, str], int] = {}  # (worker, device uuid): workers on one host may
        # report the same uuid (the host device is "host-vm" on each of them)
        self._by_worker: dict[str, list[int]] = {}
        self._where: list[tuple[int, tuple[int, int, int]] | None] = []
        self._bands: list[list[tuple[int, int, int]]] = []  # used devices: (vram_free, compute_free, i)
        self._fresh: list[tuple[int, int, int]] = []  # untouched devices: (-vram_free, -compute_free, i)
        for d in devices:
            if (d.worker, d.uuid) in self._pos:
                raise ValueError(f"device uuid {d.uuid} appears twice on worker {d.worker}")
            self.update(d)

    @property
    def devices(self) -> list[DeviceView]:
        return list(self._devices)

    def device(self, uuid: str, worker: str | None = None) -> DeviceView:
        """A device by uuid (and worker, where several workers report that uuid)."""
        found = [i for (w, u), i in self._pos.items() if u == uuid and worker in (None, w)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} devices with uuid {uuid}" + (f" on worker {worker}" if worker else ""))
        return self._devices[found[0]]

    def devices_used(self) -> int:
        """How many devices hold at least one lease."""
        return sum(1 for d in self._devices if not d.untouched)

    # ------------------------------------------------------------------ index

    def _unindex(self, i: int) -> None:
        where = self._where[i]
        if where is not None:
            band, key = where
            lst = self._fresh if band < 0 else self._bands[band]
            del lst[bisect.bisect_left(lst, key)]
            self._where[i] = None

    def _index(self, i: int) -> None:
        self._unindex(i)
        d = self._devices[i]
        if not d.up:
            return
        if d.untouched:
            key = (-d.vram_free, -d.compute_free, i)
            bisect.insort(self._fresh, key)
            self._where[i] = (-1, key)
            return
        band = max(d.compute_free, 0) // self._BAND
        while len(self._bands) <= band:
            self._bands.append([])
        key = (d.vram_free, d.compute_free, i)
        bisect.insort(self._bands[band], key)
        self._where[i] = (band, key)

    # ------------------------------------------------------------------ updates

    def update(self, device: DeviceView) -> None:
        """Replace a device's view (fresh inventory); a new (worker, uuid) is added."""
        i = self._pos.get((device.worker, device.uuid))
        if i is None:
            i = len(self._devices)
            self._devices.append(replace(device))
            self._where.append(None)
            self._pos[(device.worker, device.uuid)] = i
            self._by_worker.setdefault(device.worker, []).append(i)
        else:
            self._devices[i] = replace(device)
        self._index(i)

    def set_up(self, worker: str, up: bool) -> None:
        """Mark every device of ``worker`` up or down (down ones are never placed on)."""
        for i in self._by_worker.get(worker, []):
            self._devices[i].up = up
            self._index(i)

    def apply(self, candidate: Candidate, request: Request) -> None:
        """Take the request's slices from the candidate's devices; ValueError if they no longer fit."""
        positions = [self._pos[(candidate.worker, u)] for u in candidate.devices]
        for i in positions:
            if not fits(self._devices[i], request):
                raise ValueError(f"{request.describe()} no longer fits on device {self._devices[i].uuid}")
        for i in positions:
            d = self._devices[i]
            if request.whole_device:
                d.vram_free, d.compute_free = 0, 0
            else:
                d.vram_free -= request.vram
                d.compute_free -= request.compute
            self._index(i)

    def free(self, candidate: Candidate, request: Request) -> None:
        """Give back what :meth:`apply` took (capped at each device's totals)."""
        for u in candidate.devices:
            i = self._pos[(candidate.worker, u)]
            d = self._devices[i]
            if request.whole_device:
                d.vram_free, d.compute_free = d.vram_total, d.compute_capacity
            else:
                d.vram_free = min(d.vram_total, d.vram_free + request.vram)
                d.compute_free = min(d.compute_capacity, d.compute_free + request.compute)
            self._index(i)

    # ------------------------------------------------------------------ placement

    def place(self, request: Request, policy: str = "binpack") -> list[Candidate]:
        """Every candidate, best first (the same answer as :func:`place` over :attr:`devices`)."""
        _check_policy(policy)
        return _rank(request, enumerate(self._devices), policy)

    def best(self, request: Request, policy: str = "binpack") -> Candidate | None:
        """The first candidate only; single-device binpack requests take the indexed fast path."""
        _check_policy(policy)
        if policy != "binpack" or request.count != 1 or request.whole_device or request.vram < 1:
            ranked = self.place(request, policy)
            return ranked[0] if ranked else None
        i = self._first_fit(request)
        if i is None:
            return None
        return Candidate(self._devices[i].worker, (self._worker_pick_one(self._devices[i].worker, request),))

    def _first_fit(self, request: Request) -> int | None:
        vram, compute, model = request.vram, request.compute, request.model.lower()
        devices = self._devices
        best: tuple[int, int, int] | None = None
        # Used devices: the tightest fit over the bands that can hold `compute`. Each band is sorted
        # by free VRAM, so its first entry with enough VRAM and compute is its best.
        for band in self._bands[max(compute, 0) // self._BAND:]:
            j = bisect.bisect_left(band, (vram,))
            n = len(band)
            while j < n:
                key = band[j]
                if best is not None and key >= best:
                    break
                if key[1] >= compute and (not model or model in devices[key[2]].name.lower()):
                    best = key
                    break
                j += 1
        if best is not None:
            return best[2]
        # No used device fits: open the untouched one left most evenly (then the largest). The list
        # is sorted by size, so devices of one size sit together and share a score: score each run once.
        fresh = self._fresh
        opened: tuple[float, int, int, int] | None = None
        j, n = 0, len(fresh)
        while j < n:
            neg_vram, neg_compute, i = fresh[j]
            if -neg_vram < vram:
                break
            end = bisect.bisect_right(fresh, (neg_vram, neg_compute, n + len(devices)))
            if -neg_compute >= compute:
                score = _open_score(devices[i], request)
                if opened is None or (score, neg_vram, neg_compute) < opened[:3]:
                    for k in range(j, end):
                        if not model or model in devices[fresh[k][2]].name.lower():
                            opened = (score, neg_vram, neg_compute, fresh[k][2])
                            break
            j = end
        return opened[3] if opened is not None else None

    def _worker_pick_one(self, worker: str, request: Request) -> str:
        # _worker_pick for one slice, inlined: this runs on every fast-path placement.
        vram, compute, model = request.vram, request.compute, request.model.lower()
        best: tuple[int, int, int] | None = None
        for i in self._by_worker[worker]:
            d = self._devices[i]
            if d.up and d.vram_free >= vram and d.compute_free >= compute and (not model or model in d.name.lower()):
                key = (d.vram_free - vram, d.compute_free - compute, i)
                if best is None or key < best:
                    best = key
        assert best is not None  # the device found by _first_fit is on this worker
        return self._devices[best[2]].uuid

    def place_and_commit(self, request: Request, policy: str = "binpack") -> Candidate | None:
        """Place and apply in one step; None when nothing fits (the state is unchanged)."""
        candidate = self.best(request, policy)
        if candidate is not None:
            self.apply(candidate, request)
        return candidate
