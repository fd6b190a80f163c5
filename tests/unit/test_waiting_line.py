"""The worker's waiting line (plain Python): order, backfill, placement, why an entry waits."""

from __future__ import annotations

from tf_remoting.worker.waiting_line import BEHIND, NO_ROOM, QUOTA, Device, Entry, WaitingLine

GiB = 1 << 30
D0 = Device("d0", 0, "GPU A", 4 * GiB, 100)
D1 = Device("d1", 1, "GPU B", 8 * GiB, 100)


def free_of(**kw):
    return {k: v for k, v in kw.items()}


def test_qos_first_then_fair_share_then_arrival():
    line = WaitingLine([D0])
    line.add(Entry("a-low", "alice", 1, GiB, 10, arrival=1))
    line.add(Entry("b-med", "bob", 2, GiB, 10, arrival=3))
    line.add(Entry("a-med", "alice", 2, GiB, 10, arrival=2))
    line.add(Entry("c-crit", "carol", 4, GiB, 10, arrival=9))
    # alice holds 2 GiB of 4: her dominant share (0.5) is above bob's (0): bob goes first at equal QoS
    usage = {"alice": (2 * GiB, 10)}
    order = [e.id for e in line.ordered(usage)]
    assert order == ["c-crit", "b-med", "a-med", "a-low"]
    # nobody holds anything: arrival decides between equal QoS
    assert [e.id for e in line.ordered({})] == ["c-crit", "a-med", "b-med", "a-low"]
    assert line.position("b-med", usage) == 2


def test_dominant_share_takes_the_larger_of_vram_and_compute():
    line = WaitingLine([D0])
    # alice: 25 % of VRAM; bob: 1 GiB (25 %) but 60 % compute -> bob's dominant share is larger
    usage = {"alice": (GiB, 10), "bob": (GiB, 60)}
    line.add(Entry("b", "bob", 2, GiB, 10, arrival=1))
    line.add(Entry("a", "alice", 2, GiB, 10, arrival=2))
    assert [e.id for e in line.ordered(usage)] == ["a", "b"]


def test_grants_in_order_until_room_runs_out():
    line = WaitingLine([D0])
    line.add(Entry("x", "alice", 2, 3 * GiB, 10, arrival=1))
    line.add(Entry("y", "bob", 2, 3 * GiB, 10, arrival=2))
    d = line.decide({"d0": (4 * GiB, 100)}, {})
    assert [g.entry.id for g in d.grants] == ["x"]
    assert d.grants[0].devices == ("d0",)
    assert d.waiting == {"y": (1, NO_ROOM, "")}


def test_backfill_refused_on_a_device_an_earlier_entry_waits_for():
    line = WaitingLine([D0])
    line.add(Entry("big-critical", "bob", 4, 3 * GiB, 10, arrival=1))
    line.add(Entry("small-low", "alice", 1, 2 * GiB, 10, arrival=2))
    # 2 GiB free: the small one would fit, but on the device the critical one waits for
    d = line.decide({"d0": (2 * GiB, 100)}, {"alice": (2 * GiB, 10)})
    assert d.grants == []
    assert d.waiting["big-critical"][1] == NO_ROOM
    assert d.waiting["small-low"] == (2, BEHIND, "")


def test_backfill_allowed_on_a_device_no_earlier_entry_can_use():
    line = WaitingLine([D0, D1])
    # the big one can only ever use the 8 GiB device; the small one may take the 4 GiB one
    line.add(Entry("big", "bob", 4, 6 * GiB, 10, arrival=1))
    line.add(Entry("small", "alice", 1, 2 * GiB, 10, arrival=2))
    d = line.decide({"d0": (4 * GiB, 100), "d1": (4 * GiB, 100)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("small", ("d0",))]
    # a model filter also bounds what an entry blocks
    line = WaitingLine([D0, D1])
    line.add(Entry("on-b", "bob", 4, 6 * GiB, 10, arrival=1, model="gpu b"))
    line.add(Entry("any", "alice", 1, GiB, 10, arrival=2))
    d = line.decide({"d0": (4 * GiB, 100), "d1": (4 * GiB, 100)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("any", ("d0",))]


def test_a_waiting_entry_reserves_the_device_nearest_to_fitting_it_and_backfill_uses_the_others():
    a, b = Device("a", 0, "GPU", 8 * GiB, 100), Device("b", 1, "GPU", 8 * GiB, 100)
    line = WaitingLine([a, b])
    line.add(Entry("big", "bob", 4, 6 * GiB, 10, arrival=1))
    line.add(Entry("small", "alice", 1, 2 * GiB, 10, arrival=2))
    # big misses 2 GiB on a and 4 GiB on b: it reserves a; small may start on b (big does not wait for b)
    d = line.decide({"a": (4 * GiB, 100), "b": (2 * GiB, 100)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("small", ("b",))]
    assert d.waiting == {"big": (1, NO_ROOM, "")}
    # the reservation follows the device nearest to fitting: now b misses less, so a is open to small
    d = line.decide({"a": (2 * GiB, 100), "b": (4 * GiB, 100)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("small", ("a",))]
    # a whole-device request reserves the least leased device
    line = WaitingLine([a, b])
    line.add(Entry("whole", "bob", 4, 8 * GiB, 100, arrival=1, whole=True))
    line.add(Entry("small", "alice", 1, GiB, 10, arrival=2))
    d = line.decide({"a": (7 * GiB, 90), "b": (3 * GiB, 40)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("small", ("b",))]


def test_every_waiting_entry_keeps_its_own_reservation():
    a, b, c = (Device(u, i, "GPU", 8 * GiB, 100) for i, u in enumerate("abc"))
    line = WaitingLine([a, b, c])
    line.add(Entry("first", "bob", 4, 6 * GiB, 10, arrival=1))
    line.add(Entry("second", "carol", 3, 6 * GiB, 10, arrival=2))
    line.add(Entry("newcomer", "alice", 1, 2 * GiB, 10, arrival=3))
    # first reserves a (nearest), second the nearest of the rest (b); the newcomer only gets c
    d = line.decide({"a": (5 * GiB, 100), "b": (4 * GiB, 100), "c": (2 * GiB, 100)}, {})
    assert [(g.entry.id, g.devices) for g in d.grants] == [("newcomer", ("c",))]
    d = line.decide({"a": (5 * GiB, 100), "b": (4 * GiB, 100), "c": (GiB, 100)}, {})
    assert d.grants == [] and d.waiting["newcomer"] == (3, BEHIND, "")


def test_a_stream_of_small_requests_never_overtakes_a_waiting_large_one():
    line = WaitingLine([D0])
    line.add(Entry("large", "bob", 4, 4 * GiB, 10, arrival=0))
    free = 3 * GiB
    for i in range(20):
        line.add(Entry(f"s{i}", "alice", 1, GiB // 2, 5, arrival=i + 1))
        assert line.grantable({"d0": (free, 100)}, {}) == []
    # once the device is empty the large one is served first, then the small ones that still fit
    d = line.decide({"d0": (4 * GiB, 100)}, {})
    assert [g.entry.id for g in d.grants] == ["large"]


def test_quota_waits_block_nothing():
    def quota(entry, usage):
        return "alice may hold 2 GiB" if entry.principal == "alice" else None

    line = WaitingLine([D0], quota=quota)
    line.add(Entry("a", "alice", 4, GiB, 10, arrival=1))
    line.add(Entry("b", "bob", 1, GiB, 10, arrival=2))
    d = line.decide({"d0": (4 * GiB, 100)}, {})
    assert [g.entry.id for g in d.grants] == ["b"]
    assert d.waiting == {"a": (1, QUOTA, "alice may hold 2 GiB")}


def test_usage_granted_in_the_pass_counts_for_the_quota():
    def quota(entry, usage):
        return "one slice each" if usage.get(entry.principal, (0, 0))[0] > 0 else None

    line = WaitingLine([D0], quota=quota)
    line.add(Entry("a1", "alice", 2, GiB, 10, arrival=1))
    line.add(Entry("a2", "alice", 2, GiB, 10, arrival=2))
    d = line.decide({}, {})
    assert [g.entry.id for g in d.grants] == ["a1"]
    assert d.waiting["a2"][1] == QUOTA


def test_placement_best_fit_and_whole_devices():
    line = WaitingLine([D0, D1])
    line.add(Entry("s", "alice", 2, GiB, 10))
    d = line.decide({"d0": (4 * GiB, 100), "d1": (8 * GiB, 100)}, {})
    assert d.grants[0].devices == ("d0",)  # least VRAM left
    line = WaitingLine([D1, D0])
    line.add(Entry("w", "alice", 2, 2 * GiB, 100, whole=True))
    d = line.decide({"d0": (4 * GiB, 100), "d1": (8 * GiB, 100)}, {})
    assert (d.grants[0].devices, d.grants[0].vram) == (("d0",), 4 * GiB)  # the smallest untouched
    d = line.decide({"d0": (3 * GiB, 90), "d1": (8 * GiB, 100)}, {})
    assert (d.grants[0].devices, d.grants[0].vram) == (("d1",), 8 * GiB)  # d0 is touched
    # two devices at once, all or nothing
    line = WaitingLine([D0, D1])
    line.add(Entry("two", "alice", 2, 3 * GiB, 50, count=2))
    assert line.grantable({"d0": (2 * GiB, 100), "d1": (8 * GiB, 100)}, {}) == []
    assert line.grantable({"d0": (4 * GiB, 100), "d1": (8 * GiB, 100)}, {})[0].devices == ("d0", "d1")


def test_can_ever_fit():
    line = WaitingLine([D0, D1])
    assert line.can_ever_fit(Entry("x", "a", 2, 8 * GiB, 10))
    assert not line.can_ever_fit(Entry("x", "a", 2, 9 * GiB, 10))
    assert not line.can_ever_fit(Entry("x", "a", 2, GiB, 10, count=3))
    assert not line.can_ever_fit(Entry("x", "a", 2, GiB, 10, model="h100"))


def test_inputs_are_not_changed():
    line = WaitingLine([D0])
    line.add(Entry("x", "alice", 2, GiB, 10))
    free, usage = {"d0": (4 * GiB, 100)}, {"alice": (0, 0)}
    line.decide(free, usage)
    assert free == {"d0": (4 * GiB, 100)} and usage == {"alice": (0, 0)} and len(line) == 1


def test_a_decision_with_1000_waiting_places_everyone():
    """(The 5 ms per decision figure is measured in benchmarks/, not asserted here.)"""
    devices = [Device(f"d{i}", i, "GPU", 80 * GiB, 100) for i in range(8)]
    line = WaitingLine(devices)
    for i in range(1000):
        line.add(Entry(f"e{i}", f"user{i % 20}", 1 + i % 4, (1 + i % 7) * GiB, 5 + i % 20, arrival=i))
    free = {d.uuid: (GiB // 2, 10) for d in devices}
    usage = {f"user{i}": (i * GiB, i) for i in range(20)}
    d = line.decide(free, usage)
    assert sorted(p for p, _, _ in d.waiting.values()) == list(range(1, 1001))
