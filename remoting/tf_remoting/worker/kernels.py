"""Kernel processes on the worker: start them under a nanny, signal them, find them again.

Each kernel gets a directory `STATE/kernels/<id>/` and a nanny process in its own session (see
`tf_remoting.worker.nanny`). The worker keeps no kernel state in memory that it cannot rebuild from
those directories and the ledger, which is how it re-adopts live kernels after a restart.

`state()` is asked for every kernel at every telemetry tick, so what it learns is remembered: the
parsed state.json (until the file is replaced: its inode, times and size are checked with one
stat) and the nanny's identity, checked once against its command line and afterwards through a
pidfd (one poll() answers for all nannies; where pidfds are not available, by its start time in
/proc/<pid>/stat, kept open), which tells a reused pid from the nanny.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tf_remoting.devices.procfs import PidWatch, ProcStatReader, stat_fields
from tf_remoting.worker.nanny_state import ACTIVITY_FILE
from tf_remoting.worker.proctree import kill_descendants
from tf_remoting.worker.tenants import Tenant, open_dir

MAX_UNIX_PATH = 107
_LINUX = sys.platform.startswith("linux")
_FORGET_AFTER_S = 60.0  # remembered kernel states not asked for this long are dropped
_MAX_STATE_BYTES = 1 << 16


class KernelStartError(RuntimeError):
    """The kernel (or its nanny) did not come up; the message says where to look."""


@dataclass(frozen=True)
class KernelProcess:
    """What the nanny's state file says about one kernel, checked against the live process table."""

    status: str  # "starting" | "running" | "exited"
    nanny_pid: int
    kernel_pid: int
    exit_code: int | None


@dataclass
class _Known:
    """What state() learnt from one version of a kernel's state.json."""

    key: tuple[int, ...]  # the file's identity: a replaced state.json has another
    state: KernelProcess  # as the file says; "running" only while the nanny checked out
    nanny_start: Any  # the verified nanny's start time ("pidfd": watched); None: not the nanny or gone
    used: float  # time.monotonic() of the last state() that used it


def _file_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def _read_nanny_file(path: str) -> tuple[tuple[int, ...], bytes] | None:
    """(identity, content) of a small file a nanny wrote; None when absent or not a regular file.

    The nanny runs as the tenant with tenant uids: no symlink or FIFO is followed or waited on, and
    no more than a state file's size is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            chunks = []
            size = 0
            while size < _MAX_STATE_BYTES and (chunk := os.read(fd, 1 << 16)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError:
        return None
    return _file_key(st), b"".join(chunks)


# The worker's own variables a kernel gets under its client's (paths, locale, GPU libraries):
# nothing else of the environment of whoever started the worker reaches a kernel.
BASE_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
BASE_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")


def base_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The base of every kernel's environment on this worker (the client's and the slice's go on top)."""
    source = dict(os.environ) if environ is None else environ
    return {k: v for k, v in source.items() if k in BASE_ENV_NAMES or k.startswith(BASE_ENV_PREFIXES)}


def default_kernel_argv() -> list[str]:
    """The worker's own Python running ipykernel with the vGPU startup module and %vgpu."""
    return [sys.executable, "-m", "tf_remoting.kernel", "-f", "{connection_file}"]


class KernelSupervisor:
    def __init__(self, state_dir: Path, environments: dict[str, list[str]] | None = None,
                 chunk_size: int = 1 << 20, replay_messages: int = 50_000,
                 replay_bytes: int = 256 << 20, tenants: bool = False) -> None:
        self.state_dir = state_dir
        # With tenant uids, each kernel's directory and its socket directory (STATE/s/<id>/) belong
        # to its tenant (0700); the parents are the worker's, passable (0711) but not listable.
        self.tenants = tenants
        self.kernels_dir = state_dir / "kernels"
        self.sockets_dir = state_dir / "s"
        self.kernels_dir.mkdir(parents=True, exist_ok=True)
        self.sockets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if tenants:
            open_dir(self.kernels_dir)
            open_dir(self.sockets_dir)
        self.environments = {"python3": default_kernel_argv(), **(environments or {})}
        self.chunk_size = chunk_size
        self.replay_messages = replay_messages
        self.replay_bytes = replay_bytes
        self._children: list[subprocess.Popen[bytes]] = []
        self._known: dict[str, _Known] = {}
        self._activity: dict[str, tuple[tuple[int, ...], tuple[bool, float] | None]] = {}  # activity()'s
        self._pids = PidWatch()  # the running nannies, as pidfds
        self._stat = ProcStatReader()  # or their /proc/<pid>/stat, kept open, without pidfds
        self._kernels_prefix = str(self.kernels_dir) + os.sep  # state() builds paths as text: no pathlib per tick
        self._last_sweep = time.monotonic()
        probe = self.socket_path("0" * 16)
        if len(str(probe)) > MAX_UNIX_PATH:
            raise ValueError(f"state directory {state_dir} is too long for unix socket paths "
                             f"({len(str(probe))} > {MAX_UNIX_PATH} characters); choose a shorter one")

    def directory(self, kernel_id: str) -> Path:
        return self.kernels_dir / kernel_id

    def socket_path(self, kernel_id: str) -> Path:
        if self.tenants:
            return self.sockets_dir / kernel_id / "n.sock"
        return self.sockets_dir / f"{kernel_id}.sock"

    def scope_path(self, kernel_id: str) -> Path:
        """Where the digest of the kernel's token is kept: out of the tenant's reach with tenant uids."""
        if self.tenants:
            return self.state_dir / "scopes" / kernel_id
        return self.directory(kernel_id) / "scope"

    def argv_for(self, environment: str, argv: list[str]) -> list[str]:
        if argv:
            return list(argv)
        name = environment or "python3"
        if name not in self.environments:
            raise KeyError(name)
        return list(self.environments[name])

    async def start(self, kernel_id: str, argv: list[str], env: dict[str, str], cwd: str,
                    key: bytes, signature_scheme: str, timeout: float = 20.0,
                    tenant: Tenant | None = None) -> KernelProcess:
        """Start the kernel's nanny (as the tenant's uid, when given) and wait until it runs.

        With a tenant, spec.json (the HMAC key, the kernel's token) is its 0600 file in its 0700
        directory, and the nanny first becomes the tenant's uid, gid and groups (setgroups,
        setresgid, setresuid: real, effective and saved ids all changed for good), then forbids
        itself new privileges (PR_SET_NO_NEW_PRIVS), all before it reads the spec or starts the kernel."""
        directory = self.directory(kernel_id)
        directory.mkdir(mode=0o700, parents=True)
        if tenant is not None:
            os.chown(directory, tenant.uid, tenant.gid)
            sockets = self.socket_path(kernel_id).parent
            sockets.mkdir(mode=0o700)
            os.chown(sockets, tenant.uid, tenant.gid)
            env = {**env, **tenant.env()}
        spec = {
            "kernel_id": kernel_id, "argv": argv, "env": {**base_env(), **env}, "env_complete": True, "cwd": cwd,
            "key": base64.b64encode(key).decode(), "signature_scheme": signature_scheme or "hmac-sha256",
            "socket": str(self.socket_path(kernel_id)), "chunk_size": self.chunk_size,
            "replay_messages": self.replay_messages, "replay_bytes": self.replay_bytes,
        }
        spec_path = directory / "spec.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        if tenant is not None:
            os.fchown(fd, tenant.uid, tenant.gid)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        log_fd = os.open(directory / "nanny.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        identity: list[str] = []
        if tenant is not None:
            os.fchown(log_fd, tenant.uid, tenant.gid)
            identity = ["--tenant", f"{tenant.uid}:{tenant.gid}:{','.join(map(str, tenant.groups))}"]
        with os.fdopen(log_fd, "ab") as out:
            child = subprocess.Popen([sys.executable, "-m", "tf_remoting.worker.nanny", *identity, str(directory)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True)
        self._children.append(child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(kernel_id)
            if state.status == "running" and self.socket_path(kernel_id).exists():
                return state
            if state.status == "exited" or (state.status == "starting" and child.poll() is not None):
                break
            await asyncio.sleep(0.01)
        code = child.poll()
        raise KernelStartError(f"kernel {kernel_id} did not start"
                               f"{'' if code is None else f' (its nanny exited with code {code})'}; "
                               f"see {directory}/nanny.log and kernel.log")

    def nanny_pids(self) -> set[int]:
        """The nannies this worker started or adopted that still run: every process of a tenant
        must be one of them or descend from one."""
        pids = {c.pid for c in self._children if c.returncode is None}
        pids.update(k.state.nanny_pid for k in self._known.values() if k.state.status == "running")
        return pids

    def reap(self) -> None:
        """Collect nannies of this worker that have exited (adopted ones are init's children)."""
        self._children = [c for c in self._children if c.poll() is None]

    def state(self, kernel_id: str) -> KernelProcess:
        """The kernel's state; a nanny that vanished without writing an exit code counts as killed.

        One stat of state.json, plus one look at the nanny while it runs (a poll of its pidfd);
        the file is parsed and the nanny's command line checked only when state.json was replaced.
        """
        return self._state(kernel_id, None)

    def states(self, kernel_ids: list[str]) -> dict[str, KernelProcess]:
        """state() of each kernel, with one poll() for all their nannies (the telemetry tick's)."""
        exited = self._pids.exited()
        return {kernel_id: self._state(kernel_id, exited) for kernel_id in kernel_ids}

    def _state(self, kernel_id: str, exited: set[int] | None) -> KernelProcess:
        """exited: the watched nannies found gone by a poll() just made; None: look at this one."""
        now = time.monotonic()
        if now - self._last_sweep > _FORGET_AFTER_S / 2:
            self._known = {k: v for k, v in self._known.items() if now - v.used < _FORGET_AFTER_S}
            self._activity = {k: v for k, v in self._activity.items() if k in self._known}
            nannies = {v.state.nanny_pid for v in self._known.values() if v.nanny_start is not None}
            self._pids.keep_only(nannies)
            self._stat.keep_only(nannies)
            self._last_sweep = now
        path = f"{self._kernels_prefix}{kernel_id}{os.sep}state.json"
        try:
            key = _file_key(os.stat(path))
        except OSError:
            self._known.pop(kernel_id, None)
            return KernelProcess("starting", 0, 0, None)
        known = self._known.get(kernel_id)
        loaded = known is None or known.key != key
        if loaded:
            if known is not None:
                self._drop_nanny(known.state.nanny_pid)
            known = self._load(kernel_id, path)
            if known is None:
                self._known.pop(kernel_id, None)
                return KernelProcess("starting", 0, 0, None)
            self._known[kernel_id] = known
        assert known is not None  # loaded above, or remembered
        known.used = now
        state = known.state
        # A nanny verified by _load just now needs no second look.
        if state.status == "running" and not (loaded and known.nanny_start is not None) \
                and not self._nanny_runs(known, exited):
            if known.nanny_start is not None:
                known.nanny_start = None  # gone for good: no more looks at its pid
                self._drop_nanny(state.nanny_pid)
            return KernelProcess("exited", state.nanny_pid, state.kernel_pid, -signal.SIGKILL)
        return state

    def _nanny_runs(self, known: _Known, exited: set[int] | None) -> bool:
        if known.nanny_start is None:
            return False
        pid = known.state.nanny_pid
        if exited is not None and self._pids.watching(pid):
            return pid not in exited
        alive = self._pids.alive(pid)
        if alive is None:  # not watched through a pidfd
            return _process_start(pid, self._stat) == known.nanny_start
        return alive

    def _drop_nanny(self, pid: int) -> None:
        self._pids.unwatch(pid)
        self._stat.forget(pid)

    def activity(self, kernel_id: str) -> tuple[bool, float] | None:
        """The kernel's DIR/activity.json (nanny_state.write_activity): whether it runs a cell and the
        unix time of the last change; None before its first cell. One stat; read when replaced."""
        path = f"{self._kernels_prefix}{kernel_id}{os.sep}{ACTIVITY_FILE}"
        try:
            key = _file_key(os.stat(path))
        except OSError:
            self._activity.pop(kernel_id, None)
            return None
        cached = self._activity.get(kernel_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = None
        read = _read_nanny_file(path)
        if read is not None:
            key, raw = read
            try:
                data = json.loads(raw)
                value = (bool(data["busy"]), float(data["time"]))
            except (ValueError, KeyError, TypeError):
                value = None
        self._activity[kernel_id] = (key, value)
        return value

    def _load(self, kernel_id: str, path: str) -> _Known | None:
        """Parse state.json (its identity taken from the same open file) and check its nanny."""
        read = _read_nanny_file(path)
        if read is None:
            return None
        key, raw = read
        try:
            data = json.loads(raw)
            status = data["status"]
            nanny_pid, kernel_pid = int(data["nanny_pid"]), int(data["kernel_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not written yet, or being replaced: as before it exists
        if status == "exited":
            return _Known(key, KernelProcess("exited", nanny_pid, kernel_pid, data.get("exit_code")),
                          None, 0.0)
        # The process is pinned (a pidfd, or its stat file opened and start time read) before its
        # command line is checked, and looked at again after: if the pid changed hands in between,
        # the pinned process is gone and the kernel counts as gone (never a stranger as the nanny).
        self._drop_nanny(nanny_pid)
        nanny_start: Any = None
        if self._pids.watch(nanny_pid):
            if self._is_nanny(nanny_pid, kernel_id) and self._pids.alive(nanny_pid):
                nanny_start = "pidfd"
        else:
            start = _process_start(nanny_pid, self._stat)
            if start is not None and self._is_nanny(nanny_pid, kernel_id) \
                    and _process_start(nanny_pid, self._stat) == start:
                nanny_start = start
        if nanny_start is None:
            self._drop_nanny(nanny_pid)
        return _Known(key, KernelProcess("running", nanny_pid, kernel_pid, None), nanny_start, 0.0)

    def _owner(self, kernel_id: str) -> int | None:
        """The uid owning the kernel's directory: its tenant's (only the worker can change it)."""
        try:
            return os.stat(self.directory(kernel_id)).st_uid
        except OSError:
            return None

    def _is_nanny(self, pid: int, kernel_id: str) -> bool:
        """_is_nanny(), and with tenant uids also running as the kernel's tenant: the pids in
        state.json come from the tenant's nanny, so they are trusted only for the tenant's own
        processes (which the tenant could signal itself)."""
        return _is_nanny(pid, kernel_id) and (not self.tenants or _runs_as(pid, self._owner(kernel_id)))

    def signal(self, kernel_id: str, signum: int) -> bool:
        """Send a signal to the kernel process; False when it is not running."""
        state = self.state(kernel_id)
        if state.status != "running":
            return False
        if self.tenants and not _runs_as(state.kernel_pid, self._owner(kernel_id)):
            return False  # state.json is the tenant's file: never a pid of someone else's
        try:
            os.kill(state.kernel_pid, signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, kernel_id: str) -> None:
        """Ask the nanny to terminate the kernel and exit. The nanny escalates on its own (SIGKILL
        after nanny_loop.STOP_GRACE) and, once the kernel has exited, kills and reaps every process
        the kernel started, double-forked ones included (they are reparented to it, a subreaper).

        A nanny whose kernel has exited may linger to hand its last messages over: it is told to
        go too, since whoever stops the kernel will not collect them."""
        state = self.state(kernel_id)
        if state.status == "running" or (state.status == "exited" and self._is_nanny(state.nanny_pid, kernel_id)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.nanny_pid, signal.SIGTERM)

    def kill(self, kernel_id: str) -> None:
        """Kill the kernel and every process it started now (the watchdog's last step).

        Everything below the nanny is SIGKILLed from here, without waiting for the nanny, until
        none is left (a process forking meanwhile has its child killed by the next pass); the nanny,
        told to stop, reaps them, records the kernel's exit and goes. Where some still live after
        half a second of that, the nanny is killed too.
        """
        state = self.state(kernel_id)
        if state.status != "running":
            return
        left = kill_descendants(state.nanny_pid, timeout=0.5) if _LINUX else set()
        if not _LINUX:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.kernel_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.nanny_pid, signal.SIGKILL if left else signal.SIGTERM)


def _process_start(pid: int, reader: ProcStatReader | None = None) -> Any:
    """The start time of a live, non-zombie process (compare for equality only), or None."""
    if pid <= 0:
        return None
    if _LINUX:
        stat = (reader or ProcStatReader(max_open=0)).read(pid)
        fields = None if stat is None else stat_fields(stat)
        if fields is None or fields[0] == b"Z":  # gone, cut short by an exit, or a zombie
            return None
        return fields[19]  # field 22, starttime (clock ticks since boot)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _runs_as(pid: int, uid: int | None) -> bool:
    """True when the process's real, effective, saved and filesystem uids are all `uid`."""
    if uid is None or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return all(int(v) == uid for v in line.split()[1:])
    except (OSError, ValueError):
        return False
    return False


def _is_nanny(pid: int, kernel_id: str) -> bool:
    """True when pid is alive and is the nanny of this kernel (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(kernel_id in arg for arg in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
