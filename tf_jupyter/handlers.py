"""REST and WebSocket API under /tf-vgpu/api/ (described in tf_jupyter/openapi.yaml).

Handlers only translate HTTP to pool calls. Every one is authenticated and authorized with
jupyter_server's decorators (resource "kernels": a user who may read kernels may read slices);
errors are JSON `{"message": ...}` a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web, websocket

from tf_jupyter.pool import Pool
from tf_remoting.client import RemotingError
from tf_remoting.quantities import QuantityError, parse_bytes, parse_percent

if TYPE_CHECKING:
    from tf_jupyter.app import TfVgpuApp

AUTH_RESOURCE = "kernels"
STATUS_OF = {"NOT_FOUND": 404, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 409, "INVALID_ARGUMENT": 400,
             "FAILED_PRECONDITION": 409, "UNAVAILABLE": 503, "UNAUTHENTICATED": 502}


def _above_zero(digits: int) -> str:
    """A decimal number above 0 with at most `digits` digits before the point (leading zeros aside)."""
    return rf"0*(?:[1-9][0-9]{{0,{digits - 1}}}(?:\.[0-9]*)?|\.[0-9]*[1-9][0-9]*)"


# The strings PATCH /tf-vgpu/api/kernels/<id> takes, exactly as openapi.yaml's VramQuantity and
# ComputeQuantity patterns say (tests/fuzz/test_rest_fuzz.py checks that they are the same): what
# parse_bytes / parse_percent read, in ASCII, above 0, and small enough for the worker (below 2^62 bytes).
VRAM_PATTERN = "^ *(?:" + "|".join(_above_zero(digits) + unit for digits, unit in (
    (18, ""), (15, " *[kK][iI]?"), (12, " *[mM][iI]?"), (9, " *[gG][iI]?"), (6, " *[tT][iI]?"),
    (3, " *[pP][iI]?"))) + ") *[bB]? *$"
COMPUTE_PATTERN = r"^ *0*(?:[1-9][0-9]?|100)(?:\.0*)? *%? *$"
_VRAM_RE = re.compile(VRAM_PATTERN)
_COMPUTE_RE = re.compile(COMPUTE_PATTERN)
_VRAM_HINT = ("write a size above 0 with an optional unit (Ki, Mi, Gi, Ti, Pi or K, M, G, T, P) and an optional B, "
              "only spaces around them, e.g. 4Gi or 512Mi; at most 18 digits before the point without a unit, "
              "15 with K, 12 with M, 9 with G, 6 with T, 3 with P")
_COMPUTE_HINT = "write a whole percent from 1 to 100 with an optional %, e.g. 25 or 25%"


def allowed_methods(handler: type[web.RequestHandler]) -> list[str]:
    """The methods a handler class answers: those it (or a Jupyter/tf_jupyter base) defines, not tornado's 405s."""
    return [m for m in web.RequestHandler.SUPPORTED_METHODS if m in handler.SUPPORTED_METHODS
            and getattr(handler, m.lower(), None) is not getattr(web.RequestHandler, m.lower(), None)]


async def authorize_read(handler: JupyterHandler) -> None:
    """403 unless the authorizer lets the (authenticated) user read AUTH_RESOURCE, as @authorized says it."""
    allowed = await ensure_async(handler.authorizer.is_authorized(handler, handler.current_user, "read",
                                                                  AUTH_RESOURCE))
    if not allowed:
        raise web.HTTPError(403, f"User is not authorized to read on resource: {AUTH_RESOURCE}.")


def quantity(body: dict[str, Any], name: str, parse: Callable[[Any], int], pattern: re.Pattern[str], what: str,
             hint: str) -> int | None:
    """body[name] read by `parse` (its message when it cannot), a string also held to `pattern`."""
    if name not in body:
        return None
    value = body[name]
    parsed = parse(value)
    if isinstance(value, str) and not pattern.fullmatch(value):
        raise QuantityError(f"invalid {what} {value!r}: {hint}")
    return parsed


def server_pool(settings: dict[str, Any]) -> Pool | None:
    """The pool of this server's tf_jupyter extension (it puts itself in the tornado settings); None if unset."""
    app: TfVgpuApp | None = settings.get("tf_vgpu")
    return app.pool if app is not None else None


class VgpuHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def pool(self) -> Pool:
        pool = server_pool(self.settings)
        if pool is None:
            raise web.HTTPError(503, "the vGPU pool is not available: no worker could be configured (see the "
                                "server log)")
        return pool

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        if status_code == 405:
            self.set_header("Allow", ", ".join(allowed_methods(type(self))))  # RFC 9110: a 405 says what is allowed
        reason = kwargs.get("reason") or self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args  # tornado stores "%" as "%%" when there are no args
        if status_code == 403 and (message == reason or "_xsrf" in message):  # not authenticated
            message = ("not authenticated: send this Jupyter server's token as the header 'Authorization: token "
                       "<token>' (a logged-in browser session also needs its _xsrf token)")
        self.finish(json.dumps({"message": message, "status": status_code}))

    def _kernel(self, kernel_id: str) -> None:
        """404 unless the kernel is one of this server's vGPU kernels."""
        if kernel_id not in self.pool.kernels:
            known = kernel_id in self.kernel_manager if self.kernel_manager is not None else False
            raise web.HTTPError(404, f"kernel {kernel_id} " + ("has no vGPU slice" if known else "is unknown"))

    def json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class PoolHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        pool = self.pool
        if any(w.inventory is None and w.failures == 0 for w in pool.workers.values()):
            await pool.refresh()  # a worker not asked yet (the server just started): ask now, not "down"
        self.json(pool.pool_json())


class KernelsHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        pool = self.pool
        self.json({"kernels": [pool.kernel_json(k) for k in list(pool.kernels)]})


class KernelHandler(VgpuHandler):

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self._kernel(kernel_id)
        self.json(self.pool.kernel_json(kernel_id))

    @web.authenticated
    @authorized
    async def patch(self, kernel_id: str) -> None:
        """Resize a kernel's slice: {"vram": "8Gi", "compute": "50%"} (either may be left out)."""
        self._kernel(kernel_id)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON, e.g. {\"vram\": \"8Gi\", \"compute\": \"50%\"}") from None
        except RecursionError:  # the parser recurses per level: [[[[...]]]] deep enough exhausts the stack
            raise web.HTTPError(400, "the body is JSON nested too deeply to read; send one flat object, e.g. "
                                "{\"vram\": \"8Gi\", \"compute\": \"50%\"}") from None
        if not isinstance(body, dict) or not body or set(body) - {"vram", "compute"}:
            raise web.HTTPError(400, "give vram and/or compute, e.g. {\"vram\": \"8Gi\", \"compute\": \"50%\"}")
        try:
            vram = quantity(body, "vram", parse_bytes, _VRAM_RE, "memory quantity", _VRAM_HINT)
            compute = quantity(body, "compute", parse_percent, _COMPUTE_RE, "percentage", _COMPUTE_HINT)
        except QuantityError as exc:
            raise web.HTTPError(400, str(exc)) from None
        try:
            await self.pool.resize(kernel_id, vram, compute)
        except RemotingError as exc:
            raise web.HTTPError(STATUS_OF.get(exc.code.name, 500), exc.message) from None
        self.json(self.pool.kernel_json(kernel_id))


class KernelHistoryHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """The kernel's last 10 minutes of samples, oldest first (tf_jupyter/history.py). A kernel of
        ours that ended lately has none left (200, no samples): a panel that listed it just before it
        ended asks without an error."""
        if kernel_id not in self.pool.ended:
            self._kernel(kernel_id)
        self.json(self.pool.history_json(kernel_id))


def admin_view(pool: Pool) -> dict[str, Any]:
    """The admin view; 403 when no worker up lists this server's principal as an admin."""
    view = pool.admin_json()
    if view is None:
        raise web.HTTPError(403, "the admin view is for principals the workers list as admins "
                            "(admin_principals or admin_groups in the worker's settings); no worker up "
                            "shows this server's principal every principal's leases")
    return view


class AdminHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.json(admin_view(self.pool))


class AdminReleaseHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        """{"worker": address, "lease_id": id}: release any principal's lease (its kernel ends)."""
        example = '{"worker": "10.0.0.5:50051", "lease_id": "..."}'
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            raise web.HTTPError(400, "the body must be a JSON object, e.g. %s", example) from None
        if (not isinstance(body, dict) or set(body) != {"worker", "lease_id"}
                or not all(isinstance(body[k], str) and body[k] for k in body)):
            raise web.HTTPError(400, "give exactly worker and lease_id, both non-empty strings, e.g. %s", example)
        admin_view(self.pool)  # 403 for non-admins before anything is asked of a worker
        if body["worker"] not in self.pool.workers:
            raise web.HTTPError(404, "worker %s is not in this server's pool (GET /tf-vgpu/api/pool lists them)",
                                body["worker"])
        try:
            released = await self.pool.release_as_admin(body["worker"], body["lease_id"])
        except RemotingError as exc:
            raise web.HTTPError(STATUS_OF.get(exc.code.name, 500), exc.message) from None
        self.pool.emit("admin_release", f"lease {body['lease_id']} on {body['worker']} released by an admin",
                       lease_id=body["lease_id"], worker=body["worker"])
        self.json({"released": body["lease_id"] if released else ""})


class QueueHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.json({"queue": self.pool.queue_json()})


class ProfilesHandler(VgpuHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        app: TfVgpuApp = self.settings["tf_vgpu"]
        # small -> large by total size, whole devices last: the launcher's order (labextension launcherOrder.ts)
        small_first = sorted(app.profiles(), key=lambda p: (p.whole_device, p.count * p.vram, p.count * p.compute,
                                                            p.count, p.name))
        self.json({"profiles": [{**p.to_metadata(), "kernelspec": p.kernelspec_name,
                                 "display_name": p.display_name} for p in small_first]})


class EventsHandler(websocket.WebSocketHandler, JupyterHandler):
    """Pushes samples and events from all workers as JSON messages (see openapi.yaml)."""

    auth_resource = AUTH_RESOURCE
    _queue: asyncio.Queue[dict[str, Any]] | None = None
    _pump: asyncio.Task[None] | None = None

    def check_origin(self, origin: str | None = None) -> bool:
        # jupyter_server's xsrf check calls check_origin() without an origin; tornado's needs one.
        return JupyterHandler.check_origin(self) if origin is None else bool(super().check_origin(origin))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        VgpuHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await authorize_read(self)  # what @authorized does for the REST handlers (it cannot wrap a WebSocket)
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPError(400, "this is a WebSocket: connect to ws://<server>/tf-vgpu/api/events")
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        pool = server_pool(self.settings)
        if pool is None:
            self.close(1011, "the vGPU pool is not available")
            return
        self._queue = pool.subscribe()
        self.write_message(json.dumps({"type": "hello", "pool": pool.pool_json(),
                                       "kernels": [pool.kernel_json(k) for k in list(pool.kernels)],
                                       "queue": pool.queue_json()}))
        self._pump = asyncio.create_task(self._forward(self._queue))

    async def _forward(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            message = await queue.get()
            try:
                await self.write_message(json.dumps(message))
            except websocket.WebSocketClosedError:
                return

    def on_message(self, message: str | bytes) -> None:
        pass  # nothing to receive; pings are handled by tornado

    def on_close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        pool = server_pool(self.settings)
        if pool is not None and self._queue is not None:
            pool.unsubscribe(self._queue)


class NotFoundHandler(VgpuHandler):
    """Anything else under /tf-vgpu/api/: a JSON 404 (after authentication) instead of Jupyter's HTML page."""

    async def prepare(self) -> None:  # type: ignore[override]  # APIHandler.prepare narrows it the same way
        await super().prepare()
        if self.current_user is None:
            raise web.HTTPError(403)
        await authorize_read(self)  # who may not read the API learns nothing of it, not even its paths
        path = self.request.path
        kernels = "/tf-vgpu/api/kernels/"
        if kernels in path and path.split(kernels, 1)[1].strip("/"):
            raise web.HTTPError(404, "kernel %s is unknown (a kernel id has only letters, digits, '-' and '_'; "
                                "GET /tf-vgpu/api/kernels lists them)", unquote(path.split(kernels, 1)[1]))
        raise web.HTTPError(404, "%s is not part of the vGPU API (its paths: /tf-vgpu/api/pool, kernels, "
                            "kernels/<kernel_id>, kernels/<kernel_id>/history, queue, profiles, admin, admin/release, "
                            "events)", path)


_KERNEL_ID = r"(?P<kernel_id>[\w-]+)"


def routes() -> list[tuple[str, type]]:
    return [
        (r"/tf-vgpu/api/pool", PoolHandler),
        (r"/tf-vgpu/api/kernels", KernelsHandler),
        (rf"/tf-vgpu/api/kernels/{_KERNEL_ID}", KernelHandler),
        (rf"/tf-vgpu/api/kernels/{_KERNEL_ID}/history", KernelHistoryHandler),
        (r"/tf-vgpu/api/admin", AdminHandler),
        (r"/tf-vgpu/api/admin/release", AdminReleaseHandler),
        (r"/tf-vgpu/api/queue", QueueHandler),
        (r"/tf-vgpu/api/profiles", ProfilesHandler),
        (r"/tf-vgpu/api/events", EventsHandler),
        (r"/tf-vgpu/api/.*", NotFoundHandler),  # last: tornado takes the first route that matches
    ]
