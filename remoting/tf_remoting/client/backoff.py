"""How long to wait before the next reconnect, and when an outage has lasted too long.

One policy for every loop that reconnects to a worker (a kernel's Channels stream, the Jupyter
side's Watch stream): exponential backoff with jitter, a ceiling, and an optional limit on how long
one outage may last. The outage clock starts at the first failure and is reset by `succeeded()`,
so short outages spaced far apart never add up to a long one.

    backoff = Backoff(initial=0.2, factor=2, max_delay=2, give_up_after=60)
    while True:
        try:
            await connect()
            backoff.succeeded()
            ...
        except ConnectionError:
            if backoff.exhausted():
                raise OutageTooLong(...)
            await backoff.wait()

Plain Python (no grpc, no tornado): the clock is injectable so the policy is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Reconnect delays: `initial`, times `factor` after each failure, at most `max_delay`, each one
    spread by +/- `jitter` (a fraction) so that many clients cut at once do not come back in step.
    `give_up_after` (seconds of one continuous outage, None = never) is measured from the first
    failure since the last `succeeded()`."""

    def __init__(self, initial: float = 0.2, factor: float = 2.0, max_delay: float = 5.0, jitter: float = 0.2,
                 give_up_after: float | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        if initial <= 0 or factor < 1 or max_delay < initial or not 0 <= jitter < 1:
            raise ValueError(f"Backoff needs 0 < initial <= max_delay, factor >= 1 and 0 <= jitter < 1 "
                             f"(got initial={initial}, factor={factor}, max_delay={max_delay}, jitter={jitter})")
        self.initial = initial
        self.factor = factor
        self.max_delay = max_delay
        self.jitter = jitter
        self.give_up_after = give_up_after
        self._clock = clock
        self._rng = rng
        self._attempt = 0
        self._down_since: float | None = None

    @property
    def down_since(self) -> float | None:
        """When the current outage began (clock time), or None while connected."""
        return self._down_since

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._attempt

    def failed(self) -> bool:
        """Note one failed attempt; True when it is the first of a new outage."""
        first = self._down_since is None
        if first:
            self._down_since = self._clock()
        self._attempt += 1
        return first

    def succeeded(self) -> None:
        """A connection really worked: the next failure starts a new outage, with short delays again."""
        self._attempt = 0
        self._down_since = None

    def outage(self) -> float:
        """Seconds the current outage has lasted (0 while connected)."""
        return 0.0 if self._down_since is None else self._clock() - self._down_since

    def exhausted(self) -> bool:
        """True when the current outage has lasted longer than `give_up_after`."""
        return self.give_up_after is not None and self.outage() > self.give_up_after

    def next_delay(self) -> float:
        """The delay before the next attempt (after `failures` failures), jitter included."""
        exponent = max(0, self._attempt - 1)
        # cap the exponent: factor ** 1000 would overflow a float
        base = self.initial * self.factor ** min(exponent, 64)
        base = min(base, self.max_delay)
        spread = base * self.jitter * (2 * self._rng() - 1)
        return max(0.0, base + spread)

    async def wait(self) -> None:
        """Sleep for `next_delay()`, but never past the give-up point by more than a moment."""
        delay = self.next_delay()
        if self.give_up_after is not None and self._down_since is not None:
            left = self.give_up_after - self.outage()
            delay = min(delay, max(0.0, left) + 0.01)
        await asyncio.sleep(delay)
