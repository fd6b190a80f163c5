"""Which idle leases a waiting higher-QoS request displaces (the worker's plan, tf_remoting.worker.preemption),
as plain Python; and the Jupyter server's part (tf_jupyter.idle.QosRelease): warn, then shut down."""

from __future__ import annotations

import pytest

from tf_remoting.proto import pb
from tf_remoting.worker.preemption import Device, Held, Waiter, to_release

GiB = 1 << 30


LOW, MEDIUM, HIGH, CRITICAL = pb.QOS_LOW, pb.QOS_MEDIUM, pb.QOS_HIGH, pb.QOS_CRITICAL


def dev(uuid: str = "d0", total: int = 4, free: int = 0, compute_free: int = 100) -> Device:
    return Device(uuid, total * GiB, free * GiB, 100, compute_free)


def held(lid: str, qos: int = LOW, idle: float = 100.0, vram: int = 2, compute: int = 10, uuid: str = "d0") -> Held:
    return Held(lid, qos, idle, ((uuid, vram * GiB, compute),))


def ids(releases) -> list[str]:
    return sorted(r.lease_id for r in releases)


def test_an_idle_lower_qos_kernel_makes_room_for_a_waiting_request():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    assert ids(to_release(waiting, [held("a", LOW)], [dev(free=2)], min_idle=30)) == ["a"]


@pytest.mark.parametrize("qos", [CRITICAL, HIGH])
def test_same_or_higher_qos_kernels_are_never_released(qos):
    waiting = [Waiter(HIGH, 3 * GiB, 10)]
    assert to_release(waiting, [held("a", qos)], [dev(free=2)], min_idle=30) == []


def test_a_critical_kernel_is_not_released_even_for_a_critical_request():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    assert to_release(waiting, [held("a", CRITICAL, idle=1e9)], [dev(free=2)], min_idle=0) == []


def test_a_kernel_not_idle_long_enough_stays():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    assert to_release(waiting, [held("a", idle=29.0)], [dev(free=2)], min_idle=30) == []


def test_nothing_is_released_when_the_request_fits_already():
    waiting = [Waiter(CRITICAL, 1 * GiB, 10)]
    assert to_release(waiting, [held("a")], [dev(free=2)], min_idle=30) == []


def test_a_request_waiting_on_its_quota_displaces_no_one():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10, for_room=False)]
    assert to_release(waiting, [held("a")], [dev(free=2)], min_idle=30) == []


def test_nothing_is_released_when_the_idle_leases_cannot_make_enough_room():
    # 1 GiB free + 1 GiB idle < 3 GiB: the rest is held by active or same-QoS leases; releasing one would not help
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    assert to_release(waiting, [held("a", vram=1)], [dev(free=1)], min_idle=30) == []


def test_compute_counts_as_well_as_vram():
    waiting = [Waiter(CRITICAL, 1 * GiB, 50)]
    kernels = [held("a", vram=1, compute=40)]
    assert ids(to_release(waiting, kernels, [dev(free=3, compute_free=20)], min_idle=30)) == ["a"]
    assert to_release(waiting, kernels, [dev(free=3, compute_free=5)], min_idle=30) == []


def test_leases_on_devices_that_cannot_help_stay():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    devices = [dev("d0", free=2), dev("d1", free=0)]
    kernels = [held("on-d0", vram=1), held("on-d1", vram=1, uuid="d1")]
    assert ids(to_release(waiting, kernels, devices, min_idle=30)) == ["on-d0"]


def test_two_idle_leases_that_only_together_make_room_are_both_chosen():
    # Two principals' 2 GiB each on a full 4 GiB device, a 3 GiB request: neither alone is enough.
    waiting = [Waiter(HIGH, 3 * GiB, 10)]
    assert ids(to_release(waiting, [held("alices"), held("carols", MEDIUM)], [dev(free=0)], min_idle=30)) == [
        "alices", "carols"]
    # one of them busy: the other alone cannot make room, so neither goes
    assert to_release(waiting, [held("alices"), held("carols", idle=5)], [dev(free=0)], min_idle=30) == []


def test_the_device_needing_the_fewest_releases_is_used_lowest_qos_then_longest_idle_first():
    waiting = [Waiter(CRITICAL, 3 * GiB, 10)]
    devices = [dev("d0", free=1), dev("d1", free=0)]
    kernels = [held("d0-small-a", vram=1, idle=50), held("d0-small-b", vram=1, idle=60),
               held("d1-big", MEDIUM, vram=4, uuid="d1")]
    assert ids(to_release(waiting, kernels, devices, min_idle=30)) == ["d1-big"]
    # on one device: low before medium, then the longest idle; no more than needed
    kernels = [held("m", MEDIUM, vram=2, idle=500), held("l-short", vram=2, idle=40),
               held("l-long", vram=2, idle=90)]
    assert ids(to_release(waiting, kernels, [dev("d0", total=8, free=1)], min_idle=30)) == ["l-long"]


def test_a_whole_device_request_needs_the_device_empty():
    waiting = [Waiter(CRITICAL, 0, 100, whole_device=True)]
    assert ids(to_release(waiting, [held("a", vram=2), held("b", vram=2)], [dev(free=0)], min_idle=30)) == ["a", "b"]
    # someone else's 1 GiB stays on it: ours cannot empty it
    assert to_release(waiting, [held("a", vram=2)], [dev(free=1)], min_idle=30) == []


def test_only_devices_the_request_can_use_count():
    # a request for an "H200" waits; our idle kernel sits on the "A10": releasing it would not help
    waiting = [Waiter(CRITICAL, 2 * GiB, 10, model="h200")]
    devices = [Device("d0", 4 * GiB, 0, 100, 100, "NVIDIA A10"), Device("d1", 4 * GiB, 0, 100, 100, "NVIDIA H200")]
    assert to_release(waiting, [held("a", uuid="d0")], devices, min_idle=30) == []
    assert ids(to_release(waiting, [held("a", uuid="d0"), held("b", uuid="d1")], devices, min_idle=30)) == ["b"]


def test_a_request_over_several_devices_needs_room_on_each():
    waiting = [Waiter(CRITICAL, 2 * GiB, 10, count=2)]
    devices = [dev("d0", free=0), dev("d1", free=0)]
    assert to_release(waiting, [held("a")], devices, min_idle=30) == []
    assert ids(to_release(waiting, [held("a"), held("b", uuid="d1")], devices, min_idle=30)) == ["a", "b"]


def test_room_promised_to_one_request_is_not_promised_to_the_next():
    waiting = [Waiter(CRITICAL, 2 * GiB, 10), Waiter(HIGH, 2 * GiB, 10)]
    kernels = [held("a", vram=2), held("b", vram=2, idle=50)]
    # 0 free: the first takes a's room (longest idle), the second b's
    assert [(r.lease_id, r.waiter.qos) for r in to_release(waiting, kernels, [dev(free=0)], min_idle=30)] == [
        ("a", CRITICAL), ("b", HIGH)]
    # 2 GiB free: the first takes the free room, so the second still needs a
    assert [(r.lease_id, r.waiter.qos) for r in to_release(waiting, kernels, [dev(free=2)], min_idle=30)] == [
        ("a", HIGH)]


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
    return kernels, QosRelease(kernels, events, shutdown, grace=5), shut, kinds


MARKED = {"k1": ("critical", "w1")}  # the worker marked k1's lease for a waiting critical request


async def test_qos_release_warns_then_shuts_down_after_the_grace():
    kernels, qos, shut, kinds = _server()
    await qos.check(MARKED, now=20)
    assert kinds() == ["idle_warning"] and shut == []
    await qos.check(MARKED, now=24)
    assert kinds() == [] and shut == []
    await qos.check(MARKED, now=25)
    assert kinds() == ["idle_release"] and shut == ["k1"] and "k1" not in kernels


async def test_qos_warning_cleared_when_the_worker_no_longer_marks_the_kernel():
    kernels, qos, shut, kinds = _server()
    await qos.check(MARKED, now=20)
    await qos.check({}, now=30)  # the request started or left, or the kernel became active
    assert kinds() == ["idle_warning", "idle_warning_cleared"] and shut == []
    await qos.check(MARKED, now=31)  # warned afresh: a new grace
    await qos.check(MARKED, now=35)
    assert kinds() == ["idle_warning"] and shut == [] and "k1" in kernels


async def test_qos_release_never_touches_another_servers_kernel():
    _, qos, shut, kinds = _server()
    for now in (20, 30, 40):
        await qos.check({"not-ours": ("critical", "w1")}, now=now)
    assert kinds() == [] and shut == []


async def test_a_failed_shutdown_is_reported_and_tried_again():
    kernels, qos, shut, kinds = _server()
    failures = [RuntimeError("kernel manager busy")]

    async def shutdown(kernel_id: str) -> None:
        if failures:
            raise failures.pop()
        shut.append(kernel_id)

    qos.shutdown = shutdown
    await qos.check(MARKED, now=20)
    await qos.check(MARKED, now=25)
    assert kinds() == ["idle_warning", "idle_release_failed"] and shut == [] and "k1" in kernels
    await qos.check(MARKED, now=26)
    assert kinds() == ["idle_release"] and shut == ["k1"]


def test_qos_wanted_reads_the_marks_of_our_kernels_leases():
    from tf_jupyter.idle import qos_wanted
    from tf_jupyter.pool.kernels import Kernels, KernelSlice

    kernels = Kernels()
    for k in (KernelSlice("k1", "w1", "L1", "p", "low"), KernelSlice("k2", "w1", "L2", "p", "low"),
              KernelSlice("k3", "w2", "L1", "p", "low")):
        kernels.register(k)
    inventories = {"w1": pb.Inventory(leases=[pb.Lease(id="L1", release_for=pb.QOS_HIGH), pb.Lease(id="L2")]),
                   "w2": pb.Inventory(leases=[pb.Lease(id="L9", release_for=pb.QOS_CRITICAL)])}
    # k1's lease is marked; k2's is not; k3's lease id is L1 too, but on w2, where L1 is not marked
    assert qos_wanted(kernels, inventories) == {"k1": ("high", "w1")}


# ---------------------------------------------------------------- the worker's setting


@pytest.mark.parametrize("bad", [-1.0, float("nan"), 86401.0])
def test_qos_release_idle_out_of_range_is_refused_with_a_sentence(bad):
    from tf_remoting.worker.config import WorkerConfig

    with pytest.raises(ValueError, match=r"qos_release_idle must be between 0 \(never\) and 86400 seconds"):
        WorkerConfig.from_dict({"qos-release-idle": bad}).validate()
    WorkerConfig.from_dict({"qos-release-idle": 0}).validate()  # 0: never
