"""Helpers shared by the benchmarks: statistics, the machine and versions, the result table, a worker and server."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
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

    `launcher`, when given, is a second path measured against the same `direct` baseline
    (launcher_ratio = launcher / direct) and held to the same target.
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
    launcher: float | None = None

    @property
    def ratio(self) -> float:
        return self.through / self.direct if self.direct else float("nan")

    @property
    def launcher_ratio(self) -> float | None:
        if self.launcher is None:
            return None
        return self.launcher / self.direct if self.direct else float("nan")

    def _meets(self, ratio: float | None) -> bool | None:
        if self.target is None or ratio is None:
            return None
        return ratio <= self.target if self.better == "lower" else ratio >= self.target

    @property
    def met(self) -> bool | None:
        return self._meets(self.ratio)

    @property
    def launcher_met(self) -> bool | None:
        return self._meets(self.launcher_ratio)

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
    """Markdown table; with a `launcher` figure on any row, its value and ratio get two more columns
    and "met?" reads "worker / launcher"."""
    words = {None: "", True: "yes", False: "NO"}
    with_launcher = any(r.launcher is not None for r in rows)
    header = ["figure", "direct", "through worker", "ratio"]
    if with_launcher:
        header += ["through launcher", "ratio"]
    header += ["target", "met? (worker / launcher)" if with_launcher else "met?"]
    body = []
    for r in rows:
        cells = [r.figure, f"{fmt(r.direct)} {r.unit}", f"{fmt(r.through)} {r.unit}", f"{r.ratio:.3f}"]
        met = words[r.met]
        if with_launcher:
            lr = r.launcher_ratio
            cells += ["–" if r.launcher is None else f"{fmt(r.launcher)} {r.unit}",
                      "–" if lr is None else f"{lr:.3f}"]
            if r.target is not None:
                met = f"{words[r.met]} / {words[r.launcher_met] or '–'}"
        body.append([*cells, r.target_text(), met])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def write_json(path: str | Path, rows: list[Row], **extra: Any) -> None:
    data = {
        **extra,
        "figures": [{**asdict(r), "ratio": r.ratio, "met": r.met, "launcher_ratio": r.launcher_ratio,
                     "launcher_met": r.launcher_met} for r in rows],
        "argv": sys.argv,
    }
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def with_worker_and_server(worker_args: list[str], run: Callable[[Any, Any], Awaitable[Any]], timeout: float,
                           settings: dict[str, Any] | None = None) -> Any:
    """Start a worker (host device) and a Jupyter server using it, run ``run(worker, server)`` within
    ``timeout`` s, print both logs' tails if it fails, and stop both."""
    from tf_jupyter.pytest_plugin import JupyterServerProcess
    from tf_remoting.pytest_plugin import WorkerProcess

    worker = WorkerProcess(worker_args)
    server = None
    try:
        worker.start()
        server = JupyterServerProcess(workers=[worker], settings=settings).start()
        return asyncio.run(asyncio.wait_for(run(worker, server), timeout))
    except BaseException:
        print(f"worker log:\n{worker.log()[-3000:]}", file=sys.stderr, flush=True)
        if server is not None:
            print(f"server log:\n{server.log()[-3000:]}", file=sys.stderr, flush=True)
        raise
    finally:
        if server is not None:
            server.cleanup()
        worker.cleanup()
