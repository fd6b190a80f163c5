"""Chosen processes, looked at every second at the least cost Linux allows.

``PidWatch`` says whether processes still run: a pidfd each, all polled with one poll().

A ``ProcStatReader`` reads their /proc/<pid>/stat. It keeps each process's stat file open between
reads: ``pread`` on an open file costs about half of open + read + close, and an open /proc/<pid>
file follows one process, not one pid: once that process is gone every read fails (ESRCH), even
when its pid was given to another process meanwhile.

How many files stay open is bounded (a share of RLIMIT_NOFILE); past the bound a pid is opened,
read and closed each time (or, for PidWatch, left to the caller), which is slower but just as
correct when the caller compares start times.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Collection

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


def rollup_pss(rollup: bytes) -> int | None:
    """Bytes of the "Pss:" line of a /proc/<pid>/smaps_rollup text, or None when it has none."""
    at = rollup.find(b"\nPss:")
    if at < 0:
        return None
    try:
        return int(rollup[at + 5:rollup.index(b"kB", at)]) * 1024
    except ValueError:
        return None


def stat_fields(stat: bytes) -> list[bytes] | None:
    """The fields after "pid (comm)": [0] is the state, [i] is field i + 3 of proc(5).

    None when the text was cut short (the process exited while it was read).
    """
    # comm may hold spaces and parentheses, so cut at the last ")".
    fields = stat[stat.rfind(b")") + 2:].split(None, 22)
    return fields if len(fields) >= 22 else None


def read_stat(pid: int) -> bytes | None:
    """/proc/<pid>/stat read once (open, read, close), or None when the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcStatReader:
    """Reads /proc/<pid>/stat (or another per-process file: ``name``, e.g. "smaps_rollup"). Not
    thread-safe: its owner serializes the calls.

    Call ``keep_only`` or ``forget`` as pids stop mattering.
    """

    def __init__(self, max_open: int | None = None, proc: str = "/proc", name: str = "stat") -> None:
        self.max_open = default_max_open() if max_open is None else max_open
        self._proc = proc
        self._name = name
        self._fds: dict[int, int] = {}

    def read(self, pid: int) -> bytes | None:
        """The stat text of the process with this pid, or None when it is gone (or unreadable).

        With a file kept open since an earlier read, None also means that the process read then is
        gone, whatever now has its pid; the next read opens the pid afresh.
        """
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
            fd = os.open(f"{self._proc}/{pid}/{self._name}", os.O_RDONLY | os.O_CLOEXEC)
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
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def keep_only(self, pids: Collection[int]) -> None:
        """Close the files of every pid not in ``pids``."""
        for pid in [p for p in self._fds if p not in pids]:
            os.close(self._fds.pop(pid))

    @property
    def open_files(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class PidWatch:
    """Whether chosen processes still run, through a pidfd each (Linux 5.3+). Not thread-safe.

    A pidfd follows one process, not a pid, and turns readable once that process has exited
    (a zombie included), so a reused pid never passes for it. ``exited()`` answers for every
    watched process with one poll(). ``watch`` returns False where pidfds are not available
    (another OS, an older kernel, a seccomp filter) or past ``max_open``: the caller then asks
    /proc itself.
    """

    def __init__(self, max_open: int | None = None) -> None:
        self.max_open = default_max_open() if max_open is None else max_open
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._pid_of: dict[int, int] = {}  # pidfd -> pid
        self._poller = select.poll() if hasattr(select, "poll") else None

    @staticmethod
    def supported() -> bool:
        return LINUX and hasattr(os, "pidfd_open") and hasattr(select, "poll")

    def watch(self, pid: int) -> bool:
        """Watch the process that has this pid now; False when it cannot be watched (or is gone)."""
        self.unwatch(pid)
        if self._poller is None or not self.supported() or len(self._fds) >= self.max_open or pid <= 0:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone, or pidfds refused (ENOSYS, EPERM)
            return False
        os.set_inheritable(fd, False)
        self._fds[pid] = fd
        self._pid_of[fd] = pid
        self._poller.register(fd, select.POLLIN)
        return True

    def watching(self, pid: int) -> bool:
        return pid in self._fds

    def alive(self, pid: int) -> bool | None:
        """Whether the watched process with this pid still runs; None when the pid is not watched."""
        fd = self._fds.get(pid)
        if fd is None:
            return None
        one = select.poll()
        one.register(fd, select.POLLIN)
        return not one.poll(0)

    def exited(self) -> set[int]:
        """The pids of every watched process that has exited, from one poll()."""
        if not self._fds:
            return set()
        assert self._poller is not None
        return {self._pid_of[fd] for fd, _ in self._poller.poll(0)}

    def unwatch(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            assert self._poller is not None
            self._poller.unregister(fd)
            del self._pid_of[fd]
            os.close(fd)

    def keep_only(self, pids: set[int]) -> None:
        for pid in [p for p in self._fds if p not in pids]:
            self.unwatch(pid)

    @property
    def watched(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        for pid in list(self._fds):
            self.unwatch(pid)
