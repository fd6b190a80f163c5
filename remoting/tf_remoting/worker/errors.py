"""The error servicer code raises for its caller: a gRPC status and a sentence a person can act on.

The interceptor (`tf_remoting.worker.interceptor`) turns it, and the ledger's own errors, into the
call's status; code that raises it never touches the gRPC context.
"""

from __future__ import annotations

import grpc

from tf_remoting.proto import ERROR_KIND_KEY, OVER_QUOTA, QUOTA_EXCEEDED_KEY
from tf_remoting.worker.quotas import OverQuota


class RpcError(Exception):
    """An error for the caller: a gRPC status and a sentence a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers  # machine-readable detail, as trailing metadata


def over_quota(over: OverQuota) -> RpcError:
    """FAILED_PRECONDITION (not RESOURCE_EXHAUSTED, which means "no room") with the quota, what is
    held and what was asked, as a sentence and as a serialized `QuotaExceeded` in the trailers."""
    from tf_remoting.worker.messages import quota_exceeded_message

    detail = quota_exceeded_message(over).SerializeToString()
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, over.sentence(),
                    ((ERROR_KIND_KEY, OVER_QUOTA), (QUOTA_EXCEEDED_KEY, detail)))
