"""A kernel's processes, all of them: found through /proc and killed together.

A kernel's nanny makes itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so a process
the kernel starts stays below the nanny even when its parent exits first (a double fork, a
``!cmd &`` whose shell is gone): it is reparented to the nanny instead of to init. So "the
kernel's processes" are the nanny's descendants, minus the nanny, whoever forked them and however
deep; telemetry counts them, and ending a kernel kills them all (`kill_descendants`), the nanny
reaping them (`reap`). Standard library only: the nanny imports it before the kernel starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+); False where refused."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Drop root for good: these supplementary groups, then real, effective and saved gid, then uid
    (after which none of root's ids can be taken back). Raises OSError where refused."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def no_new_privileges() -> bool:
    """PR_SET_NO_NEW_PRIVS for this process and all it starts: execve never grants privileges again
    (setuid and setgid bits, file capabilities are ignored). False where refused."""
    try:
        return bool(ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def die_with_parent() -> None:
    """In a child between fork and exec: get SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, parent pid) of a process, or None when it is gone.

    Its own read of /proc (devices.procfs.read_stat does the same) because the nanny imports this
    module before the kernel starts, and importing tf_remoting.devices loads psutil."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = stat[stat.rfind(b")") + 2:].split(None, 2)  # comm may hold spaces and parentheses
    if len(fields) < 2:
        return None
    return fields[0], int(fields[1])


def descendants(pid: int, include_zombies: bool = False) -> set[int]:
    """Every descendant of ``pid`` now (not pid itself): one pass over /proc."""
    children: dict[int, list[int]] = {}
    zombies: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _stat(int(name))
        if stat is None:
            continue
        children.setdefault(stat[1], []).append(int(name))
        if stat[0] == b"Z":
            zombies.add(int(name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found if include_zombies else found - zombies


def kill_descendants(pid: int, timeout: float = 2.0, reap_them: bool = False) -> set[int]:
    """SIGKILL every descendant of ``pid`` (a nanny: the kernel and whatever it started), again and
    again until none is left alive or ``timeout`` seconds passed: a process forking while it is
    killed has its child found by the next pass. Returns the descendants still alive (empty when
    all are gone). ``reap_them``: the caller is ``pid`` and collects its dead children (a
    subreaper's orphans included), else they stay zombies until it does.
    """
    deadline = time.monotonic() + timeout
    while True:
        if reap_them:
            reap(0)
        alive = descendants(pid)
        if not alive or time.monotonic() >= deadline:
            return alive
        for child in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        time.sleep(0.005)


def reap(watched: int) -> int | None:
    """Collect every exited child of this process without blocking (adopted orphans included);
    returns the exit code (negative: killed by that signal) of ``watched`` when it was among them."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == watched:
            code = os.waitstatus_to_exitcode(status)
