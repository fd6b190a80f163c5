"""The panel's plain-Python parts (issue 14): the kernel history ring, the waiting hint, one way to
say utilization."""

from __future__ import annotations

from tf_jupyter.history import History, Point
from tf_jupyter.placement import Request
from tf_jupyter.pool.views import wait_hint
from tf_remoting.proto import pb
from tf_remoting.quantities import utilization_text

GiB = 1 << 30


def test_history_keeps_ten_minutes_one_point_a_second_per_kernel():
    h = History()
    for i in range(1300):  # 650 s at two samples a second
        h.add("k1", Point(1000.0 + i / 2, i, 4 * GiB, 5.0))
    points = h.points("k1")
    assert len(points) == 601 and points[0].t == 1049.0 and points[-1].t == 1649.0
    assert all(b.t - a.t >= 1.0 for a, b in zip(points, points[1:], strict=False))
    assert h.points("k2") == [] and "k1" in h
    h.forget("k1")
    assert h.points("k1") == [] and "k1" not in h


def test_wait_hint_says_what_lets_it_start():
    small = Request(4 * GiB, 10)
    assert wait_hint("no_room", small, 3) == (
        "It starts when 4 GiB and 10 % are free on one GPU; 2 requests ahead of it.")
    assert wait_hint("no_room", small, 1) == "It starts when 4 GiB and 10 % are free on one GPU."
    assert "a GPU has no slice on it" in wait_hint("no_room", Request(0, 100, whole_device=True), 2)
    assert "a request ahead of it waits" in wait_hint("behind", small, 2)
    quota = pb.QuotaStatus(quota=pb.Quota(vram=16 * GiB), held=pb.QuotaUse(vram=16 * GiB))
    assert wait_hint("quota", small, 1, quota) == (
        "Ending one of your kernels on this GPU host (you hold 16 GiB of your 16 GiB VRAM quota there) lets it "
        "start; or ask the administrator for a larger quota.")
    # the dimension that keeps it waiting is named, whichever it is
    kernels = pb.QuotaStatus(quota=pb.Quota(vram=64 * GiB, kernels=3), held=pb.QuotaUse(vram=12 * GiB, kernels=3))
    assert "(you hold 3 of your 3 kernel quota there)" in wait_hint("quota", small, 1, kernels)
    compute = pb.QuotaStatus(quota=pb.Quota(compute=50), held=pb.QuotaUse(compute=45))
    assert "(you hold 45 % of your 50 % compute quota there)" in wait_hint("quota", small, 1, compute)
    whole = pb.QuotaStatus(quota=pb.Quota(vram=64 * GiB, devices=1), held=pb.QuotaUse(vram=8 * GiB, devices=1))
    assert "(you hold 1 of your 1 whole-device quota there)" in wait_hint(
        "quota", Request(0, 100, whole_device=True), 1, whole)
    assert wait_hint("quota", small, 1, pb.QuotaStatus()) == (
        "Ending one of your kernels on this GPU host lets it start; or ask the administrator for a larger quota.")


def test_utilization_is_said_one_way():
    assert utilization_text(12.4, 25) == "12 % of the GPU · slice 25 %"
    assert utilization_text(40, host=True) == "40 % of the host"


def test_admin_view_sums_use_and_lists_idle_leases_most_idle_first():
    from tf_jupyter.pool.kernels import Kernels
    from tf_jupyter.pool.views import admin_json, pool_json
    from tf_jupyter.pool.workers import WorkerState

    def lease(lid: str, who: str, gib: int, last_active: float, notebook: str = "") -> pb.Lease:
        return pb.Lease(id=lid, principal=who, created_at=0.0, last_active=last_active, profile="small",
                        labels={"notebook": notebook} if notebook else {}, qos=pb.QOS_LOW,
                        slices=[pb.Slice(device_uuid="d0", vram=gib * GiB, compute=10)],
                        kernels=[pb.Kernel(id=f"k-{lid}", status=pb.KERNEL_STATUS_RUNNING)])

    inv = pb.Inventory(view=pb.INVENTORY_VIEW_ALL, viewer="admin",
                       devices=[pb.Device(uuid="d0", name="GPU", vram_total=16 * GiB, vram_leased=7 * GiB,
                                          compute_capacity=100, compute_leased=30)],
                       leases=[lease("a1", "alice", 4, 900.0, "plan.ipynb"), lease("b1", "bob", 2, 500.0),
                               lease("b2", "bob", 1, 990.0)])
    inv.leases[1].release_for = pb.QOS_HIGH  # the worker marked b1: a waiting high request needs its room
    w = WorkerState("w1", client=None, inventory=inv, up=True)  # type: ignore[arg-type]
    view = admin_json({"w1": w}, Kernels(), now=1000.0)
    assert [(u["principal"], u["vram"], u["kernels"]) for u in view["users"]] == [
        ("alice", 4 * GiB, 1), ("bob", 3 * GiB, 2)]
    assert [(i["lease_id"], i["idle_s"], i["label"]) for i in view["idle"]] == [
        ("b1", 500.0, "small kernel k-b1"), ("a1", 100.0, "plan.ipynb")]  # b2 was busy 10 s ago
    assert [i.get("release_for") for i in view["idle"]] == ["high", None]
    assert pool_json({"w1": w}, "binpack")["admin"] is True
    w.inventory = pb.Inventory(view=pb.INVENTORY_VIEW_OWN, viewer="alice", devices=inv.devices,
                               leases=[inv.leases[0]])
    pool = pool_json({"w1": w}, "binpack")
    assert pool["admin"] is False
    assert [(s["own"], s["vram"], s["principal"]) for s in pool["workers"][0]["devices"][0]["slices"]] == [
        (True, 4 * GiB, ""), (False, 3 * GiB, "")]
