"""Files between a client and a kernel's working directory: PutFile and GetFile (the client moves
them), RequestTransfer and CompleteTransfer (the kernel asks its Jupyter side, `%vgpu push/pull`).

Paths are always relative to the kernel's directory and confined to it: files are opened from a
descriptor of that directory without following a symlink at any component (tf_remoting.paths), so
a directory swapped for a link between two steps gains nothing. Where the worker runs principals
under their own uids, every open, mkdir and rename runs with the principal's file-system uid and
gid (`as_identity`), so it can reach only what that user could, and what it creates is theirs.
Errors name the path the caller gave, never the worker's.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tf_remoting import paths
from tf_remoting.proto import pb
from tf_remoting.quantities import format_bytes
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.interceptor import current_caller
from tf_remoting.worker.state import Worker

TRANSFER_TIMEOUT = 300.0  # seconds a kernel waits for its Jupyter side to move a file, by default
MAX_FILE = 2 << 30
WHERE = "the kernel's working directory"


def file_error(relative: str, exc: OSError) -> RpcError:
    """A file-system error as a status; names the path the caller gave, never the worker's."""
    if isinstance(exc, FileNotFoundError):
        return RpcError(grpc.StatusCode.NOT_FOUND, f"no file {relative!r} in the kernel's directory")
    if isinstance(exc, (NotADirectoryError, FileExistsError, IsADirectoryError)):
        return RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"{relative!r}: a part of the path is a file where a directory is needed, or the reverse")
    if exc.errno == errno.ENOSPC:
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{relative!r}: the worker's disk is full")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP):
        return RpcError(grpc.StatusCode.PERMISSION_DENIED, f"{relative!r}: {exc.strerror}")
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{relative!r}: {exc.strerror}")


def confined(root: str, relative: str) -> Path:
    """A path inside a kernel's directory by its words (for paths only passed on), or the status
    that says why not."""
    try:
        return paths.confined(root, relative, WHERE)
    except paths.BadPath as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    except paths.PathEscapes as exc:
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None


# ---------------------------------------------------------------------------- file-system identity

FsIdentity = tuple[int, int]  # (uid, gid) a file operation runs with; None: the worker's own
T = TypeVar("T")
_libc: list[Any] = []


def _set_fs_ids(uid: int, gid: int) -> tuple[int, int]:
    """setfsgid + setfsuid for the calling thread only (Linux keeps them per thread); returns the
    previous ids. Raises PermissionError when the switch did not take (no CAP_SETUID/CAP_SETGID)."""
    if not _libc:
        _libc.append(ctypes.CDLL(None, use_errno=True))
    libc = _libc[0]
    old_gid = libc.setfsgid(gid)
    old_uid = libc.setfsuid(uid)
    # setfs*id returns the previous id, success or not: asking again with -1 (never valid) says
    # whether the new one took.
    if libc.setfsuid(-1) != uid or libc.setfsgid(-1) != gid:
        libc.setfsuid(old_uid)
        libc.setfsgid(old_gid)
        raise PermissionError(errno.EPERM, f"cannot act as uid {uid} / gid {gid} (the worker needs CAP_SETUID "
                              "and CAP_SETGID)")
    return old_uid, old_gid


def as_identity(identity: FsIdentity | None, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) with the file-system uid and gid of `identity` (a tenant's), on the calling thread,
    switched back in `finally`: every open, mkdir and rename in fn is checked against that user's
    permissions, and what it creates is that user's. Run it on a thread of its own (asyncio.to_thread)."""
    if identity is None:
        return fn(*args)
    old = _set_fs_ids(*identity)
    try:
        return fn(*args)
    finally:
        _set_fs_ids(*old)


class FileTransfers:
    """The file RPCs of the Runtime service (mixed into `servicer.RuntimeServicer`)."""

    worker: Worker

    async def fs_identity(self, principal: str) -> FsIdentity | None:
        """The uid and gid file operations for `principal` run with: its tenant's where the worker
        runs kernels under per-principal uids (--tenant-uids), else None (the worker's own)."""
        tenant = await self.worker.db(self.worker.tenant, principal)
        return None if tenant is None else (tenant.uid, tenant.gid)

    async def PutFile(self, request_iterator: AsyncIterator[pb.PutFileRequest], context: Any) -> pb.FileInfo:
        w, caller = self.worker, current_caller()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "header":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the first PutFile message must be the header")
        rec = await w.db(w.ledger.get_kernel, caller.principal, first.header.kernel_id)
        path = first.header.path
        mode = (first.header.mode & 0o777) or 0o644
        identity = await self.fs_identity(rec.principal)
        try:
            upload = await asyncio.to_thread(as_identity, identity, paths.start_upload, rec.cwd, path, WHERE, mode)
        except paths.BadPath as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except paths.PathEscapes as exc:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        except IsADirectoryError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{path!r} is a directory") from None
        except OSError as exc:
            raise file_error(path, exc) from None
        size = 0
        try:
            # Writes go to the open descriptor: nothing is looked up by name until the commit,
            # which renames within the directory's descriptor.
            async for msg in request_iterator:
                if msg.WhichOneof("kind") != "data":
                    raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "only data may follow the header")
                size += len(msg.data)
                if size > MAX_FILE:
                    raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"file larger than {format_bytes(MAX_FILE)}")
                view = memoryview(msg.data)
                while view:
                    view = view[os.write(upload.fd, view):]
            await asyncio.to_thread(as_identity, identity, upload.commit)
        except OSError as exc:
            await asyncio.to_thread(as_identity, identity, upload.abort)
            raise file_error(path, exc) from None
        except BaseException:
            await asyncio.to_thread(as_identity, identity, upload.abort)
            raise
        return pb.FileInfo(path=path, size=size)

    async def GetFile(self, request: pb.GetFileRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        w, caller = self.worker, current_caller()
        rec = await w.db(w.ledger.get_kernel, caller.principal, request.kernel_id)
        # O_NONBLOCK: opening a FIFO must not block.
        flags = os.O_RDONLY | os.O_NONBLOCK
        identity = await self.fs_identity(rec.principal)
        try:
            fd = await asyncio.to_thread(as_identity, identity, paths.open_file, rec.cwd, request.path, WHERE, flags)
        except paths.BadPath as exc:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except paths.PathEscapes as exc:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
        except IsADirectoryError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{request.path!r} is not a regular file") from None
        except OSError as exc:
            raise file_error(request.path, exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{request.path!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            first = True
            while True:
                data = f.read(1 << 20)
                if not data and not first:
                    return
                yield pb.FileChunk(data=data, size=st.st_size if first else 0)
                first = False
                if not data:
                    return

    async def RequestTransfer(self, request: pb.TransferRequest, context: Any) -> pb.TransferResult:
        """A kernel asks its Jupyter side (over that side's Channels stream) to move a file."""
        w, caller = self.worker, current_caller()
        rec = await w.db(w.ledger.get_kernel, caller.principal, request.kernel_id)
        w.check_scope(caller, rec.lease_id, rec.id)
        if request.direction not in (pb.TRANSFER_TO_KERNEL, pb.TRANSFER_FROM_KERNEL):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "direction must be TO_KERNEL or FROM_KERNEL")
        confined(rec.cwd, request.kernel_path)
        client_path = request.client_path
        if not client_path or os.path.isabs(client_path) or "\x00" in client_path:
            # The client confines it to its own directory; the worker only refuses what is never valid.
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           "give the notebook-side path relative to the notebook's directory")
        link = w.attached.get(rec.id)
        if link is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"no Jupyter-side client is connected to kernel {rec.id}, so no file can move to or "
                           "from its notebook directory")
        transfer_id = uuid.uuid4().hex
        answer: asyncio.Future[pb.TransferResult] = asyncio.get_running_loop().create_future()
        w.transfers[transfer_id] = (rec.principal, rec.id, link, answer)
        link.inject(pb.ChannelsResponse(transfer=pb.TransferAsk(
            transfer_id=transfer_id, direction=request.direction, client_path=client_path,
            kernel_path=request.kernel_path, overwrite=request.overwrite)).SerializeToString())
        timeout = request.timeout_seconds or TRANSFER_TIMEOUT
        try:
            result = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the Jupyter side did not finish the transfer within {timeout:g} s") from None
        finally:
            del w.transfers[transfer_id]
        result.transfer_id = transfer_id
        return result

    async def CompleteTransfer(self, request: pb.TransferResult, context: Any) -> pb.CompleteTransferResponse:
        pending = self.worker.transfers.get(request.transfer_id)
        if pending is None or pending[0] != current_caller().principal:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"no transfer {request.transfer_id!r} is waiting")
        if not pending[3].done():
            pending[3].set_result(request)
        return pb.CompleteTransferResponse()
