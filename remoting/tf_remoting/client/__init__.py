"""The client library: what the Jupyter side (or any Python program) uses to talk to a worker.

Runs on the Jupyter host. `runtime` is the thin asyncio client (one method per RPC, errors as
exceptions, `KernelChannels` for a kernel's resumable message stream); `session` speaks the
Jupyter protocol over that stream for programs and tests; `backoff` is the one reconnect policy
(delays, jitter, how long an outage may last) for every loop that reconnects to a worker.
"""

from tf_remoting.client.backoff import Backoff
from tf_remoting.client.runtime import (
    FailedPrecondition,
    InvalidArgument,
    KernelChannels,
    KernelClosed,
    NotFound,
    OverQuota,
    PermissionDenied,
    RemotingError,
    ResourceExhausted,
    RuntimeClient,
    TransferError,
    Unauthenticated,
    Unavailable,
    channel_options,
    error_from,
)
from tf_remoting.proto import pb

__all__ = ["Backoff", "FailedPrecondition", "InvalidArgument", "KernelChannels", "KernelClosed", "NotFound",
           "OverQuota", "PermissionDenied", "RemotingError", "ResourceExhausted", "RuntimeClient", "TransferError",
           "Unauthenticated", "Unavailable", "channel_options", "error_from", "pb"]
