"""The wait queue: QoS then arrival, positions, backfill within a QoS level, timeouts."""

import pytest

from tf_jupyter.placement import DeviceView, PoolState, Request
from tf_jupyter.queue import WaitQueue

GiB = 2**30


class Clock:
    """A settable clock (the queue takes its time from an injected callable)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def small(gib=4):
    return Request(gib * GiB, 10)


def test_order_is_qos_then_arrival():
    clock = Clock()
    q = WaitQueue(clock)
    for i, qos in enumerate(["low", "medium", "critical", "medium", "high", "low"]):
        clock.now += 1
        q.push(f"k{i}", small(), qos, labels={"kernel": f"k{i}"})
    assert [e.id for e in q.entries()] == ["k2", "k4", "k1", "k3", "k0", "k5"]
    assert [q.position(i) for i in ("k2", "k4", "k1", "k3", "k0", "k5")] == [1, 2, 3, 4, 5, 6]
    assert q.get("k1").labels == {"kernel": "k1"} and q.get("k1").arrival == 102.0
    assert len(q) == 6 and "k1" in q


def test_same_arrival_keeps_push_order():
    q = WaitQueue(Clock())
    for i in range(5):
        q.push(f"k{i}", small())
    assert [e.id for e in q.entries()] == [f"k{i}" for i in range(5)]


def test_remove_and_errors():
    q = WaitQueue(Clock())
    q.push("a", small())
    q.push("b", small())
    assert q.remove("a").id == "a"
    assert q.remove("a") is None
    assert q.position("b") == 1
    with pytest.raises(KeyError, match="'a' is not waiting"):
        q.position("a")
    with pytest.raises(ValueError, match=r"'b' is already waiting in the queue \(position 1\)"):
        q.push("b", small())
    with pytest.raises(ValueError, match="invalid QoS 'urgent'"):
        q.push("c", small(), "urgent")


def test_ready_backfills_within_a_qos_level_but_not_across():
    clock = Clock()
    q = WaitQueue(clock)
    q.push("big", small(40), "high")
    q.push("small-high", small(4), "high")
    q.push("small-medium", small(4), "medium")
    free = 8 * GiB
    fits = lambda r: r.vram <= free  # noqa: E731
    # The big high-QoS request is blocked: the small high one may pass it, the medium one may not.
    assert [e.id for e in q.ready(fits)] == ["small-high"]
    q.remove("big")
    assert [e.id for e in q.ready(fits)] == ["small-high", "small-medium"]
    assert q.ready(lambda r: False) == []


def test_ready_with_a_reserving_predicate_never_double_books():
    state = PoolState([DeviceView("w1", "a", "NVIDIA L4", 24 * GiB, 24 * GiB, 100, 100)])
    q = WaitQueue(Clock())
    for i in range(4):
        q.push(f"k{i}", Request(10 * GiB, 10))
    ready = q.ready(lambda r: state.place_and_commit(r) is not None)
    assert [e.id for e in ready] == ["k0", "k1"]


def test_expired():
    clock = Clock()
    q = WaitQueue(clock)
    q.push("old", small(), "low")
    clock.now += 30
    q.push("new", small(), "critical")
    assert [e.id for e in q.expired(clock.now + 30, timeout=60)] == ["old"]
    assert [e.id for e in q.expired(clock.now + 60, timeout=60)] == ["new", "old"]
    clock.now += 70
    assert [e.id for e in q.expired(timeout=60)] == ["new", "old"]
    assert q.expired(timeout=1000) == []
