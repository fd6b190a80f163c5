"""Run every benchmark and print one table of figures beside their baselines and targets.

    python benchmarks/run.py                 # tunnel --quick, placement, start, telemetry, ...: ~2.5 min on 2 cores
    python benchmarks/run.py --full          # tunnel's full run (and 5 start runs): ~5 min
    python benchmarks/run.py --only tunnel placement --out results/

Each benchmark runs as its own subprocess, one after the other (never in parallel: they measure
CPU), with ``--json``; its output goes to ``<out>/<name>.log`` and its figures to
``<out>/<name>.json`` (``--out`` keeps them; by default a temporary directory, removed). The targets
are read from ``shared/design/BASELINES.md`` ("Our targets"), so the table holds each figure to the
target written there; a benchmark's own idea of its target is not used.

Columns: figure | measured | baseline (measured in the same run) | ratio (measured ÷ baseline) |
target (from BASELINES.md) | met?. Ratio targets are held to the ratio, absolute ones (seconds, % of a
core) to the measured value. The exit status is 0 even when targets are missed (this is a report);
it is 1 when a benchmark failed to run (its row says FAILED and where its log is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINES = REPO.parent / "shared" / "design" / "BASELINES.md"
BENCHMARKS = ["placement", "start", "tunnel", "telemetry", "tenant_start", "fairshare", "panel_render", "upload"]

# Used only when BASELINES.md cannot be read (the table says so).
DEFAULT_TARGETS = {
    "start": ("≤", 1.15), "execute": ("≤", 1.10), "flood": ("≥", 0.90), "big": ("≥", 0.50),
    "latency": ("≤", 1.5), "cpu": ("≤", 1.0), "placement_time": ("≤", 0.5), "placement_devices": ("≤", 1.05),
    "tenant_start": ("≤", 1.05), "fair_critical": ("≤", 0.25), "fair_jain": ("≥", 0.95), "fair_decision": ("≤", 5.0),
}
# Which row of "Our targets" (its first cell starts with this) and which bound in its second cell.
TARGET_ROWS = {
    "start": ("vGPU kernel start", 0), "execute": ("execute round trip", 0), "flood": ("iopub flood", 0),
    "big": ("16 MiB output", 0), "latency": ("telemetry", 0), "cpu": ("telemetry", 1),
    "placement_time": ("placement", 0), "placement_devices": ("placement", 1),
    "tenant_start": ("a kernel under its principal's own Unix uid", 0),
    "fair_critical": ("fair share", 0), "fair_jain": ("fair share", 1), "fair_decision": ("quota / queue decision", 0),
}
UTILISATION_TARGET = ("≥", 1.0)  # "mean device utilisation ≥ FIFO's": a ratio, the row gives no number


def read_targets(path: Path) -> tuple[dict[str, tuple[str, float]], str]:
    """Targets by key from the "Our targets" table of BASELINES.md; (targets, where they came from)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return dict(DEFAULT_TARGETS), f"built-in defaults ({path} unreadable: {exc.strerror})"
    section = text.split("## Our targets", 1)[-1]
    rows: dict[str, list[tuple[str, float]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and not set(cells[1]) <= set("- "):
            rows[cells[0]] = [(op, float(num)) for op, num in re.findall(r"([≤≥])\s*([\d.]+)", cells[1])]
    targets, missing = {}, []
    for key, (prefix, index) in TARGET_ROWS.items():
        found = [bounds for name, bounds in rows.items() if name.startswith(prefix) and len(bounds) > index]
        if found:
            targets[key] = found[0][index]
        else:
            targets[key] = DEFAULT_TARGETS[key]
            missing.append(key)
    where = str(path) + (f" (not found there, defaults used: {', '.join(missing)})" if missing else "")
    return targets, where


@dataclass
class Line:
    figure: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: str


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip()


def judge(value: float | None, bound: tuple[str, float] | None) -> str:
    if bound is None:
        return ""
    if value is None or value != value:
        return "n/a"
    op, limit = bound
    return "yes" if (value <= limit if op == "≤" else value >= limit) else "NO"


def bound_text(bound: tuple[str, float] | None, suffix: str = "") -> str:
    return "(info)" if bound is None else f"{bound[0]} {bound[1]:g}{suffix}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---------------------------------------------------------------- one reader per benchmark's JSON


def lines_tunnel(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    out = []
    for f in data["figures"]:
        name = f["figure"]
        key = ("start" if name.startswith("start") else "execute" if name.startswith("execute")
               else "flood" if name.startswith("iopub") else "big" if "MiB" in name else None)
        if key is None or f.get("target") is None:
            continue  # figures shown for information only are in the tunnel's own log
        short = {"start": "start → ready (kernel_info)", "execute": "execute '1+1' round trip",
                 "flood": "iopub flood (stream msgs)", "big": "16 MiB output"}[key]
        unit = f["unit"]
        for path, value in (("worker", f["through"]), ("launcher", f.get("launcher"))):
            if value is None:
                continue
            r = ratio(value, f["direct"])
            out.append(Line(f"tunnel: {short}, through {path}", fmt(value, unit), fmt(f["direct"], unit) + " direct",
                            fmt(r), bound_text(targets[key], " ×"), judge(r, targets[key])))
    return out


def lines_placement(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    bp, ffd = data["binpack"], data["ffd"]
    t = bp["seconds"]
    placed_all = bp["placed"] == data["requests"]
    time_met = judge(t, targets["placement_time"])
    if not placed_all:
        time_met = f"NO ({bp['placed']:,} of {data['requests']:,} placed)"
    r = ratio(bp["devices_used"], ffd["devices_used"])
    return [
        Line(f"placement: {data['requests']:,} requests over {data['devices']:,} devices, time", fmt(t, "s"),
             fmt(ffd["seconds"], "s") + " FFD (offline)", fmt(ratio(t, ffd["seconds"])),
             bound_text(targets["placement_time"], " s"), time_met),
        Line("placement: devices used (online best-fit)", str(bp["devices_used"]),
             f"{ffd['devices_used']} FFD", fmt(r), bound_text(targets["placement_devices"], " ×"),
             judge(r, targets["placement_devices"])),
    ]


def lines_start(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    f = data["figures"][0]
    r = ratio(f["through"], f["direct"])
    return [Line("start → ready via Jupyter server: vgpu-small (POST → kernel_info_reply)", fmt(f["through"], "ms"),
                 fmt(f["direct"], "ms") + " python3", fmt(r), bound_text(targets["start"], " ×"),
                 judge(r, targets["start"]))]


def lines_telemetry(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    out = []
    for f in data["figures"]:
        name = f["figure"]
        key = None
        if f.get("target") is not None:
            key = "cpu" if "CPU" in name else "latency"
        unit = f["unit"]
        suffix = " %" if unit.startswith("%") else " s"
        out.append(Line(f"telemetry: {name.strip()}", fmt(f["measured"], unit),
                        f"{fmt(f['baseline'], unit)} {f['baseline_text']}", fmt(ratio(f["measured"], f["baseline"])),
                        bound_text(targets[key], suffix) if key else "(info)",
                        judge(f["measured"], targets[key]) if key else ""))
    return out


def lines_tenant_start(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    name = "start → ready as the tenant's uid ÷ as the worker's user (StartKernel → kernel_info_reply)"
    if "skipped" in data:
        return [Line(name, f"skipped: {data['skipped']}", "", "", bound_text(targets["tenant_start"], " ×"), "")]
    return [Line(name, fmt(data["tenant_ms"], "ms"), fmt(data["plain_ms"], "ms") + " worker's user",
                 fmt(data["ratio"]), bound_text(targets["tenant_start"], " ×"),
                 judge(data["ratio"], targets["tenant_start"]))]


def lines_fairshare(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    fifo, line = data["fifo"], data.get("line")
    day = (f"{data['users']} users, {data['days']} days of {data['hours']:g} h, {data['requests']:,} requests, "
           f"idle share {data.get('idle_share', 0):g}")
    if line is None:
        p95 = ", ".join(f"{q} {fmt(fifo['p95_wait_s'][q], 's')}" for q in ("critical", "high", "medium", "low"))
        return [Line(f"fair share ({day}): worker's line", f"not measured: {data.get('line_missing', '?')}",
                     f"FIFO p95 wait {p95}; Jain {fmt(fifo['jain_mean_wait'])}; "
                     f"utilisation {fmt(100 * fifo['utilisation'], '%')}", "",
                     bound_text(targets["fair_critical"], " ×"), "n/a")]
    out = []
    for qos in ("critical", "high", "medium", "low"):
        a, b = line["p95_wait_s"][qos], fifo["p95_wait_s"][qos]
        target = targets["fair_critical"] if qos == "critical" else None
        out.append(Line(f"fair share: p95 wait, QoS {qos} ({day})" if qos == "critical" else
                        f"fair share: p95 wait, QoS {qos}", fmt(a, "s"), fmt(b, "s") + " per-server FIFO",
                        fmt(ratio(a, b)), bound_text(target, " ×"), judge(ratio(a, b), target)))
    out.append(Line("fair share: Jain's index over users' mean waits (equal demand)", fmt(line["jain_mean_wait"]),
                    fmt(fifo["jain_mean_wait"]) + " FIFO", fmt(ratio(line["jain_mean_wait"], fifo["jain_mean_wait"])),
                    bound_text(targets["fair_jain"]), judge(line["jain_mean_wait"], targets["fair_jain"])))
    r = ratio(line["utilisation"], fifo["utilisation"])
    out.append(Line("fair share: mean VRAM utilisation of the pool", fmt(100 * line["utilisation"], "%"),
                    fmt(100 * fifo["utilisation"], "%") + " FIFO", fmt(r), bound_text(UTILISATION_TARGET, " ×"),
                    judge(r, UTILISATION_TARGET)))
    out.append(Line("fair share: idle lower-QoS kernels released for a waiting higher QoS",
                    f"{line.get('released_idle', 0):,}", "none (FIFO has no QoS release)", "", "", ""))
    for what in ("allocate", "release"):
        ms = data["decision_ms"][what]
        out.append(Line(f"line decision per {what}, 1,000 waiting (worst of medians)", fmt(ms, "ms"), "", "",
                        bound_text(targets["fair_decision"], " ms"), judge(ms, targets["fair_decision"])))
    if "qos_plan" in data["decision_ms"]:
        out.append(Line("QoS release plan per worker tick, 1,000 waiting, 200 leases (median)",
                        fmt(data["decision_ms"]["qos_plan"], "ms"), "", "", "(info)", ""))
    return out


def lines_panel_render(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    name = "vGPU panel, 200 in the pool"
    if "skipped" in data:
        return [Line(name, f"skipped: {data['skipped']}", "", "", "(info)", "")]
    what = f"{data['kernels']} real kernels, {data['leases'] - data['kernels']} leases"
    return [Line(f"{name}: page start → all listed ({what})", fmt(data["page_start_to_all_listed_ms"], "ms"),
                 "", "", "(info)", ""),
            Line(f"{name}: tab click → shown, charts drawn", fmt(data["open_to_charts_drawn_ms"], "ms"),
                 "", "", "(info)", ""),
            Line(f"{name}: frame time p95 / max while samples stream ({data['renders_while_streaming']} renders "
                 f"in {data['stream_s']} s)", f"{fmt(data['frame_ms_p95'])} / {fmt(data['frame_ms_max'], 'ms')}",
                 "16.7 ms (60 fps)", "", "(info)", ""),
            Line(f"{name}: long tasks (> 50 ms) while streaming", str(data["long_tasks_while_streaming"]),
                 "", "", "(info)", "")]


def lines_upload(data: dict[str, Any], targets: dict[str, tuple[str, float]]) -> list[Line]:
    out = []
    for label, by_window in data["upload_mib_s"].items():
        a, b = by_window["fixed"], by_window["probing"]
        out.append(Line(f"upload (PutFile {data['upload_mib']} MiB), {label}: worker's fixed "
                        f"{data['window_mib']:g} MiB window",
                        fmt(a, "MiB/s"), fmt(b, "MiB/s") + " gRPC's probing windows", fmt(ratio(a, b)), "(info)", ""))
    a, b = data["flood_growth_mib"]["fixed"], data["flood_growth_mib"]["probing"]
    out.append(Line(f"worker memory held by {data['flood_calls']} refused unauthenticated {data['flood_body_mib']} MiB "
                    f"calls (worst of {data['runs']})", fmt(a, "MiB"), fmt(b, "MiB") + " probing windows",
                    fmt(ratio(a, b)), "(info)", ""))
    return out


READERS = {"tunnel": lines_tunnel, "placement": lines_placement, "start": lines_start, "telemetry": lines_telemetry,
           "tenant_start": lines_tenant_start, "fairshare": lines_fairshare, "panel_render": lines_panel_render,
           "upload": lines_upload}


def command(name: str, args: argparse.Namespace, json_path: Path) -> list[str]:
    script = [sys.executable, str(HERE / f"{name}.py"), "--json", str(json_path)]
    if name == "tunnel" and not args.full:
        script.append("--quick")
    if name in ("start", "tenant_start"):
        script += ["--runs", "5" if args.full else "3"]
    if name == "panel_render" and args.full:
        script += ["--kernels", "100"]
    return script


def render(lines: list[Line]) -> str:
    header = Line("figure", "measured", "baseline (same run)", "ratio", "target", "met?")
    rows = [header, *lines]
    cols = list(vars(header))
    widths = {c: max(len(getattr(r, c)) for r in rows) for c in cols}

    def one(r: Line) -> str:
        return "| " + " | ".join(getattr(r, c).ljust(widths[c]) for c in cols) + " |"

    return "\n".join([one(header), "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|",
                      *(one(r) for r in lines)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="tunnel's full run instead of --quick; 5 start runs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--out", metavar="DIR", help="keep every benchmark's log and JSON here")
    parser.add_argument("--json", metavar="PATH", help="write the table's rows as JSON too")
    parser.add_argument("--baselines", type=Path, default=BASELINES, help="the BASELINES.md to take targets from")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each benchmark (s)")
    args = parser.parse_args()

    targets, source = read_targets(args.baselines)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tfbench-run-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[Line] = []
    failed: list[str] = []
    durations: dict[str, float] = {}
    started = time.monotonic()
    try:
        for name in args.only or BENCHMARKS:
            json_path, log_path = out_dir / f"{name}.json", out_dir / f"{name}.log"
            argv = command(name, args, json_path)
            print(f"running {name}: {' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}",
                  file=sys.stderr, flush=True)
            t0 = time.monotonic()
            with open(log_path, "w") as log:
                try:
                    rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=args.timeout, cwd=REPO).returncode
                except subprocess.TimeoutExpired:
                    rc = -1
            durations[name] = time.monotonic() - t0
            print(f"  {name}: exit {rc} in {durations[name]:.0f} s", file=sys.stderr, flush=True)
            try:
                data = json.loads(json_path.read_text())
                lines += READERS[name](data, targets)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                failed.append(name)
                keep = f" (log: {log_path})" if args.out else ""
                lines.append(Line(f"{name}: FAILED (exit {rc}{', timed out' if rc == -1 else ''}; {exc!r:.60}){keep}",
                                  "", "", "", "", "NO"))
                if not args.out:
                    print(f"--- {name} log (last 3000 characters):\n{log_path.read_text(errors='replace')[-3000:]}",
                          file=sys.stderr)
                continue
            if rc != 0:
                failed.append(name)
                lines.append(Line(f"{name}: exit status {rc} (see its log)", "", "", "", "", "NO"))
    finally:
        if not args.out:
            shutil.rmtree(out_dir, ignore_errors=True)
    total = time.monotonic() - started

    print()
    print(render(lines))
    print()
    print(f"targets from {source}")
    print("ratio = measured ÷ baseline; ratio targets (×) are held to the ratio, others (s, %) to the measured value")
    print("runs: " + ", ".join(f"{n} {s:.0f} s" for n, s in durations.items()) + f"; total {total:.0f} s")
    if args.out:
        print(f"logs and JSON: {out_dir}")
    missed = [line.figure for line in lines if line.met.startswith("NO")]
    if missed:
        print(f"targets missed ({len(missed)}): " + "; ".join(missed))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [vars(line) for line in lines], "targets_from": source,
                                               "durations": durations, "failed": failed}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    sys.exit(main())
