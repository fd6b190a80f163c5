"""The last minutes of each kernel's usage, for the panel's charts (plain Python).

The Jupyter server keeps, per kernel of its own, the samples the workers' Watch streams send:
VRAM used, the slice's VRAM limit and utilization (percent of the whole device, the one
definition used everywhere), at most one point per ``spacing`` seconds, for ``window`` seconds.
A lease over several devices is one point: VRAM summed, utilization the busiest device's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["History", "Point"]

WINDOW_S = 600.0
SPACING_S = 1.0


@dataclass(frozen=True)
class Point:
    t: float  # unix seconds (the worker's sample time)
    vram_used: int
    vram_limit: int
    utilization: float

    def to_json(self) -> dict[str, float | int]:
        return {"t": self.t, "vram_used": self.vram_used, "vram_limit": self.vram_limit,
                "utilization": self.utilization}


class History:
    def __init__(self, window: float = WINDOW_S, spacing: float = SPACING_S) -> None:
        self.window, self.spacing = window, spacing
        self._points: dict[str, deque[Point]] = {}

    def add(self, kernel_id: str, point: Point) -> None:
        points = self._points.setdefault(kernel_id, deque())
        if points and point.t - points[-1].t < self.spacing:
            return  # one point a second is enough for a 10-minute chart
        points.append(point)
        while points and points[0].t < point.t - self.window:
            points.popleft()

    def points(self, kernel_id: str, now: float | None = None) -> list[Point]:
        """Oldest first; only those within the window of ``now`` (default: the latest point)."""
        points = self._points.get(kernel_id)
        if not points:
            return []
        end = points[-1].t if now is None else now
        return [p for p in points if p.t >= end - self.window]

    def forget(self, kernel_id: str) -> None:
        self._points.pop(kernel_id, None)

    def __contains__(self, kernel_id: object) -> bool:
        return kernel_id in self._points
