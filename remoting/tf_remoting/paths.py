"""Relative paths confined to a directory: the worker's kernel directories (PutFile, GetFile,
RequestTransfer) and the client's notebook directory (%vgpu push / pull) use the same rule.

A path is checked by its words (`relative_parts`: not empty, not absolute, no `..`) and then
*opened* beneath its directory without following a symbolic link at any component: from a file
descriptor of the directory, one component at a time with `O_NOFOLLOW | O_DIRECTORY`, or in one
`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` call where the kernel has it (Linux 5.6+). A
directory swapped for a symlink between a check and the open therefore gains nothing: there is
no separate check. Links inside the directory are refused too, even ones that point inside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_PATH = 4096

# Directories reached on the way to a file: never a symlink, never inherited by child processes.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BadPath(ValueError):
    """Not a usable relative path (empty, absolute, too long, NUL, a component over 255 bytes)."""


class PathEscapes(ValueError):
    """A relative path that leaves its directory (`..` or a symlink)."""


def relative_parts(relative: str, where: str) -> list[str]:
    """The components of `relative`, refused with a sentence when it is not a plain path inside
    `where` (which names the directory in messages: "the kernel's working directory"). `.` and
    empty components are dropped, so `[]` is the directory itself."""
    if not relative or len(relative) > MAX_PATH or "\x00" in relative:
        raise BadPath("give a non-empty relative path")
    if os.path.isabs(relative):
        raise BadPath(f"path {relative!r} is absolute; paths are relative to {where}")
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if any(len(part.encode()) > 255 for part in parts):
        raise BadPath("a path component is longer than 255 bytes")
    if ".." in parts:
        raise PathEscapes(f"path {relative!r} leaves {where}: '..' is not allowed")
    return parts


def confined(root: str | Path, relative: str, where: str) -> Path:
    """`relative` inside `root` by its words alone (no file is looked at): for paths that are only
    passed on. Files are opened with `open_directory` / `open_file`, never through this path."""
    parts = relative_parts(relative, where)
    return Path(root, *parts)


# ---------------------------------------------------------------------------- openat2

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table, 5.6+)
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_state: dict[str, object] = {"libc": None, "available": sys.platform.startswith("linux")}


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int | None:
    """openat2(dir_fd, path, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): an fd, or None where this
    kernel (or a seccomp filter) does not offer the call, and the caller walks instead."""
    if not _openat2_state["available"]:
        return None
    libc = _openat2_state["libc"]
    if libc is None:
        try:
            libc = _openat2_state["libc"] = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _openat2_state["available"] = False
            return None
    how = _OpenHow(flags, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
    raw = os.fsencode(path)
    for _ in range(8):  # EAGAIN: a rename raced the lookup; the kernel asks to try again
        fd = int(libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(raw),  # type: ignore[attr-defined]
                              ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    if err in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):  # no openat2 here (or not these flags)
        _openat2_state["available"] = False
        return None
    raise OSError(err, os.strerror(err), path)


# ---------------------------------------------------------------------------- opening beneath

def _escapes(relative: str, where: str, reason: str = "goes through a symbolic link") -> PathEscapes:
    return PathEscapes(f"path {relative!r} leaves {where}: it {reason}, and links are not followed")


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_directory(root: str | Path, parts: Sequence[str], relative: str, where: str, create: bool = False,
                   mode: int = 0o755) -> int:
    """An fd (O_CLOEXEC) of the directory `root/parts...`, reached without following a symlink in
    any of `parts` (`root` itself is trusted); missing directories are made when `create`.
    Raises PathEscapes for a symlinked component, OSError for the rest."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if not parts:
        return root_fd
    try:
        try:
            fd = _openat2(root_fd, "/".join(parts), DIR_FLAGS)
        except OSError:
            fd = None  # the walk below makes missing directories and says which part is wrong
        if fd is not None:
            return fd
        current = os.dup(root_fd)
        for part in parts:
            try:
                try:
                    following = os.open(part, DIR_FLAGS, dir_fd=current)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, mode, dir_fd=current)
                    following = os.open(part, DIR_FLAGS, dir_fd=current)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(current, part):
                        raise _escapes(relative, where) from None
                    raise
            finally:
                os.close(current)
            current = following
        return current
    finally:
        os.close(root_fd)


def open_file(root: str | Path, relative: str, where: str, flags: int = os.O_RDONLY, mode: int = 0o644,
              create_dirs: bool = False) -> int:
    """An fd of the file `relative` beneath `root`, opened with `flags | O_NOFOLLOW | O_CLOEXEC`
    from its directory's fd: no component, the last included, may be a symlink."""
    parts = relative_parts(relative, where)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory", relative)
    dir_fd = open_directory(root, parts[:-1], relative, where, create=create_dirs)
    try:
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP and _is_link(dir_fd, parts[-1]):
                raise _escapes(relative, where, "is a symbolic link") from None
            raise
    finally:
        os.close(dir_fd)


@dataclass
class Upload:
    """A file being written beneath a directory (`start_upload`): write to `fd`, then `commit()`
    puts it in place or `abort()` leaves nothing behind. Both close the descriptors."""

    dir_fd: int
    name: str
    written: str  # the name written to: a temporary one, or `name` itself when exclusive
    fd: int

    def commit(self) -> None:
        try:
            os.close(self.fd)
            self.fd = -1
            if self.written != self.name:
                # Within one directory fd: the rename replaces a name, it never follows one.
                os.replace(self.written, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException:
            self.abort()
            raise
        os.close(self.dir_fd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.written, dir_fd=self.dir_fd)
        os.close(self.dir_fd)


def start_upload(root: str | Path, relative: str, where: str, mode: int = 0o644, overwrite: bool = True) -> Upload:
    """A new file at `relative` beneath `root` (missing directories made), reached without following
    a symlink. With `overwrite` it is written under a temporary name and replaces whatever file is
    there on commit; without, it is created exclusively and an existing file is FileExistsError."""
    parts = relative_parts(relative, where)
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory", relative)
    name = parts[-1]
    dir_fd = open_directory(root, parts[:-1], relative, where, create=True)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", relative)
            if stat.S_ISLNK(st.st_mode):
                raise _escapes(relative, where, "is a symbolic link")
            if not overwrite:
                raise FileExistsError(errno.EEXIST, "exists", relative)
        written = name if not overwrite else f".tf-upload-{uuid.uuid4().hex}"
        fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    return Upload(dir_fd, name, written, fd)
