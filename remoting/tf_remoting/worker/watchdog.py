"""The over-limit policy, as a plain state machine.

The server feeds it each lease's measured VRAM use and carries out the actions it returns:
``near_limit`` (a warning event), ``over_limit`` (an event, at once), then ``interrupt`` and
``kill`` if the lease stays over its limit for ``grace_seconds`` each, as far as the policy allows.
Every action is emitted once per excursion; dropping back under the limit starts over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tf_remoting.quantities import format_bytes

__all__ = ["ACTIONS", "WatchdogPolicy", "WatchdogAction", "Watchdog"]

ACTIONS = ("warn", "interrupt", "kill")

# Escalation stages of one lease, in order.
_NEAR, _OVER, _INTERRUPTED, _KILLED = 1, 2, 3, 4


@dataclass(frozen=True)
class WatchdogPolicy:
    """How far the watchdog escalates: ``action`` is "warn", "interrupt" or "kill"."""

    warn_ratio: float = 0.9
    grace_seconds: float = 5.0
    action: str = "kill"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"watchdog action {self.action!r} is not one of {', '.join(ACTIONS)}")
        ratio = self.warn_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"watchdog warn_ratio {ratio!r} must be more than 0 and at most 1, e.g. 0.9")
        grace = self.grace_seconds
        if (
            isinstance(grace, bool)
            or not isinstance(grace, (int, float))
            or not (math.isfinite(grace) and grace >= 0)
        ):
            raise ValueError(f"watchdog grace_seconds {grace!r} must be a number of seconds, 0 or more")


@dataclass(frozen=True)
class WatchdogAction:
    """What to do about one lease: kind is "near_limit", "over_limit", "interrupt" or "kill"."""

    kind: str
    lease_id: str
    message: str


@dataclass
class _State:
    stage: int
    since: float  # when the current stage began


class Watchdog:
    """Turns VRAM samples into actions, following a ``WatchdogPolicy``."""

    def __init__(self, policy: WatchdogPolicy | None = None) -> None:
        self.policy = policy or WatchdogPolicy()
        self._states: dict[str, _State] = {}

    def observe(self, lease_id: str, used: int, limit: int, now: float) -> list[WatchdogAction]:
        """Feed one sample (bytes used, limit in bytes, unix seconds); returns the actions now due.

        A limit of 0 means none is known, and nothing is done. Escalation happens on a later sample
        still over the limit, ``grace_seconds`` after the previous step.
        """
        if used < 0 or limit < 0:
            raise ValueError(f"used ({used}) and limit ({limit}) must not be negative")
        if limit == 0:
            return []
        policy = self.policy
        state = self._states.get(lease_id)
        if used < policy.warn_ratio * limit:  # the common case, every sample of every lease: no text
            if state is not None:
                del self._states[lease_id]
            return []
        over = f"{format_bytes(used)}, over its {format_bytes(limit)} VRAM limit"

        if used > limit:
            if state is None or state.stage < _OVER:
                self._states[lease_id] = _State(_OVER, now)
                return [
                    WatchdogAction(
                        "over_limit", lease_id, f"lease {lease_id} uses {over}; {self._next_step()}"
                    )
                ]
            if now - state.since < policy.grace_seconds:
                return []
            waited = f"{policy.grace_seconds:g} s"
            if state.stage == _OVER and policy.action in ("interrupt", "kill"):
                self._states[lease_id] = _State(_INTERRUPTED, now)
                message = f"lease {lease_id} still uses {over} after {waited}: interrupting its kernels."
                return [WatchdogAction("interrupt", lease_id, message)]
            if state.stage == _INTERRUPTED and policy.action == "kill":
                self._states[lease_id] = _State(_KILLED, now)
                message = (
                    f"lease {lease_id} still uses {over} {waited} after the interrupt: killing its kernels."
                )
                return [WatchdogAction("kill", lease_id, message)]
            return []

        if used >= policy.warn_ratio * limit:
            if state is None:
                self._states[lease_id] = _State(_NEAR, now)
                message = (
                    f"lease {lease_id} uses {format_bytes(used)} of its {format_bytes(limit)} VRAM limit "
                    f"({100 * used / limit:.0f} %); "
                    "free memory or the kernel may run out."
                )
                return [WatchdogAction("near_limit", lease_id, message)]
            if state.stage > _NEAR:  # back under the limit: escalation starts over, no new warning
                self._states[lease_id] = _State(_NEAR, now)
            return []

        self._states.pop(lease_id, None)
        return []

    def _next_step(self) -> str:
        grace = f"{self.policy.grace_seconds:g} s"
        if self.policy.action == "warn":
            return "free memory, or the kernel may fail to allocate."
        if self.policy.action == "interrupt":
            return f"its kernels will be interrupted if it stays over for {grace}."
        return f"its kernels will be interrupted, then killed, if it stays over for {grace} each."

    def forget(self, lease_id: str) -> None:
        """Drop a lease's state (released, expired, or its kernels are gone)."""
        self._states.pop(lease_id, None)
