"""cgroup v2 probing and a small per-lease cgroup, for the host device.

The worker only claims cgroup enforcement when it can really create a child cgroup that has the
memory controller; otherwise the host device falls back to the watchdog (and says so).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("tf_remoting.devices")

CGROUP2_MOUNT = Path("/sys/fs/cgroup")
ROOT_ENV = "TF_VGPU_CGROUP_ROOT"  # a delegated cgroup v2 directory (e.g. systemd Delegate=yes)


def _own_cgroup(mount: Path) -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    return None


def _has_memory_for_children(root: Path) -> bool:
    """Create and remove a probe child; true when that child got memory.max."""
    probe = root / f"tf-vgpu-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "memory.max").exists()
    finally:
        try:
            probe.rmdir()
        except OSError as e:
            log.warning("could not remove cgroup probe %s: %s", probe, e)


def cgroup_v2_memory_root(mount: Path = CGROUP2_MOUNT) -> Path | None:
    """A cgroup v2 directory where this process can create children with memory.max, or None.

    Candidates: $TF_VGPU_CGROUP_ROOT, then this process's own cgroup. cgroup v1 and hybrid
    hierarchies give None.
    """
    controllers = mount / "cgroup.controllers"
    try:
        if "memory" not in controllers.read_text().split():
            return None
    except OSError:
        return None
    candidates = []
    if os.environ.get(ROOT_ENV):
        candidates.append(Path(os.environ[ROOT_ENV]))
    own = _own_cgroup(mount)
    if own is not None:
        candidates.append(own)
    for root in candidates:
        if root.is_dir() and os.access(root, os.W_OK) and _has_memory_for_children(root):
            return root
    return None


class CgroupSlice:
    """One child cgroup under a root found by cgroup_v2_memory_root(): limits plus member pids."""

    def __init__(self, root: Path, name: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"cgroup name {name!r} must be a single path component")
        self.path = root / name

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)

    def set_memory_max(self, limit_bytes: int | None) -> None:
        """Hard memory limit (None: unlimited); the kernel OOM-kills inside the slice past it."""
        (self.path / "memory.max").write_text("max" if limit_bytes is None else str(int(limit_bytes)))

    def set_cpu_max(self, percent_of_host: float | None, cpus: int | None = None,
                    period_us: int = 100_000) -> None:
        """CPU quota as a percent of the whole host (all logical CPUs); None: unlimited.

        Raises OSError when the cpu controller is not enabled for this slice.
        """
        if percent_of_host is None:
            value = f"max {period_us}"
        else:
            cpus = cpus or os.cpu_count() or 1
            quota = max(1000, int(period_us * cpus * percent_of_host / 100))
            value = f"{quota} {period_us}"
        (self.path / "cpu.max").write_text(value)

    def add_pid(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        try:
            return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        except FileNotFoundError:
            return set()

    def remove(self) -> None:
        """Remove the cgroup; its processes must have exited (the kernel refuses otherwise)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
