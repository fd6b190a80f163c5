"""Quotas (plain Python): parsing the worker's [worker.quotas], finding a principal's quota, the
check, and the ledger checking it in the same transaction as Allocate, Resize and a kernel."""

from __future__ import annotations

import threading

import pytest

from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.leases import WHOLE_MODE, DeviceCapacity, KernelRecord, Ledger, OverQuotaError
from tf_remoting.worker.line_store import LineStore, Request
from tf_remoting.worker.quotas import LineQuota, OverQuota, Quota, Quotas, Use, check
from tf_remoting.worker.waiting_line import QUOTA, Device, Entry, WaitingLine

GiB = 1 << 30
CONFIG = {
    "default": {"vram": "8Gi", "compute": "100%", "kernels": 2},
    "groups": {"staff": {"vram": "32Gi", "devices": 1}, "students": {"vram": "4Gi", "kernels": 5},
               "admins": {"vram": "unlimited"}},
    "principals": {"hub:alice": {"kernels": 1}},
}


def test_the_exclusive_mode_is_the_one_the_ledger_counts_as_whole_devices():
    from tf_remoting.proto import pb

    assert WHOLE_MODE == pb.ISOLATION_MODE_EXCLUSIVE


# ---------------------------------------------------------------------- parsing


def test_parse_accepts_the_projects_quantities():
    q = Quotas.parse(CONFIG)
    assert q.default == {"vram": 8 * GiB, "compute": 100, "kernels": 2}
    assert q.groups["admins"] == {"vram": None}
    assert Quotas.parse({"default": {"compute": 250, "vram": 1024}}).default == {"compute": 250, "vram": 1024}


@pytest.mark.parametrize(("data", "words"), [
    ({"default": {"vram": "8 gigs"}}, ["worker.quotas.default.vram", "'8 gigs'", "16Gi"]),
    ({"groups": {"staff": {"kernels": -1}}}, ["worker.quotas.groups.staff.kernels", "-1", "whole number"]),
    ({"principals": {"bob": {"devices": 1.5}}}, ["worker.quotas.principals.bob.devices", "1.5"]),
    ({"default": {"compute": "0%"}}, ["worker.quotas.default.compute", "'0%'"]),
    ({"default": {"kernels": True}}, ["worker.quotas.default.kernels", "True"]),
    ({"default": {"gpus": 1}}, ["worker.quotas.default", "'gpus'", "vram, compute, kernels, devices"]),
    ({"users": {}}, ["worker.quotas", "'users'", "principals"]),
    ({"groups": {"staff": 4}}, ["worker.quotas.groups.staff", "table of limits"]),
    ([1, 2], ["worker.quotas must be a table"]),
])
def test_bad_config_is_a_start_up_error_naming_key_and_value(data, words):
    with pytest.raises(ValueError) as err:
        Quotas.parse(data)
    for word in words:
        assert word in str(err.value)
    with pytest.raises(ValueError) as err:
        WorkerConfig.from_dict({"quotas": data}).validate()
    assert words[0] in str(err.value)


def test_worker_config_reads_quotas_from_toml(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text('[worker.quotas.default]\nvram = "8Gi"\n[worker.quotas.principals."hub:alice"]\nkernels = 3\n')
    config = WorkerConfig.from_file(path)
    config.validate()
    assert Quotas.parse(config.quotas).resolve("hub:alice") == Quota(vram=8 * GiB, kernels=3,
                                                                      source="principal hub:alice, default")


# ---------------------------------------------------------------------- resolving


def test_resolve_principal_entry_wins_then_most_generous_group_then_default():
    q = Quotas.parse(CONFIG)
    # no entry of its own, no group: the default
    assert q.resolve("hub:bob") == Quota(vram=8 * GiB, compute=100, kernels=2, source="default")
    # its group raises VRAM and adds devices; the rest from the default
    assert q.resolve("hub:bob", ["staff"]) == Quota(vram=32 * GiB, compute=100, kernels=2, devices=1,
                                                   source="group staff, default")
    # two groups: the most generous value of each dimension
    both = q.resolve("hub:bob", ["students", "staff"])
    assert (both.vram, both.kernels, both.devices) == (32 * GiB, 5, 1)
    # "unlimited" beats every number
    assert q.resolve("hub:bob", ["staff", "admins"]).vram is None
    # a principal-specific entry wins over its groups, for the dimensions it sets
    alice = q.resolve("hub:alice", ["students"])
    assert (alice.kernels, alice.vram) == (1, 4 * GiB)
    # unknown groups are ignored; no entry at all: no limit
    assert Quotas.parse({}).resolve("x", ["y"]).unlimited


# ---------------------------------------------------------------------- the check


def test_check_names_quota_held_and_asked():
    quota = Quota(vram=8 * GiB, kernels=2, source="default")
    assert check(quota, Use(vram=4 * GiB), Use(vram=4 * GiB)) is None
    over = check(quota, Use(vram=6 * GiB, kernels=1), Use(vram=4 * GiB), "hub:bob")
    assert isinstance(over, OverQuota) and over.over == ("vram",)
    text = over.sentence()
    for part in ("hub:bob", "8 GiB VRAM", "holds 6 GiB VRAM", "asked for 4 GiB VRAM", "set by default"):
        assert part in text, text
    # only what is asked counts: over its VRAM (quota lowered), it may still start a kernel or shrink
    assert check(quota, Use(vram=20 * GiB), Use(kernels=1)) is None
    assert check(quota, Use(kernels=2), Use(kernels=1)).over == ("kernels",)
    assert check(Quota(), Use(vram=10**15), Use(vram=10**15, devices=9)) is None


def test_line_quota_counts_whole_devices_granted_in_the_same_pass():
    devices = [Device(f"d{i}", i, "A100", 80 * GiB, 100) for i in range(3)]
    quota = LineQuota(lambda p: Quota(devices=1), {})
    line = WaitingLine(devices, quota)
    line.add(Entry("w1", "bob", 2, 40 * GiB, 100, whole=True, arrival=1))
    line.add(Entry("w2", "bob", 2, 40 * GiB, 100, whole=True, arrival=2))
    decision = line.decide({}, {})
    assert [g.entry.id for g in decision.grants] == ["w1"]
    assert decision.waiting["w2"][1] == QUOTA
    assert quota.refusals["w2"].held.devices == 1


def test_line_quota_counts_vram_granted_in_the_same_pass():
    devices = [Device("d0", 0, "A100", 80 * GiB, 100)]
    quota = LineQuota(lambda p: Quota(vram=6 * GiB), {"bob": Use(vram=2 * GiB, compute=10)})
    line = WaitingLine(devices, quota)
    for i in range(3):
        line.add(Entry(f"s{i}", "bob", 2, 2 * GiB, 10, arrival=i))
    line.add(Entry("a", "alice", 2, 2 * GiB, 10, arrival=9))
    decision = line.decide({"d0": (78 * GiB, 90)}, {"bob": (2 * GiB, 10)})
    assert sorted(g.entry.id for g in decision.grants) == ["a", "s0", "s1"]
    assert decision.waiting["s2"][1] == QUOTA


# ---------------------------------------------------------------------- the ledger


@pytest.fixture
def ledger(tmp_path):
    devices = [DeviceCapacity(f"GPU-{i}", i, "A100", 16 * GiB, 100) for i in range(2)]
    with Ledger(tmp_path / "ledger.sqlite3", devices) as led:
        yield led


def test_allocate_refuses_over_quota_with_room_left(ledger):
    quota = Quota(vram=6 * GiB)
    ledger.allocate("bob", 4 * GiB, 10, quota=quota)
    with pytest.raises(OverQuotaError) as err:
        ledger.allocate("bob", 4 * GiB, 10, quota=quota)
    assert err.value.code == "FAILED_PRECONDITION"
    assert err.value.over.held == Use(vram=4 * GiB, compute=10)
    assert err.value.over.asked == Use(vram=4 * GiB, compute=10)
    # another principal's holdings are not bob's
    ledger.allocate("alice", 4 * GiB, 10, quota=quota)
    # count and whole devices count too
    with pytest.raises(OverQuotaError):
        ledger.allocate("carol", 4 * GiB, 10, count=2, quota=quota)
    with pytest.raises(OverQuotaError) as err:
        ledger.allocate("carol", GiB, 10, mode=WHOLE_MODE, quota=Quota(devices=0))
    assert err.value.over.over == ("devices",)
    assert ledger.quota_use("bob") == Use(vram=4 * GiB, compute=10)


def test_concurrent_allocations_cannot_pass_the_quota_together(ledger):
    quota = Quota(vram=4 * GiB)
    results: list[str] = []

    def take() -> None:
        try:
            ledger.allocate("bob", 3 * GiB, 10, quota=quota)
            results.append("ok")
        except OverQuotaError:
            results.append("over")

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok"] + ["over"] * 5


def test_resize_checks_only_growth_and_keeps_the_dimension_not_asked(ledger):
    quota = Quota(vram=6 * GiB, compute=50)
    lease = ledger.allocate("bob", 2 * GiB, 10, count=2, quota=quota)  # holds 4 GiB / 20 %
    with pytest.raises(OverQuotaError) as err:
        ledger.resize("bob", lease.id, 4 * GiB, None, quota=quota)  # would hold 8 GiB
    assert err.value.over.asked == Use(vram=4 * GiB)
    grown = ledger.resize("bob", lease.id, None, 25, quota=quota)  # 50 %: at the quota, allowed
    assert [(s.vram, s.compute) for s in grown.slices] == [(2 * GiB, 25)] * 2
    shrunk = ledger.resize("bob", lease.id, GiB, None, quota=Quota(vram=GiB))  # shrinking is always allowed
    assert [(s.vram, s.compute) for s in shrunk.slices] == [(GiB, 25)] * 2


def test_resize_of_one_dimension_does_not_undo_another(ledger):
    lease = ledger.allocate("bob", 2 * GiB, 10)
    ledger.resize("bob", lease.id, None, 30)
    ledger.resize("bob", lease.id, 3 * GiB, None)
    assert [(s.vram, s.compute) for s in ledger.get("bob", lease.id).slices] == [(3 * GiB, 30)]
    with pytest.raises(Exception, match="needs a new VRAM size"):
        ledger.resize("bob", lease.id, None, None)


def _kernel(lease_id: str, n: int) -> KernelRecord:
    return KernelRecord(id=f"k{n}", lease_id=lease_id, principal="bob", nanny_pid=0, pid=0, status="starting",
                        exit_code=None, cwd="/", environment="python3", started_at=float(n), directory="/",
                        labels={})


def test_kernels_count_until_they_exit(ledger):
    quota = Quota(kernels=1)
    lease = ledger.allocate("bob", GiB, 10)
    ledger.add_kernel(_kernel(lease.id, 1), quota)
    with pytest.raises(OverQuotaError) as err:
        ledger.add_kernel(_kernel(lease.id, 2), quota)
    assert "1 kernel(s)" in str(err.value)
    assert ledger.kernels(lease.id)[0].id == "k1"  # nothing recorded for the refused one
    ledger.update_kernel("k1", status="exited")
    ledger.add_kernel(_kernel(lease.id, 3), quota)


def test_the_line_refuses_over_quota_at_once_or_waits_for_it(ledger):
    quotas = {"bob": Quota(vram=6 * GiB)}
    line = LineStore(ledger, lambda p: quotas.get(p, Quota()))

    def request(rid: str, vram: int) -> Request:
        return Request("bob", rid, 2, vram, 10, 1, "", False, 0, 60, "", {}, deadline=1e12)

    lease, _ = line.join(request("r1", 4 * GiB), wait=False)
    assert lease is not None
    with pytest.raises(OverQuotaError) as err:  # without wait: over quota, said so (there is room)
        line.join(request("r2", 4 * GiB), wait=False)
    assert err.value.over.held.vram == 4 * GiB
    with pytest.raises(OverQuotaError):  # more than the whole quota: no wait could ever grant it
        line.join(request("r3", 7 * GiB), wait=True)
    lease2, served = line.join(request("r4", 4 * GiB), wait=True)  # waits for its quota
    assert lease2 is None
    assert served.decision.waiting[request("r4", 0).key][1] == QUOTA
    ledger.release("bob", lease.id)
    assert line.serve().granted  # bob's first lease gone: the waiting one fits its quota now


def test_the_line_keeps_each_requests_groups_also_in_a_ledger_from_before_groups(tmp_path):
    devices = [DeviceCapacity("GPU-0", 0, "A100", 16 * GiB, 100)]
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path, devices) as led:  # a waiting table as written before the line kept groups
        led._conn.execute("CREATE TABLE waiting (principal TEXT NOT NULL, request_id TEXT NOT NULL, qos INTEGER "
                          "NOT NULL, vram INTEGER NOT NULL, compute INTEGER NOT NULL, count INTEGER NOT NULL, model "
                          "TEXT NOT NULL, whole INTEGER NOT NULL, mode INTEGER NOT NULL, ttl_seconds INTEGER NOT "
                          "NULL, profile TEXT NOT NULL, labels TEXT NOT NULL, arrival REAL NOT NULL, deadline REAL "
                          "NOT NULL, detached_at REAL, lease_id TEXT, PRIMARY KEY (principal, request_id))")
        led._conn.execute("INSERT INTO waiting VALUES ('old', 'r0', 2, 1, 10, 1, '', 0, 0, 60, '', '{}', 1, 1e12, "
                          "NULL, NULL)")
        led._conn.commit()
    with Ledger(path, devices) as led:
        line = LineStore(led)
        assert line.groups_of_waiting() == {"old": frozenset()}
        for rid, groups in (("r1", ["staff"]), ("r2", ["b", "a"]), ("r3", ["big"])):  # her latest request's count
            lease, _ = line.join(Request("carol", rid, 2, 16 * GiB, 10, 1, "", False, 0, 60, "", {}, deadline=1e12,
                                         groups=groups), wait=True)
            assert lease is None
        assert line.groups_of_waiting() == {"old": frozenset(), "carol": frozenset({"big"})}
