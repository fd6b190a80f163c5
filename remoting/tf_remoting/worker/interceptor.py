"""One server interceptor for every Runtime call: who is calling, how big a request may be, and
what an error becomes.

For each call it

- authenticates the caller from the metadata *before* the request is read: an unauthenticated call
  gets a handler that answers UNAUTHENTICATED without reading a byte of its body, so strangers
  cannot make the worker buffer large messages (it only sees metadata at this point). The token
  file and kernel tokens are looked up first; a token they do not know is shown to JupyterHub when
  one is configured (`hub_auth`: UNAVAILABLE while the hub cannot be reached, PERMISSION_DENIED for
  a hub token without the worker's scope);
- keeps kernel tokens to the calls their lease may make (`KERNEL_TOKEN_METHODS`);
- reads unary requests as raw bytes and refuses one above its method's size limit
  (`REQUEST_LIMITS`) before decoding it; gRPC's own `grpc.max_receive_message_length` is one
  limit for the whole server (GRPC_MAX_MESSAGE, what a Channels batch and a PutFile chunk
  need), so it is what bounds the one message an authenticated caller can make the worker hold;
- hands the caller to the servicer through `current_caller()` (a context variable);
- answers `RpcError` and the ledger's errors with their status and sentence, anything else with
  INTERNAL, and counts each in the `tf_vgpu_rpc_errors` metric.

Channels frames stay opaque: its handler is rebuilt without the generated (de)serializers, so the
worker relays the bytes as they came.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tf_remoting.proto import SERVICE_NAME
from tf_remoting.quantities import format_bytes
from tf_remoting.worker import leases as ledger_mod
from tf_remoting.worker.auth import AuthError, Caller, TokenTable, bearer_token
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.hub_auth import HubAuth, HubDenied, HubUnavailable
from tf_remoting.worker.messages import over_quota
from tf_remoting.worker.metrics import Metrics

log = logging.getLogger("tf_remoting.worker")

# Calls a kernel's own token (scoped to its lease) may make.
KERNEL_TOKEN_METHODS = frozenset({"GetInventory", "ListLeases", "Resize", "KernelState", "Watch", "Renew",
                                  "RequestTransfer"})
# Methods whose messages are relayed as they came, never decoded by the servicer's handler.
RAW_BYTES_METHODS = frozenset({"Channels"})
# The largest request message of each unary-request method; control calls are small.
DEFAULT_REQUEST_LIMIT = 256 << 10
REQUEST_LIMITS = {"StartKernel": 4 << 20, "Allocate": 1 << 20, "CompleteTransfer": 1 << 20}

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("tf_remoting_caller")
_PREFIX = f"/{SERVICE_NAME}/"

Behavior = Callable[..., Any]


def current_caller() -> Caller:
    """The authenticated caller of the RPC being served (set by the interceptor)."""
    return _caller.get()


def _status(exc: Exception) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    if isinstance(exc, ledger_mod.OverQuotaError):
        exc = over_quota(exc.over)
    if isinstance(exc, RpcError):
        return exc.code, exc.message, exc.trailers
    if isinstance(exc, ledger_mod.LedgerError):
        return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), str(exc), ()
    raise exc


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Authentication, request size limits and error mapping for the Runtime service."""

    def __init__(self, tokens: TokenTable, metrics: Metrics, hub: HubAuth | None = None) -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.hub = hub

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller of this metadata: token file and kernel tokens first, then the hub."""
        try:
            return self.tokens.authenticate(authorization)
        except AuthError:
            if self.hub is None:
                raise
            return await self.hub.caller(bearer_token(authorization))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        full: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or not full.startswith(_PREFIX):
            return handler  # health checks, reflection, unknown methods
        name = full[len(_PREFIX):]
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            caller = await self.authenticate(metadata.get("authorization"))  # type: ignore[arg-type]
        except AuthError as exc:
            return self._refusal(name, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except HubUnavailable as exc:
            return self._refusal(name, grpc.StatusCode.UNAVAILABLE, str(exc))
        except HubDenied as exc:
            return self._refusal(name, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if caller.lease_scope and name not in KERNEL_TOKEN_METHODS:
            return self._refusal(name, grpc.StatusCode.PERMISSION_DENIED,
                                 f"a kernel's own token cannot call {name}; use the principal's token")
        return self._wrap(name, caller, handler)

    # ------------------------------------------------------------------ refusals

    def _refusal(self, name: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        """A handler that answers `code` without reading the request: a stream-request handler is
        never handed a message it did not ask for, whatever the method's real shape."""
        self.metrics.rpc_error(name, code.name)

        async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

        return grpc.stream_unary_rpc_method_handler(refuse)

    # ------------------------------------------------------------------ wrapping

    def _wrap(self, name: str, caller: Caller, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        h: Any = handler  # grpc's _RPCMethodHandler, a namedtuple
        changes: dict[str, Any] = {}
        if name in RAW_BYTES_METHODS:
            changes.update(request_deserializer=None, response_serializer=None)
        if h.unary_unary is not None:
            changes["unary_unary"] = self._unary(name, caller, h.unary_unary, h.request_deserializer)
            changes["request_deserializer"] = None
        elif h.unary_stream is not None:
            changes["unary_stream"] = self._unary_stream(name, caller, h.unary_stream, h.request_deserializer)
            changes["request_deserializer"] = None
        elif h.stream_unary is not None:
            changes["stream_unary"] = self._unary(name, caller, h.stream_unary, None)
        else:
            changes["stream_stream"] = self._stream(name, caller, h.stream_stream)
        return h._replace(**changes)

    def _decode(self, name: str, raw: Any, deserializer: Callable[[bytes], Any] | None) -> Any:
        """A unary request, refused above its method's limit before it is decoded."""
        if deserializer is None:
            return raw
        limit = REQUEST_LIMITS.get(name, DEFAULT_REQUEST_LIMIT)
        if len(raw) > limit:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"a {name} request of {format_bytes(len(raw))} is larger than the "
                           f"{format_bytes(limit)} this worker accepts for it")
        try:
            return deserializer(raw)
        except DecodeError:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request") from None

    async def _fail(self, name: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        code, message, trailers = _status(exc)
        self.metrics.rpc_error(name, code.name)
        await context.abort(code, message, trailing_metadata=trailers)

    def _unary(self, name: str, caller: Caller, behavior: Behavior,
               deserializer: Callable[[bytes], Any] | None) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _caller.set(caller)
            try:
                return await behavior(self._decode(name, request, deserializer), context)
            except (RpcError, ledger_mod.LedgerError) as exc:
                await self._fail(name, exc, context)

        return call

    def _unary_stream(self, name: str, caller: Caller, behavior: Behavior,
                      deserializer: Callable[[bytes], Any] | None) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _caller.set(caller)
            try:
                async for item in behavior(self._decode(name, request, deserializer), context):
                    yield item
            except (RpcError, ledger_mod.LedgerError) as exc:
                await self._fail(name, exc, context)

        return call

    def _stream(self, name: str, caller: Caller, behavior: Behavior) -> Behavior:
        async def call(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _caller.set(caller)
            try:
                async for item in behavior(request_iterator, context):
                    yield item
            except (RpcError, ledger_mod.LedgerError) as exc:
                await self._fail(name, exc, context)

        return call
