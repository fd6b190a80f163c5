"""Per-lease usage: each lease's kernel process trees measured on the lease's device.

Finding a tree's descendants needs every process's parent (/proc has no cheap "children of"
where CONFIG_PROC_CHILDREN is off), and reading all of them every second was most of what
sampling cost. So on Linux the Sampler keeps each root's tree between samples and, per sample,
lists /proc once and reads the parent of new pids only (those not listed at the previous
sample): a process that was not in a tree when it was last seen cannot have joined one since, so
a tree changes only by its members exiting and by new processes whose parent is a member. A child
a kernel starts is counted from the next sample, as before. Every pid is read afresh on a full
scan: for a new root and every ``full_scan_seconds`` (against a pid reused between two samples).
Elsewhere every sample is a full scan through psutil.

A kernel's tree is its nanny's: a root whose parent is a kernel nanny (a child subreaper, see
`tf_remoting.worker.proctree`) counts every descendant of that nanny but the nanny itself, so a
process the kernel double-forked, reparented to the nanny, is still the kernel's.
"""

from __future__ import annotations

import os
import sys
import time

import psutil

from tf_remoting.devices.base import DeviceBackend, DeviceSample, Usage

_LINUX = sys.platform.startswith("linux")
FULL_SCAN_SECONDS = 60.0
NANNY_MODULE = b"tf_remoting.worker.nanny"


def _is_nanny(pid: int) -> bool:
    """Whether pid runs a kernel nanny (`python -m tf_remoting.worker.nanny DIR`)."""
    if not _LINUX:
        try:
            return NANNY_MODULE.decode() in psutil.Process(pid).cmdline()
        except psutil.Error:
            return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return NANNY_MODULE in f.read().split(b"\0")
    except OSError:
        return False


def _pids() -> set[int]:
    """Every pid /proc lists now."""
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _ppids(pids: set[int] | None = None) -> dict[int, int]:
    """Parent pid of these processes (default: every process), one read of /proc/<pid>/stat each
    on Linux; processes that exited meanwhile are left out."""
    if not _LINUX:
        return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])
                if pids is None or p.pid in pids}
    ppids = {}
    for pid in _pids() if pids is None else pids:
        try:  # os.open/os.read: half the cost of open() at one file per process per sample
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except OSError:  # exited meanwhile
            continue
        try:
            stat = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the last ")".
        ppids[pid] = int(stat[stat.rfind(b")") + 2:].split(None, 2)[1])
    return ppids


def _children(ppids: dict[int, int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    return children


def _scan() -> tuple[dict[int, list[int]], set[int]]:
    """Children by parent pid, and every live pid. One pass over /proc serves every tree of a
    sample; psutil's Process.children() would rescan /proc for each root."""
    ppids = _ppids()
    return _children(ppids), set(ppids)


def _tree(root: int, children: dict[int, list[int]], alive: set[int]) -> set[int]:
    if root not in alive:
        return set()
    return _grow({root}, children)


def _grow(tree: set[int], children: dict[int, list[int]]) -> set[int]:
    """Add to ``tree`` (in place) every descendant of its members found in ``children``."""
    stack = list(tree)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree.add(child)
                stack.append(child)
    return tree


def process_tree(pid: int) -> set[int]:
    """pid and all its descendants; empty when pid is gone."""
    return _tree(pid, *_scan())


class Sampler:
    """Samples the backend's devices and each lease's usage; process trees are kept between samples."""

    def __init__(self, backend: DeviceBackend, full_scan_seconds: float = FULL_SCAN_SECONDS) -> None:
        self.backend = backend
        self.full_scan_seconds = full_scan_seconds
        self._trees: dict[int, frozenset[int]] = {}  # root pid -> the root and its descendants
        self._anchors: dict[int, int] = {}  # root pid -> its nanny, or itself where it has none
        self._listed: set[int] = set()  # every pid /proc listed at the previous sample
        self._full_at = float("-inf")
        self.full_scans = 0  # for tests and benchmarks
        self.parents_read = 0  # parent lookups of single processes, full scans included

    def trees(self, roots: set[int]) -> dict[int, frozenset[int]]:
        """Each root's tree (the root and its descendants; empty when the root is gone)."""
        if not roots:
            self._trees = {}
            return self._trees
        now = time.monotonic()
        kept = self._trees
        if (not _LINUX or now - self._full_at >= self.full_scan_seconds
                or any(root not in kept for root in roots)):
            ppids = _ppids()
            self.full_scans += 1
            self.parents_read += len(ppids)
            children, alive = _children(ppids), set(ppids)
            self._anchors = {}
            self._trees = {}
            for root in roots:
                parent = ppids.get(root, 0)
                anchor = parent if parent > 1 and _is_nanny(parent) else root
                self._anchors[root] = anchor
                found = _tree(anchor, children, alive) if root in alive else set()
                if anchor != root:
                    found.discard(anchor)
                self._trees[root] = frozenset(found)
            self._listed = alive
            self._full_at = now
            return self._trees
        listed = _pids()
        new = listed - self._listed
        self._listed = listed
        children = _children(_ppids(new)) if new else {}
        self.parents_read += len(new)
        trees: dict[int, frozenset[int]] = {}
        for root in roots:
            tree = kept[root]
            if root not in listed:
                trees[root] = frozenset()
                continue
            if not tree <= listed or children:
                anchor = self._anchors.get(root, root)
                members = {pid for pid in tree if pid in listed}
                grown = _grow(members | {anchor}, children)  # orphans adopted by the nanny, too
                if anchor != root:
                    grown.discard(anchor)
                if grown != tree:
                    tree = frozenset(grown)
            trees[root] = tree
        self._trees = trees
        return trees

    def sample(
        self, leases: list[tuple[str, str, set[int]]]
    ) -> tuple[list[DeviceSample], dict[str, Usage]]:
        """leases: (lease_id, device_uuid, root pids of its kernels) → device samples, usage by lease.

        A lease's usage covers the whole process tree of each root (kernels that fork count;
        under a nanny, processes it adopted from the kernel's tree count too).
        """
        devices = self.backend.sample_devices()
        trees = self.trees({root for _, _, roots in leases for root in roots})
        requests = []
        for _, device_uuid, roots in leases:
            pids: set[int] = set()
            for root in roots:
                pids |= trees[root]
            requests.append((device_uuid, pids))
        usages = self.backend.usages(requests)
        return devices, {lease_id: u for (lease_id, _, _), u in zip(leases, usages, strict=True)}
