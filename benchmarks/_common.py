"""Helpers shared by the benchmarks: statistics, the machine and versions, the result table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def versions(*dists: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in dists:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


@dataclass
class Row:
    """One figure: `direct` and `through` in `unit`; ratio = through / direct.

    `better` says which way is good ("lower" for times, "higher" for rates); `target` is the bound
    on the ratio (≤ for "lower", ≥ for "higher"), or None for a figure shown for information.
    """

    figure: str
    unit: str
    direct: float
    through: float
    better: str = "lower"
    target: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.through / self.direct if self.direct else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.better == "lower" else self.ratio >= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "(info)"
        return f"{'≤' if self.better == 'lower' else '≥'} {self.target:.2f}"


def fmt(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    header = ["figure", "direct", "through worker", "ratio", "target", "met?"]
    body = []
    for r in rows:
        met = {None: "", True: "yes", False: "NO"}[r.met]
        body.append([r.figure, f"{fmt(r.direct)} {r.unit}", f"{fmt(r.through)} {r.unit}",
                     f"{r.ratio:.3f}", r.target_text(), met])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def write_json(path: str | Path, rows: list[Row], **extra: Any) -> None:
    data = {
        **extra,
        "figures": [{**asdict(r), "ratio": r.ratio, "met": r.met} for r in rows],
        "argv": sys.argv,
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
