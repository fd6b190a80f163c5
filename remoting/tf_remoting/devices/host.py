"""The host device: the machine's CPU and RAM, leased like a GPU when there is none (dev, CI, Binder).

Memory of a set of processes (a lease's kernels and what they started): a lone process counts its
resident set (RSS, from /proc/<pid>/stat: microseconds); a set of several counts each process's
proportional set size (PSS, from /proc/<pid>/smaps_rollup), where a page shared by n processes
counts 1/n in each. Summed RSS would count the pages a forked child shares with its parent once per
child (a 195 MiB kernel with four DataLoader-style workers measured 951 MiB). PSS costs a walk of
the process's page tables (about 1 ms for a process with 200 MiB resident), so it is read only
where a kernel has children (the idle 64-kernel sample keeps its cost), and each process's is
read afresh every ``PSS_REFRESH_S`` seconds: in between, its last PSS plus how much its RSS grew
since stands for it (new memory is the process's own, so growth shows at once; a page a child
copies on write shows at the next refresh).
Where the kernel runs in its own cgroup (``memory_enforcement == "cgroup"``) the kernel's memory
limit is the cgroup's own figure and enforced by Linux, not by this sample.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import NamedTuple

import psutil

from .base import DeviceBackend, DeviceError, DeviceInfo, DeviceSample, Usage
from .cgroup import cgroup_v2_memory_root
from .procfs import ProcStatReader, read_stat, rollup_pss, stat_fields

_EVICT_AFTER_S = 60.0  # forget processes nobody asked about for this long
_LINUX = sys.platform.startswith("linux")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if _LINUX else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if _LINUX else 4096
PSS_REFRESH_S = 5.0


class _Pss(NamedTuple):
    ident: float  # start time of the process measured
    pss: int
    rss: int  # its RSS when the PSS was read
    at: float


class _Seen(NamedTuple):
    ident: float  # start time: tells a reused pid from the process seen before
    cpu_s: float
    at: float  # time.monotonic() of the reading


def _read_proc_stat(pid: int, reader: ProcStatReader | None = None) -> tuple[float, float, int] | None:
    """One read of /proc/<pid>/stat: (start time in ticks, CPU seconds, RSS bytes).

    About a tenth of the cost of psutil's oneshot() here (a twentieth with the file kept open by
    ``reader``), which matters at 64 kernels a second.
    """
    if reader is not None:
        stat = reader.read(pid)
        if stat is None:
            return None
    else:
        stat = read_stat(pid)
        if stat is None:
            return None
    f = stat_fields(stat)
    if f is None or f[0] == b"Z":  # cut short by an exit; a zombie holds no memory, runs no more
        return None
    # Fields 14/15 utime/stime, 22 starttime, 24 rss (pages): f[i] is field i + 3.
    return float(f[19]), (int(f[11]) + int(f[12])) / _CLK_TCK, int(f[21]) * _PAGE


class HostBackend(DeviceBackend):
    """One device, kind "host": RAM stands in for VRAM and logical CPUs for multiprocessors."""

    name = "host"

    def __init__(self) -> None:
        self._cpus = psutil.cpu_count(logical=True) or 1
        self._uuid = f"host-{socket.gethostname()}"
        enforcement = "cgroup" if cgroup_v2_memory_root() is not None else "watchdog"
        self._info = DeviceInfo(
            uuid=self._uuid,
            name=f"host device (CPU/RAM, {self._cpus} cores)",
            kind="host",
            index=0,
            vram_total=psutil.virtual_memory().total,
            multiprocessors=self._cpus,
            modes=("host",),
            memory_enforcement=enforcement,
        )
        self._lock = threading.Lock()
        # CPU use is a delta between two readings, so the previous reading of each pid is kept.
        self._seen: dict[int, _Seen] = {}
        self._pss_seen: dict[int, _Pss] = {}  # last PSS of processes in multi-process sets
        self._procs: dict[int, psutil.Process] = {}  # reused between readings where not on Linux
        self._stat = ProcStatReader()  # Linux: each measured process's stat file, kept open
        self._rollup = ProcStatReader(name="smaps_rollup")  # and, in multi-process sets, its PSS
        self._last_sweep = time.monotonic()
        self._last_cpu = self._cpu_busy_total()

    def devices(self) -> list[DeviceInfo]:
        return [self._info]

    @staticmethod
    def _cpu_busy_total() -> tuple[float, float]:
        # Our own delta instead of psutil.cpu_percent(), whose state is global to the process.
        t = psutil.cpu_times()
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total - idle, total

    def sample_devices(self) -> list[DeviceSample]:
        vm = psutil.virtual_memory()
        with self._lock:
            busy, total = self._cpu_busy_total()
            d_busy, d_total = busy - self._last_cpu[0], total - self._last_cpu[1]
            self._last_cpu = (busy, total)
        util = 100.0 * d_busy / d_total if d_total > 0 else 0.0
        return [DeviceSample(uuid=self._uuid, vram_used=vm.total - vm.available,
                             utilization=min(100.0, max(0.0, util)))]

    def usage(self, device_uuid: str, pids: set[int]) -> Usage:
        return self.usages([(device_uuid, pids)])[0]

    def usages(self, requests: list[tuple[str, set[int]]]) -> list[Usage]:
        for device_uuid, _ in requests:
            if device_uuid != self._uuid:
                raise DeviceError(f"no device {device_uuid!r} here; the host device is {self._uuid!r}")
        now = time.monotonic()
        out = []
        with self._lock:  # one lock and one clock reading for the whole sample
            seen, read = self._seen, self._read
            for _, pids in requests:
                memory: dict[int, tuple[float, int]] = {}  # pid -> (identity, RSS)
                cpu = 0.0  # percent of one CPU, summed
                for pid in pids:
                    reading = read(pid)
                    if reading is None:  # gone, or not ours to read
                        seen.pop(pid, None)
                        continue
                    ident, cpu_s, pid_rss = reading
                    memory[pid] = (ident, pid_rss)
                    last = seen.get(pid)
                    # A new identity is a reused pid: a new process, whose first reading is a baseline.
                    if last is not None and last.ident == ident and now > last.at:
                        cpu += max(0.0, 100.0 * (cpu_s - last.cpu_s) / (now - last.at))
                    seen[pid] = _Seen(ident, cpu_s, now)
                if len(memory) > 1:  # shared pages once, not once per process (see the module's text)
                    used = sum(self._proportional(pid, ident, rss, now) for pid, (ident, rss) in memory.items())
                else:
                    used = sum(rss for _, rss in memory.values())
                out.append(Usage(vram_used=used, utilization=min(100.0, cpu / self._cpus)))
            if now - self._last_sweep > _EVICT_AFTER_S / 2:
                self._seen = {p: e for p, e in self._seen.items() if now - e.at < _EVICT_AFTER_S}
                self._procs = {p: proc for p, proc in self._procs.items() if p in self._seen}
                self._stat.keep_only(self._seen)
                self._rollup.keep_only(self._seen)
                self._pss_seen = {p: e for p, e in self._pss_seen.items() if p in self._seen}
                self._last_sweep = now
        return out

    def _proportional(self, pid: int, ident: float, rss: int, now: float) -> int:
        """The process's PSS: read every PSS_REFRESH_S, else the last one plus its RSS growth since."""
        last = self._pss_seen.get(pid)
        if last is not None and last.ident == ident and now - last.at < PSS_REFRESH_S:
            return max(0, last.pss + rss - last.rss)
        pss = self._pss(pid)
        if pss is None:
            self._pss_seen.pop(pid, None)
            return rss
        self._pss_seen[pid] = _Pss(ident, pss, rss, now)
        return pss

    def _pss(self, pid: int) -> int | None:
        """The process's PSS in bytes; None where it cannot be read (then its RSS counts)."""
        if _LINUX:
            rollup = self._rollup.read(pid)
            return None if rollup is None else rollup_pss(rollup)
        proc = self._procs.get(pid)
        try:
            return int(getattr((proc or psutil.Process(pid)).memory_full_info(), "pss", 0)) or None
        except psutil.Error:
            return None

    def _read(self, pid: int) -> tuple[float, float, int] | None:
        """(identity, CPU seconds, RSS bytes) of one process, or None when it cannot be read."""
        if _LINUX:
            return _read_proc_stat(pid, self._stat)
        proc = self._procs.get(pid)
        try:
            if proc is None or not proc.is_running():
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                return proc.create_time(), times.user + times.system, proc.memory_info().rss
        except psutil.Error:  # gone, zombie, or another user's process
            self._procs.pop(pid, None)
            return None

    def close(self) -> None:
        with self._lock:
            self._seen.clear()
            self._pss_seen.clear()
            self._procs.clear()
            self._stat.close()
            self._rollup.close()
