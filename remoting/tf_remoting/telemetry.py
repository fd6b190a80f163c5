"""Per-lease usage: each lease's kernel process trees measured on the lease's device.

Finding a tree's descendants takes a pass over every process of the machine (/proc has no cheap
"children of" where CONFIG_PROC_CHILDREN is off), so the Sampler keeps each root's tree between
samples and scans again only every ``refresh_seconds``, when a root is new, or when a pid of a
kept tree has gone (one ``kill(pid, 0)`` each per sample). A child a kernel starts is therefore
counted within ``refresh_seconds`` (its parent's own usage at once); the backend measures every
pid of every tree at each sample.
"""

from __future__ import annotations

import os
import sys
import time

import psutil

from .devices.base import DeviceBackend, DeviceSample, Usage


def _ppids() -> dict[int, int]:
    """Parent pid of every process, from one pass over /proc on Linux."""
    if not sys.platform.startswith("linux"):
        return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])}
    ppids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:  # os.open/os.read: half the cost of open() at one file per process per sample
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:  # exited meanwhile
            continue
        try:
            stat = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the last ")".
        ppids[int(name)] = int(stat[stat.rfind(b")") + 2:].split(None, 2)[1])
    return ppids


def _scan() -> tuple[dict[int, list[int]], set[int]]:
    """Children by parent pid, and every live pid. One pass over /proc serves every tree of a
    sample; psutil's Process.children() would rescan /proc for each root."""
    ppids = _ppids()
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    return children, set(ppids)


def _tree(root: int, children: dict[int, list[int]], alive: set[int]) -> set[int]:
    if root not in alive:
        return set()
    tree = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return tree


def process_tree(pid: int) -> set[int]:
    """pid and all its descendants; empty when pid is gone."""
    return _tree(pid, *_scan())


def _gone(pid: int) -> bool:
    """True when no process has this pid any more (a zombie still has it until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    return False


REFRESH_SECONDS = 5.0


class Sampler:
    """Samples the backend's devices and each lease's usage; process trees are kept between samples."""

    def __init__(self, backend: DeviceBackend, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.backend = backend
        self.refresh_seconds = refresh_seconds
        self._trees: dict[int, frozenset[int]] = {}  # root pid -> the root and its descendants
        self._scanned_at = float("-inf")
        self.scans = 0  # how many /proc scans this sampler made (for tests and benchmarks)

    def trees(self, roots: set[int]) -> dict[int, frozenset[int]]:
        """Each root's tree, from the last scan unless it is stale (see the module docstring)."""
        now = time.monotonic()
        kept = self._trees
        if (
            now - self._scanned_at < self.refresh_seconds
            and all(root in kept for root in roots)
            and not any(_gone(pid) for root in roots for pid in kept[root])
        ):
            self._trees = {root: kept[root] for root in roots}
            return self._trees
        children, alive = _scan() if roots else ({}, set())
        self.scans += 1 if roots else 0
        self._trees = {root: frozenset(_tree(root, children, alive)) for root in roots}
        self._scanned_at = now
        return self._trees

    def sample(
        self, leases: list[tuple[str, str, set[int]]]
    ) -> tuple[list[DeviceSample], dict[str, Usage]]:
        """leases: (lease_id, device_uuid, root pids of its kernels) → device samples, usage by lease.

        A lease's usage covers the whole process tree of each root (kernels that fork count).
        """
        devices = self.backend.sample_devices()
        trees = self.trees({root for _, _, roots in leases for root in roots})
        usage: dict[str, Usage] = {}
        for lease_id, device_uuid, roots in leases:
            pids: set[int] = set()
            for root in roots:
                pids |= trees[root]
            usage[lease_id] = self.backend.usage(device_uuid, pids)
        return devices, usage
