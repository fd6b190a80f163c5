"""Files between a client and a kernel's working directory: PutFile and GetFile (the client moves
them), RequestTransfer and CompleteTransfer (the kernel asks its Jupyter side, `%vgpu push/pull`).

Paths are always relative to the kernel's directory and confined to it; errors name the path the
caller gave, never the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from tf_remoting import paths
from tf_remoting.proto import pb
from tf_remoting.quantities import format_bytes
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.interceptor import current_caller
from tf_remoting.worker.state import Worker

TRANSFER_TIMEOUT = 300.0  # seconds a kernel waits for its Jupyter side to move a file, by default
MAX_FILE = 2 << 30


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
    """A path inside a kernel's directory, or the status that says why not."""
    try:
        return paths.confined(root, relative, "the kernel's working directory")
    except paths.BadPath as exc:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    except paths.PathEscapes as exc:
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None


class FileTransfers:
    """The file RPCs of the Runtime service (mixed into `servicer.RuntimeServicer`)."""

    worker: Worker

    async def PutFile(self, request_iterator: AsyncIterator[pb.PutFileRequest], context: Any) -> pb.FileInfo:
        w, caller = self.worker, current_caller()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "header":
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the first PutFile message must be the header")
        rec = await w.db(w.ledger.get_kernel, caller.principal, first.header.kernel_id)
        path = first.header.path
        target = confined(rec.cwd, path)
        if target.is_dir():
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{path!r} is a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error(path, exc) from None
        tmp = target.with_name(f".{target.name}.tf-upload-{uuid.uuid4().hex[:8]}")
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         (first.header.mode & 0o777) or 0o644)
            with os.fdopen(fd, "wb") as f:
                async for msg in request_iterator:
                    if msg.WhichOneof("kind") != "data":
                        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "only data may follow the header")
                    size += len(msg.data)
                    if size > MAX_FILE:
                        raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"file larger than {format_bytes(MAX_FILE)}")
                    f.write(msg.data)
            os.replace(tmp, target)
        except OSError as exc:
            raise file_error(path, exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return pb.FileInfo(path=path, size=size)

    async def GetFile(self, request: pb.GetFileRequest, context: Any) -> AsyncIterator[pb.FileChunk]:
        w, caller = self.worker, current_caller()
        rec = await w.db(w.ledger.get_kernel, caller.principal, request.kernel_id)
        target = confined(rec.cwd, request.path)
        try:
            # O_NONBLOCK: opening a FIFO must not block the worker's event loop.
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
        w.check_scope(caller, rec.lease_id)
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
            kernel_path=request.kernel_path)).SerializeToString())
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
