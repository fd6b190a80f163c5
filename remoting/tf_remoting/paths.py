"""Relative paths confined to a directory: the worker's kernel directories (PutFile, GetFile,
RequestTransfer) and the client's notebook directory (%vgpu push / pull) use the same rule."""

from __future__ import annotations

import os
from pathlib import Path

MAX_PATH = 4096


class BadPath(ValueError):
    """Not a usable relative path (empty, absolute, too long, NUL, a component over 255 bytes)."""


class PathEscapes(ValueError):
    """A relative path that leaves its directory (`..` or a symlink)."""


def confined(root: str | Path, relative: str, where: str) -> Path:
    """`relative` resolved inside `root`; `where` names root in messages ("the kernel's working
    directory"). Absolute paths, `..` and symlinks cannot leave it (root itself is allowed: callers
    that need a file refuse directories)."""
    if not relative or len(relative) > MAX_PATH or "\x00" in relative:
        raise BadPath("give a non-empty relative path")
    if os.path.isabs(relative):
        raise BadPath(f"path {relative!r} is absolute; paths are relative to {where}")
    if any(len(part.encode()) > 255 for part in relative.split("/")):
        raise BadPath("a path component is longer than 255 bytes")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise PathEscapes(f"path {relative!r} leaves {where}")
    return target
