"""/proc/<pid>/stat of chosen processes, read every second at the least cost Linux allows.

A reader keeps each process's stat file open between reads: ``pread`` on an open file costs about
half of open + read + close, and an open /proc/<pid> file follows one process, not one pid: once
that process is gone every read fails (ESRCH), even when its pid was given to another process
meanwhile. How many files stay open is bounded (a share of RLIMIT_NOFILE); past the bound a pid is
opened, read and closed each time, which is slower but just as correct when the caller compares
start times.
"""

from __future__ import annotations

import os
import sys
import threading

LINUX = sys.platform.startswith("linux")


def default_max_open() -> int:
    """An eighth of the soft open-files limit, at most 1024: room for sockets and everything else."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(0, min(1024, soft // 8))


def stat_fields(stat: bytes) -> list[bytes] | None:
    """The fields after "pid (comm)": [0] is the state, [i] is field i + 3 of proc(5).

    None when the text was cut short (the process exited while it was read).
    """
    # comm may hold spaces and parentheses, so cut at the last ")".
    fields = stat[stat.rfind(b")") + 2:].split(None, 22)
    return fields if len(fields) >= 22 else None


class ProcStatReader:
    """Reads /proc/<pid>/stat; thread-safe. Call ``keep_only`` or ``forget`` as pids stop mattering."""

    def __init__(self, max_open: int | None = None, proc: str = "/proc") -> None:
        self.max_open = default_max_open() if max_open is None else max_open
        self._proc = proc
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, pid: int) -> bytes | None:
        """The stat text of the process with this pid, or None when it is gone (or unreadable).

        With a file kept open since an earlier read, None also means that the process read then is
        gone, whatever now has its pid; the next read opens the pid afresh.
        """
        with self._lock:
            fd = self._fds.get(pid)
            if fd is not None:
                try:
                    data = os.pread(fd, 4096, 0)
                except OSError:
                    data = b""
                if data:
                    return data
                del self._fds[pid]
                os.close(fd)
                return None
            try:
                fd = os.open(f"{self._proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if data and len(self._fds) < self.max_open:
                self._fds[pid] = fd
            else:
                os.close(fd)
            return data or None

    def forget(self, pid: int) -> None:
        """Close the pid's file, if kept: the next read opens the pid afresh."""
        with self._lock:
            fd = self._fds.pop(pid, None)
            if fd is not None:
                os.close(fd)

    def keep_only(self, pids: set[int] | dict[int, object]) -> None:
        """Close the files of every pid not in ``pids``."""
        with self._lock:
            for pid in [p for p in self._fds if p not in pids]:
                os.close(self._fds.pop(pid))

    @property
    def open_files(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
