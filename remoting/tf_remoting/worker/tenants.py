"""A Unix identity per principal on the GPU host (`tf-jupyter worker --tenant-uids FIRST-LAST`).

With tenant uids, each principal's nannies and kernels run under a uid of its own, taken from the
range and remembered in the ledger (`Ledger.tenant_uid`), with a group of the same number and, as
supplementary groups, the groups owning the GPU device files. Each principal has a private home
(0700, its uid) in STATE/homes, where HOME, IPYTHONDIR and PYTHONUSERBASE point.

Plain Python, no gRPC: parsing the range, naming homes after principals safely, picking a uid,
checking the worker's capabilities, and making the private directories.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Capabilities the worker needs to run kernels as other uids (bit numbers of linux/capability.h):
# start them as those uids, hand them their files, stop them, and read and reach their 0700
# directories and 0600 sockets.
NEEDED_CAPABILITIES = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*")
_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Tenant:
    """Who a principal's kernels run as on this worker."""

    principal: str
    uid: int
    gid: int
    home: Path
    groups: tuple[int, ...] = field(default=())

    @property
    def user_name(self) -> str:
        """USER/LOGNAME for the kernel: the principal when it is a valid Unix name, else a safe one."""
        return self.principal if _UNIX_NAME.fullmatch(self.principal) else safe_name(self.principal)

    def env(self) -> dict[str, str]:
        """The kernel's variables that point into its private home."""
        return {"HOME": str(self.home), "IPYTHONDIR": str(self.home / ".ipython"),
                "PYTHONUSERBASE": str(self.home / ".local"), "USER": self.user_name, "LOGNAME": self.user_name}


def parse_uid_range(text: str) -> tuple[int, int]:
    """'FIRST-LAST' -> (first, last); ValueError with a sentence when it is not a usable range."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"tenant_uids must be a range FIRST-LAST of numeric uids, e.g. 20000-20999, not {text!r}")
    first, last = int(match[1]), int(match[2])
    if first > last:
        raise ValueError(f"tenant_uids {text!r}: the first uid is above the last; write it as {last}-{first}")
    if first < 1000:
        raise ValueError(f"tenant_uids {text!r} includes uid {first}: tenant uids must be 1000 or above "
                         "(0 is root, lower ones belong to the system)")
    if last >= 2**31 - 1:
        raise ValueError(f"tenant_uids {text!r}: uids must be below {2**31 - 1}")
    return first, last


def safe_name(principal: str) -> str:
    """A name for the principal's home directory: never the raw principal in a path.

    Lower-case letters, digits, '_' and '-' of the principal (at most 24), then '-' and 8 hex
    digits of its SHA-256, so two principals that sanitize alike still get different names."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "_", principal.lower()).strip("_-")[:24] or "p"
    if not cleaned[0].isalpha():
        cleaned = "p" + cleaned
    return f"{cleaned}-{hashlib.sha256(principal.encode()).hexdigest()[:8]}"


def pick_uid(current: int | None, used: set[int], first: int, last: int,
             has_account: Callable[[int], bool]) -> int | None:
    """The principal's uid: the one it has when still in the range, else the lowest free one.

    `used` holds the uids of the other principals; uids that belong to an account on this host
    (`has_account`) are skipped. None: the range is used up."""
    if current is not None and first <= current <= last:
        return current
    for uid in range(first, last + 1):
        if uid not in used and not has_account(uid):
            return uid
    return None


def has_account(uid: int) -> bool:
    """True when /etc/passwd (or NSS) knows this uid."""
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def effective_capabilities(status_text: str) -> int:
    """CapEff from the text of /proc/self/status (0 when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_capabilities(cap_eff: int) -> list[str]:
    return [name for name, bit in NEEDED_CAPABILITIES.items() if not cap_eff >> bit & 1]


def check_capabilities(status_path: str = "/proc/self/status") -> None:
    """Refuse (ValueError, a sentence) when this process cannot run kernels as other uids."""
    try:
        with open(status_path) as f:
            missing = missing_capabilities(effective_capabilities(f.read()))
    except OSError:
        missing = list(NEEDED_CAPABILITIES)
    if missing:
        raise ValueError(
            f"--tenant-uids runs kernels as other users, which needs root or the capabilities "
            f"{', '.join(NEEDED_CAPABILITIES)}; this worker lacks {', '.join(missing)}. Run it as root "
            "(the systemd unit and the DaemonSet in deploy/ show how), or without --tenant-uids")


def device_groups(patterns: Iterable[str] = GPU_DEVICE_PATTERNS) -> tuple[int, ...]:
    """The groups owning GPU device files (not root's): supplementary groups of every tenant, so
    the devices stay usable by kernels that run as tenant uids."""
    gids = set()
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_gid != 0:
                gids.add(st.st_gid)
    return tuple(sorted(gids))


def unreachable_for_others(paths: Iterable[str | Path]) -> list[str]:
    """Directories on the way to `paths` that other users cannot enter (no o+x): a kernel running
    as a tenant uid could not start the interpreter or import its packages from there."""
    blocked: list[str] = []
    for path in paths:
        current = Path(os.path.realpath(path))
        for directory in [*reversed(current.parents), current]:
            try:
                st = os.stat(directory)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH and str(directory) not in blocked:
                blocked.append(str(directory))
    return blocked


def private_dir(path: Path, uid: int, gid: int) -> Path:
    """`path` as a directory of mode 0700 owned by uid:gid, made when missing.

    One left by an earlier uid (the mapping changed) is given to this one, with everything in it
    (symlinks are re-owned, never followed). Anything else at `path` (a file, a symlink) is refused
    with a sentence: it is never followed."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} should be a directory of uid {uid} but is something else (a file or a "
                         "symlink); move it away and try again")
    if st.st_uid != uid or st.st_gid != gid:
        # fwalk works on directory descriptors and never follows a symlink, even one swapped in meanwhile.
        for _root, dirs, files, root_fd in os.fwalk(path, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
        os.chown(path, uid, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def open_dir(path: Path) -> None:
    """A directory of the worker's that tenants may pass through (0711) but not list."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711)


def private_file(path: Path) -> None:
    """A worker file that no kernel may read: mode 0600 (nothing happens when it does not exist)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def readable_by_others(path: Path) -> bool:
    """True when someone other than the owner can read the file (group or other read bits)."""
    try:
        return bool(os.stat(path).st_mode & 0o044)
    except OSError:
        return False


# ---------------------------------------------------------------------------- processes outside every kernel


def _proc_identity(pid: int) -> tuple[int, int, int] | None:
    """(real uid, parent pid, start time) of a live process, None when it is gone or a zombie. The
    real uid from /proc/<pid>/status: the owner of /proc/<pid> itself turns root when a process makes
    itself non-dumpable, which would hide it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/status", "rb") as f:
            uid_line = next(line for line in f if line.startswith(b"Uid:"))
    except (OSError, StopIteration, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(uid_line.split()[1]), int(fields[1]), int(fields[19])


def tenant_processes(uid_range: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time) of every live process whose real uid is a tenant uid."""
    first, last = uid_range
    found: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ident = _proc_identity(int(name))
            if ident is not None and first <= ident[0] <= last:
                found[int(name)] = (ident[1], ident[2])
    return found


def strays(processes: dict[int, tuple[int, int]], roots: set[int]) -> list[int]:
    """The processes no root accounts for: neither a root nor descended from one through tenant
    processes (a chain that leaves them, e.g. reparented to init when its nanny was killed, is not)."""
    accounted: dict[int, bool] = {}

    def ok(pid: int) -> bool:
        chain = []
        while pid in processes and pid not in accounted and pid not in roots:
            chain.append(pid)
            pid = processes[pid][0]
        result = pid in roots or accounted.get(pid, False)
        for p in chain:
            accounted[p] = result
        return result

    return sorted(pid for pid in processes if not ok(pid))


def end_strays(processes: dict[int, tuple[int, int]], roots: set[int]) -> list[int]:
    """SIGKILL the strays among `processes` (each checked again to be the same process first: its pid
    may have been reused since the scan). Returns the pids ended."""
    import signal

    ended = []
    for pid in strays(processes, roots):
        ident = _proc_identity(pid)
        if ident is None or ident[2] != processes[pid][1]:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        ended.append(pid)
    return ended
