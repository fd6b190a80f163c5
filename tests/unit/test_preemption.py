"""Which idle kernels a waiting higher-QoS request displaces (tf_jupyter.preemption), as plain Python."""

from __future__ import annotations

import pytest

from tf_jupyter.preemption import Device, Held, Waiter, to_release

GiB = 1 << 30


def dev(uuid: str = "d0", total: int = 4, free: int = 0, compute_free: int = 100, worker: str = "w1") -> Device:
    return Device(worker, uuid, total * GiB, free * GiB, 100, compute_free)


def held(kid: str, qos: str = "low", idle: float = 100.0, vram: int = 2, compute: int = 10, uuid: str = "d0",
         worker: str = "w1") -> Held:
    return Held(kid, worker, qos, idle, ((uuid, vram * GiB, compute),))


def ids(releases) -> list[str]:
    return sorted(r.kernel_id for r in releases)


def test_an_idle_lower_qos_kernel_makes_room_for_a_waiting_request():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    assert ids(to_release(waiting, [held("a", "low")], [dev(free=2)], min_idle=30)) == ["a"]


@pytest.mark.parametrize("qos", ["critical", "high"])
def test_same_or_higher_qos_kernels_are_never_released(qos):
    waiting = [Waiter("w1", "high", 3 * GiB, 10)]
    assert to_release(waiting, [held("a", qos)], [dev(free=2)], min_idle=30) == []


def test_a_critical_kernel_is_not_released_even_for_a_critical_request():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    assert to_release(waiting, [held("a", "critical", idle=1e9)], [dev(free=2)], min_idle=0) == []


def test_a_kernel_not_idle_long_enough_stays():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    assert to_release(waiting, [held("a", idle=29.0)], [dev(free=2)], min_idle=30) == []


def test_nothing_is_released_when_the_request_fits_already():
    waiting = [Waiter("w1", "critical", 1 * GiB, 10)]
    assert to_release(waiting, [held("a")], [dev(free=2)], min_idle=30) == []


def test_a_request_waiting_on_its_quota_displaces_no_one():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10, for_room=False)]
    assert to_release(waiting, [held("a")], [dev(free=2)], min_idle=30) == []


def test_nothing_is_released_when_our_kernels_cannot_make_enough_room():
    # 1 GiB free + our 1 GiB < 3 GiB: the rest is another principal's; releasing ours would not help
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    assert to_release(waiting, [held("a", vram=1)], [dev(free=1)], min_idle=30) == []


def test_compute_counts_as_well_as_vram():
    waiting = [Waiter("w1", "critical", 1 * GiB, 50)]
    kernels = [held("a", vram=1, compute=40)]
    assert ids(to_release(waiting, kernels, [dev(free=3, compute_free=20)], min_idle=30)) == ["a"]
    assert to_release(waiting, kernels, [dev(free=3, compute_free=5)], min_idle=30) == []


def test_kernels_on_other_workers_or_devices_that_cannot_help_stay():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    devices = [dev("d0", free=2), dev("d1", free=0), dev("e0", worker="w2", free=0)]
    kernels = [held("on-d0", vram=1), held("on-d1", vram=1, uuid="d1"), held("on-w2", vram=4, uuid="e0", worker="w2")]
    assert ids(to_release(waiting, kernels, devices, min_idle=30)) == ["on-d0"]


def test_the_device_needing_the_fewest_releases_is_used_lowest_qos_then_longest_idle_first():
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    devices = [dev("d0", free=1), dev("d1", free=0)]
    kernels = [held("d0-small-a", vram=1, idle=50), held("d0-small-b", vram=1, idle=60),
               held("d1-big", "medium", vram=4, uuid="d1")]
    assert ids(to_release(waiting, kernels, devices, min_idle=30)) == ["d1-big"]
    # on one device: low before medium, then the longest idle; no more than needed
    kernels = [held("m", "medium", vram=2, idle=500), held("l-short", vram=2, idle=40),
               held("l-long", vram=2, idle=90)]
    assert ids(to_release(waiting, kernels, [dev("d0", total=8, free=1)], min_idle=30)) == ["l-long"]


def test_a_whole_device_request_needs_the_device_empty():
    waiting = [Waiter("w1", "critical", 0, 100, whole_device=True)]
    assert ids(to_release(waiting, [held("a", vram=2), held("b", vram=2)], [dev(free=0)], min_idle=30)) == ["a", "b"]
    # someone else's 1 GiB stays on it: ours cannot empty it
    assert to_release(waiting, [held("a", vram=2)], [dev(free=1)], min_idle=30) == []


def test_only_devices_the_request_can_use_count():
    # a request for an "H200" waits; our idle kernel sits on the "A10": releasing it would not help
    waiting = [Waiter("w1", "critical", 2 * GiB, 10, model="h200")]
    devices = [Device("w1", "d0", 4 * GiB, 0, 100, 100, "NVIDIA A10"), Device("w1", "d1", 4 * GiB, 0, 100, 100,
                                                                               "NVIDIA H200")]
    assert to_release(waiting, [held("a", uuid="d0")], devices, min_idle=30) == []
    assert ids(to_release(waiting, [held("a", uuid="d0"), held("b", uuid="d1")], devices, min_idle=30)) == ["b"]


def test_a_request_over_several_devices_needs_room_on_each():
    waiting = [Waiter("w1", "critical", 2 * GiB, 10, count=2)]
    devices = [dev("d0", free=0), dev("d1", free=0)]
    assert to_release(waiting, [held("a")], devices, min_idle=30) == []
    assert ids(to_release(waiting, [held("a"), held("b", uuid="d1")], devices, min_idle=30)) == ["a", "b"]


def test_room_promised_to_one_request_is_not_promised_to_the_next():
    waiting = [Waiter("w1", "critical", 2 * GiB, 10), Waiter("w1", "high", 2 * GiB, 10)]
    kernels = [held("a", vram=2), held("b", vram=2, idle=50)]
    # 0 free: the first takes a's room (longest idle), the second b's
    assert [(r.kernel_id, r.waiter.qos) for r in to_release(waiting, kernels, [dev(free=0)], min_idle=30)] == [
        ("a", "critical"), ("b", "high")]
    # 2 GiB free: the first takes the free room, so the second still needs a
    assert [(r.kernel_id, r.waiter.qos) for r in to_release(waiting, kernels, [dev(free=2)], min_idle=30)] == [
        ("a", "high")]


# ---------------------------------------------------------------- QosRelease: warning, grace, release, events


def _server(qos: str = "low"):
    import asyncio

    from tf_jupyter.idle import QosRelease
    from tf_jupyter.pool.events import Events
    from tf_jupyter.pool.kernels import Kernels, KernelSlice

    kernels, events = Kernels(), Events()
    kernels.register(KernelSlice("k1", "w1", "lease-1", "small", qos, last_active=0.0))
    shut: list[str] = []

    async def shutdown(kernel_id: str) -> None:
        shut.append(kernel_id)

    stream = events.subscribe()

    def kinds() -> list[str]:
        out = []
        while not stream.empty():
            out.append(stream.get_nowait()["kind"])
        return out

    assert isinstance(stream, asyncio.Queue)
    return kernels, QosRelease(kernels, events, shutdown, min_idle=10, grace=5), shut, kinds


def _slices(k) -> tuple[tuple[str, int, int], ...]:
    return (("d0", 2 * GiB, 10),)


async def test_qos_release_warns_then_shuts_down_after_the_grace():
    kernels, qos, shut, kinds = _server()
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    await qos.check(waiting, [dev(free=2)], _slices, now=20)
    assert kinds() == ["idle_warning"] and shut == []
    await qos.check(waiting, [dev(free=2)], _slices, now=24)
    assert kinds() == [] and shut == []
    await qos.check(waiting, [dev(free=2)], _slices, now=25)
    assert kinds() == ["idle_release"] and shut == ["k1"] and "k1" not in kernels


async def test_qos_warning_cleared_when_the_request_is_gone_or_the_kernel_wakes():
    kernels, qos, shut, kinds = _server()
    waiting = [Waiter("w1", "critical", 3 * GiB, 10)]
    await qos.check(waiting, [dev(free=2)], _slices, now=20)
    await qos.check([], [dev(free=2)], _slices, now=30)
    assert kinds() == ["idle_warning", "idle_warning_cleared"] and shut == []
    await qos.check(waiting, [dev(free=2)], _slices, now=31)  # warned afresh: a new grace
    kernels["k1"].last_active = 32.0  # active again
    await qos.check(waiting, [dev(free=2)], _slices, now=40)
    assert kinds() == ["idle_warning", "idle_warning_cleared"] and shut == [] and "k1" in kernels


async def test_qos_release_never_touches_a_critical_kernel():
    _, qos, shut, kinds = _server("critical")
    for now in (20, 30, 40):
        await qos.check([Waiter("w1", "critical", 3 * GiB, 10)], [dev(free=2)], _slices, now=now)
    assert kinds() == [] and shut == []


def test_qos_inputs_read_the_workers_inventories():
    from tf_jupyter.idle import qos_inputs
    from tf_jupyter.pool.kernels import KernelSlice
    from tf_remoting.proto import pb

    gib = 1 << 30
    inv = pb.Inventory(
        devices=[pb.Device(uuid="d0", name="NVIDIA H200", vram_total=4 * gib, compute_capacity=100, vram_leased=3 * gib,
                           compute_leased=20)],
        leases=[pb.Lease(id="L1", slices=[pb.Slice(device_uuid="d0", vram=2 * gib, compute=10)])],
        waiting=[pb.WaitingEntry(position=2, qos=pb.QOS_LOW, slice=pb.SliceRequest(vram=gib, compute=5),
                                 reason="quota"),
                 pb.WaitingEntry(position=1, qos=pb.QOS_HIGH, slice=pb.SliceRequest(vram=2 * gib, compute=10),
                                 count=0, reason="no_room", whole_device=True, model="H200")])
    waiting, devices, slices_of = qos_inputs({"w1": inv})
    assert [(w.worker, w.qos, w.vram, w.count, w.for_room, w.whole_device, w.model) for w in waiting] == [
        ("w1", "high", 2 * gib, 1, True, True, "H200"), ("w1", "low", gib, 1, False, False, "")]  # line order
    assert [(d.uuid, d.vram_free, d.compute_free, d.name) for d in devices] == [("d0", gib, 80, "NVIDIA H200")]
    assert slices_of(KernelSlice("k1", "w1", "L1", "p", "low")) == (("d0", 2 * gib, 10),)
    assert slices_of(KernelSlice("k2", "w1", "gone", "p", "low")) == ()
