"""The watchdog's over-limit policy: warn, then interrupt, then kill, once each per excursion."""

import math

import pytest

from tf_remoting.worker.watchdog import Watchdog, WatchdogAction, WatchdogPolicy

GiB = 2**30
LIMIT = 8 * GiB


def kinds(actions: list[WatchdogAction]) -> list[str]:
    return [a.kind for a in actions]


def test_under_warn_ratio_is_quiet():
    dog = Watchdog(WatchdogPolicy())
    for t in range(10):
        assert dog.observe("lease-1", 7 * GiB, LIMIT, float(t)) == []


def test_near_limit_once_per_excursion():
    dog = Watchdog(WatchdogPolicy(warn_ratio=0.9))
    actions = dog.observe("lease-1", int(7.5 * GiB), LIMIT, 0.0)
    assert kinds(actions) == ["near_limit"]
    assert actions[0].lease_id == "lease-1"
    assert "7.5 GiB of its 8 GiB VRAM limit" in actions[0].message
    assert dog.observe("lease-1", int(7.6 * GiB), LIMIT, 1.0) == []
    assert dog.observe("lease-1", LIMIT, LIMIT, 2.0) == []  # at the limit is not over it
    assert dog.observe("lease-1", 1 * GiB, LIMIT, 3.0) == []
    assert kinds(dog.observe("lease-1", int(7.5 * GiB), LIMIT, 4.0)) == ["near_limit"]


def test_full_escalation_with_kill_policy():
    dog = Watchdog(WatchdogPolicy(grace_seconds=5, action="kill"))
    over = 9 * GiB
    first = dog.observe("lease-1", over, LIMIT, 100.0)
    assert kinds(first) == ["over_limit"]
    assert "9 GiB, over its 8 GiB VRAM limit" in first[0].message
    assert dog.observe("lease-1", over, LIMIT, 102.0) == []
    assert dog.observe("lease-1", over, LIMIT, 104.9) == []
    interrupt = dog.observe("lease-1", over, LIMIT, 105.0)
    assert kinds(interrupt) == ["interrupt"]
    assert "interrupting" in interrupt[0].message
    assert dog.observe("lease-1", over, LIMIT, 107.0) == []
    kill = dog.observe("lease-1", over, LIMIT, 110.0)
    assert kinds(kill) == ["kill"]
    assert "killing" in kill[0].message
    # Never a flood: nothing more while it stays over.
    for t in range(111, 200):
        assert dog.observe("lease-1", over, LIMIT, float(t)) == []


def test_interrupt_policy_stops_at_interrupt():
    dog = Watchdog(WatchdogPolicy(grace_seconds=1, action="interrupt"))
    seen = []
    for t in range(20):
        seen += kinds(dog.observe("lease-1", 9 * GiB, LIMIT, float(t)))
    assert seen == ["over_limit", "interrupt"]


def test_warn_policy_only_reports():
    dog = Watchdog(WatchdogPolicy(grace_seconds=1, action="warn"))
    seen = []
    for t in range(20):
        seen += kinds(dog.observe("lease-1", 9 * GiB, LIMIT, float(t)))
    assert seen == ["over_limit"]


def test_dropping_under_the_limit_resets_escalation():
    dog = Watchdog(WatchdogPolicy(grace_seconds=5))
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 0.0)) == ["over_limit"]
    # Back in the warning band: escalation resets, and no second warning for the same excursion.
    assert dog.observe("lease-1", int(7.8 * GiB), LIMIT, 4.0) == []
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 6.0)) == ["over_limit"]
    assert dog.observe("lease-1", 9 * GiB, LIMIT, 10.0) == []  # grace counts from 6.0
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 11.0)) == ["interrupt"]
    # Well under: a later excursion starts with a warning again.
    assert dog.observe("lease-1", GiB, LIMIT, 12.0) == []
    assert kinds(dog.observe("lease-1", int(7.5 * GiB), LIMIT, 13.0)) == ["near_limit"]


def test_zero_grace_escalates_one_step_per_sample():
    dog = Watchdog(WatchdogPolicy(grace_seconds=0))
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 0.0)) == ["over_limit"]
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 0.0)) == ["interrupt"]
    assert kinds(dog.observe("lease-1", 9 * GiB, LIMIT, 0.0)) == ["kill"]
    assert dog.observe("lease-1", 9 * GiB, LIMIT, 0.0) == []


def test_leases_are_independent_and_forget():
    dog = Watchdog(WatchdogPolicy(grace_seconds=1))
    assert kinds(dog.observe("a", 9 * GiB, LIMIT, 0.0)) == ["over_limit"]
    assert kinds(dog.observe("b", 9 * GiB, LIMIT, 0.5)) == ["over_limit"]
    assert kinds(dog.observe("a", 9 * GiB, LIMIT, 1.0)) == ["interrupt"]
    assert dog.observe("b", 9 * GiB, LIMIT, 1.0) == []
    dog.forget("a")
    dog.forget("never-seen")
    assert kinds(dog.observe("a", 9 * GiB, LIMIT, 1.1)) == ["over_limit"]


def test_unknown_limit_does_nothing():
    dog = Watchdog()
    assert dog.observe("lease-1", 9 * GiB, 0, 0.0) == []
    with pytest.raises(ValueError):
        dog.observe("lease-1", -1, LIMIT, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": "explode"},
        {"action": ""},
        {"warn_ratio": 0},
        {"warn_ratio": 1.5},
        {"warn_ratio": -0.1},
        {"warn_ratio": math.nan},
        {"grace_seconds": -1},
        {"grace_seconds": math.inf},
        {"grace_seconds": math.nan},
        {"grace_seconds": True},
    ],
)
def test_policy_validation(kwargs):
    with pytest.raises(ValueError):
        WatchdogPolicy(**kwargs)


def test_policy_edges_accepted():
    WatchdogPolicy(warn_ratio=1.0, grace_seconds=0, action="warn")
    dog = Watchdog(WatchdogPolicy(warn_ratio=1.0))
    assert kinds(dog.observe("lease-1", LIMIT, LIMIT, 0.0)) == ["near_limit"]
