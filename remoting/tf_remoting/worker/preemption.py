"""QoS that holds: which idle leases a waiting higher-QoS request needs the room of.

Plain Python (no grpc or asyncio). Each tick the worker (`state.Worker.plan_qos_release`) runs
`to_release` over its waiting line, its devices and every principal's leases, and marks the
chosen leases (`Lease.release_for`: the QoS of the request that needs the room). The owner's
Jupyter server acts on the mark: it warns the kernel, and shuts it down after its grace unless the
kernel becomes active (`tf_jupyter.idle.QosRelease`). The worker plans because only it sees every
principal's leases: two users' idle kernels that together make room are both chosen, which no
single user's server could see.

The rule, for each waiting request in line order:

- Only requests that wait for *room* count (not one that waits on its own quota: freeing room does
  not help it), and only leases of a *strictly lower* QoS than the request, idle for at least
  ``min_idle`` seconds (no slice busy, no cell running). So ``critical`` leases are never chosen
  (nothing ranks above them), and a request never displaces its own level.
- A lease is chosen only where that makes the request fit: on each device that the request can use
  (its model filter), the request's slice must fit in the device's free VRAM and compute plus what
  the chosen leases hold there (a whole-device request needs the device left with nothing leased).
  Per device, the candidates are taken lowest QoS first, then longest idle, until it fits; the
  devices needing the fewest releases (then the least VRAM released) are used, as many as the
  request's ``count``. When the idle leases cannot make room on enough devices, none is chosen for
  that request: a release that does not let the request start would only cost a user their kernel.
- A request that fits already (it waits for another reason, or its grant is on its way) chooses
  nothing. The room a request will take (freed or already free) is then counted as taken, so a
  later request in the line is not promised the same room; a lease chosen once is not chosen again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Device", "Held", "Release", "Waiter", "to_release"]


@dataclass(frozen=True)
class Waiter:
    """A request waiting in the line: its QoS (the proto's number: higher is served first) and size."""

    qos: int
    vram: int
    compute: int
    count: int = 1
    whole_device: bool = False
    for_room: bool = True  # False: it waits on its principal's quota, and freeing room cannot help it
    model: str = ""  # the device model filter it asked for: only devices whose name contains it count


@dataclass(frozen=True)
class Held:
    """A lease: its slices (device uuid, vram, compute), QoS and how long it has been idle."""

    lease_id: str
    qos: int
    idle_for: float  # seconds idle (no slice busy, no cell running)
    slices: tuple[tuple[str, int, int], ...]


@dataclass
class Device:
    """A device with what every principal's leases leave free."""

    uuid: str
    vram_total: int
    vram_free: int
    compute_capacity: int
    compute_free: int
    name: str = ""


@dataclass(frozen=True)
class Release:
    """A lease to release, and the waiting request it makes room for."""

    lease_id: str
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


def to_release(waiting: Iterable[Waiter], leases: Iterable[Held], devices: Iterable[Device],
               min_idle: float) -> list[Release]:
    """Which `leases` to release for the `waiting` requests (in line order); see the module
    docstring for the rule."""
    devs = [Device(d.uuid, d.vram_total, d.vram_free, d.compute_capacity, d.compute_free, d.name) for d in devices]
    held = list(leases)
    taken: set[str] = set()
    out: list[Release] = []
    for waiter in waiting:
        if not waiter.for_room:
            continue
        candidates = sorted((k for k in held if k.lease_id not in taken and k.qos < waiter.qos
                             and k.idle_for >= min_idle),
                            key=lambda k: (k.qos, -k.idle_for, k.lease_id))
        plans = []
        for d in devs:
            if waiter.model.lower() not in d.name.lower():
                continue  # a device the request cannot use: releasing leases there does not help it
            plan = _plan_device(d, waiter, candidates)
            if plan is not None:
                plans.append((len(plan), sum(v for k in plan for u, v, _ in k.slices if u == d.uuid), d.uuid, d, plan))
        if len(plans) < waiter.count:
            continue  # the idle leases cannot make room for it: release none of them
        plans.sort(key=lambda p: p[:3])
        chosen = plans[:waiter.count]
        releasing: dict[str, Held] = {k.lease_id: k for *_, plan in chosen for k in plan}
        for k in releasing.values():  # a released lease frees every one of its slices
            for d in devs:
                for uuid, v, c in k.slices:
                    if uuid == d.uuid:
                        d.vram_free += v
                        d.compute_free += c
        for *_, d, _plan in chosen:  # the room the request will take
            d.vram_free -= d.vram_total if waiter.whole_device else waiter.vram
            d.compute_free -= d.compute_capacity if waiter.whole_device else waiter.compute
        taken.update(releasing)
        out += [Release(lease_id, waiter) for lease_id in releasing]
    return out
