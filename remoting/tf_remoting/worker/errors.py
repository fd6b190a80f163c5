"""The error servicer code raises for its caller: a gRPC status and a sentence a person can act on.

The interceptor (`tf_remoting.worker.interceptor`) turns it, and the ledger's own errors, into the
call's status; code that raises it never touches the gRPC context.
"""

from __future__ import annotations

import grpc


class RpcError(Exception):
    """An error for the caller: a gRPC status and a sentence a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = trailers  # machine-readable detail, as trailing metadata
