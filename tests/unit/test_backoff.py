"""The reconnect policy: growing delays with jitter, a ceiling, and an outage clock that a success resets."""

from __future__ import annotations

import time

import pytest

from tf_remoting.client.backoff import Backoff


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_by_factor_up_to_the_ceiling() -> None:
    backoff = Backoff(initial=0.5, factor=2, max_delay=3, jitter=0, rng=lambda: 0.5)
    delays = []
    for _ in range(6):
        backoff.failed()
        delays.append(backoff.next_delay())
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jitter_spreads_each_delay_within_its_fraction() -> None:
    low = Backoff(initial=1, max_delay=10, jitter=0.25, rng=lambda: 0.0)
    high = Backoff(initial=1, max_delay=10, jitter=0.25, rng=lambda: 0.999999)
    for b in (low, high):
        b.failed()
    assert low.next_delay() == pytest.approx(0.75)
    assert high.next_delay() == pytest.approx(1.25, abs=1e-5)


def test_many_failures_do_not_overflow() -> None:
    backoff = Backoff(initial=0.1, factor=10, max_delay=2, jitter=0)
    for _ in range(5000):
        backoff.failed()
    assert backoff.next_delay() == 2


def test_outage_clock_starts_at_first_failure_and_gives_up_after_the_limit() -> None:
    clock = Clock()
    backoff = Backoff(give_up_after=3, clock=clock)
    assert backoff.outage() == 0 and not backoff.exhausted()
    assert backoff.failed() is True  # first failure: a new outage
    clock.now += 2
    assert backoff.failed() is False
    assert backoff.outage() == 2 and not backoff.exhausted()
    clock.now += 1.5
    assert backoff.exhausted()


def test_success_resets_the_outage_clock_and_the_delays() -> None:
    """Defect 10: short outages spaced further apart than the limit never add up to a long one."""
    clock = Clock()
    backoff = Backoff(initial=0.2, factor=2, max_delay=5, jitter=0, give_up_after=3, clock=clock)
    for _ in range(3):
        backoff.failed()
        backoff.failed()
        clock.now += 2  # a 2 s outage, shorter than the limit
        assert not backoff.exhausted()
        backoff.succeeded()
        assert backoff.down_since is None and backoff.failures == 0
        clock.now += 10  # connected for longer than the limit
        assert not backoff.exhausted()
    backoff.failed()
    assert backoff.next_delay() == 0.2  # short delays again after a success
    assert backoff.outage() == 0


def test_never_gives_up_without_a_limit() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock)
    backoff.failed()
    clock.now += 1e6
    assert not backoff.exhausted()


async def test_wait_sleeps_no_longer_than_the_time_left_before_giving_up() -> None:
    backoff = Backoff(initial=5, max_delay=5, jitter=0, give_up_after=0.1)
    backoff.failed()
    started = time.monotonic()
    await backoff.wait()
    assert time.monotonic() - started < 1.0
    assert backoff.exhausted()


def test_bad_settings_are_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="initial <= max_delay"):
        Backoff(initial=2, max_delay=1)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
