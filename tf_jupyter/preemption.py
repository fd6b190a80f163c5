"""QoS that holds: which of this server's idle kernels must go so a higher-QoS request can start.

Plain Python (no grpc, tornado or asyncio); `tf_jupyter.idle.QosRelease` feeds it the workers'
inventories (devices, this server's leases, the waiting line) and acts on its answer (a warning
event, then the shutdown).

The rule, per worker, for each waiting request in line order:

- Only requests that wait for *room* count (not one that waits on its own quota: freeing room does
  not help it), and only kernels of this server on the *same worker*, of a *strictly lower* QoS than
  the request, idle for at least ``min_idle`` seconds. So ``critical`` kernels are never released
  (nothing ranks above them), and a request never displaces its own level.
- A kernel is released only where that makes the request fit: on each device of the worker that
  the request can use (its model filter), the
  request's slice must fit in the device's free VRAM and compute plus what the chosen kernels hold
  there (a whole-device request needs the device left with nothing leased). Per device, the
  candidates are taken lowest QoS first, then longest idle, until it fits; the devices needing the
  fewest releases (then the least VRAM released) are used, as many as the request's ``count``.
  If this server's own idle kernels cannot make room on enough devices, nothing is released for
  that request (another principal's kernels may hold the rest; they are not ours to judge, and a
  release that does not let the request start would only cost a user their kernel).
- A request that fits already (it waits for another reason, or its grant is on its way) releases
  nothing. The room a request will take (freed or already free) is then counted as taken, so a
  later request in the line is not promised the same room; a kernel chosen once is not chosen again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tf_jupyter.qos import QOS_RANK

__all__ = ["Device", "Held", "Release", "Waiter", "to_release"]


@dataclass(frozen=True)
class Waiter:
    """A request waiting in a worker's line (anyone's: others' are anonymous, QoS and size only)."""

    worker: str
    qos: str
    vram: int
    compute: int
    count: int = 1
    whole_device: bool = False
    for_room: bool = True  # False: it waits on its principal's quota, and freeing room cannot help it
    model: str = ""  # the device model filter it asked for: only devices whose name contains it count


@dataclass(frozen=True)
class Held:
    """One of this server's kernels: its lease's slices (device uuid -> (vram, compute)) and idleness."""

    kernel_id: str
    worker: str
    qos: str
    idle_for: float  # seconds idle (no utilization, no cell running)
    slices: tuple[tuple[str, int, int], ...]  # (device uuid, vram, compute)


@dataclass
class Device:
    """A device as the worker's inventory shows it (every principal's leases counted as used)."""

    worker: str
    uuid: str
    vram_total: int
    vram_free: int
    compute_capacity: int
    compute_free: int
    name: str = ""


@dataclass(frozen=True)
class Release:
    """A kernel to release, and the waiting request it makes room for."""

    kernel_id: str
    worker: str
    waiter: Waiter = field(compare=False)


def _fits(free_vram: int, free_compute: int, device: Device, waiter: Waiter) -> bool:
    if waiter.whole_device:
        return free_vram >= device.vram_total and free_compute >= device.compute_capacity
    return free_vram >= waiter.vram and free_compute >= waiter.compute


def _plan_device(device: Device, waiter: Waiter, candidates: Sequence[Held]) -> list[Held] | None:
    """The fewest candidates (lowest QoS, longest idle first) whose release makes `waiter` fit on
    `device`; [] when it fits already, None when even all of them are not enough."""
    vram, compute = device.vram_free, device.compute_free
    chosen: list[Held] = []
    for k in candidates:
        if _fits(vram, compute, device, waiter):
            break
        held = [(v, c) for uuid, v, c in k.slices if uuid == device.uuid]
        if not held:
            continue
        chosen.append(k)
        vram += sum(v for v, _ in held)
        compute += sum(c for _, c in held)
    return chosen if _fits(vram, compute, device, waiter) else None


def to_release(waiting: Iterable[Waiter], mine: Iterable[Held], devices: Iterable[Device],
               min_idle: float) -> list[Release]:
    """Which of `mine` to release for the `waiting` requests (each worker's, in line order); see the
    module docstring for the rule. `devices` are every device of the workers concerned."""
    by_worker: dict[str, list[Device]] = {}
    for d in devices:
        by_worker.setdefault(d.worker, []).append(Device(d.worker, d.uuid, d.vram_total, d.vram_free,
                                                         d.compute_capacity, d.compute_free, d.name))
    kernels = list(mine)
    taken: set[str] = set()
    out: list[Release] = []
    for waiter in waiting:
        if not waiter.for_room or waiter.worker not in by_worker:
            continue
        rank = QOS_RANK[waiter.qos]  # lower rank is served first: critical 0 ... low 3
        candidates = sorted((k for k in kernels if k.worker == waiter.worker and k.kernel_id not in taken
                             and QOS_RANK[k.qos] > rank and k.idle_for >= min_idle),
                            key=lambda k: (-QOS_RANK[k.qos], -k.idle_for, k.kernel_id))
        plans = []
        for d in by_worker[waiter.worker]:
            if waiter.model.lower() not in d.name.lower():
                continue  # a device the request cannot use: releasing kernels there does not help it
            plan = _plan_device(d, waiter, candidates)
            if plan is not None:
                plans.append((len(plan), sum(v for k in plan for u, v, _ in k.slices if u == d.uuid), d.uuid, d, plan))
        if len(plans) < waiter.count:
            continue  # our kernels cannot make room for it: release none of them
        plans.sort(key=lambda p: p[:3])
        chosen = plans[:waiter.count]
        releasing: dict[str, Held] = {k.kernel_id: k for *_, plan in chosen for k in plan}
        for k in releasing.values():  # a released lease frees every one of its slices
            for d in by_worker[waiter.worker]:
                for uuid, v, c in k.slices:
                    if uuid == d.uuid:
                        d.vram_free += v
                        d.compute_free += c
        for *_, d, _plan in chosen:  # the room the request will take
            d.vram_free -= d.vram_total if waiter.whole_device else waiter.vram
            d.compute_free -= d.compute_capacity if waiter.whole_device else waiter.compute
        taken.update(releasing)
        out += [Release(kid, waiter.worker, waiter) for kid in releasing]
    return out
