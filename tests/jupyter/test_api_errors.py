"""Bad requests to /tf-vgpu/api/ get 4xx JSON a person can act on; a second principal cannot touch the first's lease.

One worker (4 GiB host device, principals alice and bob), alice's Jupyter server with one vgpu-small kernel and
one plain python3 kernel, and (for the principal tests) bob's Jupyter server on the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tf_jupyter.handlers import routes
from tf_jupyter.pytest_plugin import JupyterServerProcess
from tf_remoting.client import PermissionDenied, RuntimeClient
from tf_remoting.pytest_plugin import WorkerProcess

TIMEOUT = 30.0


def start_server(worker: WorkerProcess, servers: list[JupyterServerProcess], **settings: Any) -> JupyterServerProcess:
    server = JupyterServerProcess(workers=[worker], settings=settings or None)
    servers.append(server)
    return server.start()


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    worker = WorkerProcess(["--host-vram", "4Gi"])
    servers: list[JupyterServerProcess] = []
    try:
        worker.start()
        alice = start_server(worker, servers)
        status, session = alice._open("POST", "/api/sessions", {
            "path": "errors.ipynb", "type": "notebook", "name": "errors.ipynb", "kernel": {"name": "vgpu-small"}},
            timeout=90)
        assert status == 201, (session, alice.log())
        kernel_id = session["kernel"]["id"]
        status, plain = alice._open("POST", "/api/kernels", {"name": "python3"}, timeout=90)
        assert status == 201, (plain, alice.log())
        status, info = alice._open("GET", f"/tf-vgpu/api/kernels/{kernel_id}", timeout=TIMEOUT)
        assert status == 200, info
        yield {"worker": worker, "alice": alice, "kernel_id": kernel_id, "lease_id": info["lease_id"],
               "plain_id": plain["id"], "servers": servers}
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.cleanup()
        worker.cleanup()


@pytest.fixture(scope="module")
def bob(env: dict[str, Any]) -> JupyterServerProcess:
    """A second Jupyter server that reaches the same worker as principal bob."""
    worker: WorkerProcess = env["worker"]
    token_file = worker.root / "bob-token"
    token_file.write_text(f"bob {worker.other_token}\n")
    return start_server(worker, env["servers"], token_file=str(token_file))


def kernel_path(env: dict[str, Any], kernel_id: str | None = None) -> str:
    return f"/tf-vgpu/api/kernels/{kernel_id or env['kernel_id']}"


def assert_error(status: int, body: Any, expected: int, *words: str) -> str:
    """A JSON error {message, status} with the expected status whose message contains every word."""
    assert status == expected, (status, body)
    assert isinstance(body, dict) and set(body) >= {"message", "status"}, body
    assert body["status"] == expected and isinstance(body["message"], str) and body["message"].strip(), body
    assert "%%" not in body["message"], body  # tornado's escaping must not leak into the message
    for word in words:
        assert word in body["message"], (word, body["message"])
    return str(body["message"])


# ---------------------------------------------------------------------------- bad resize bodies


async def test_patch_with_invalid_json(env: dict[str, Any]) -> None:
    status, body = await env["alice"].request("PATCH", kernel_path(env), b"{vram: 8Gi", timeout=TIMEOUT)
    assert_error(status, body, 400, "JSON", '"vram"')


@pytest.mark.parametrize("depth", [100_000, 1_000_000])
async def test_patch_nested_too_deep_is_400_not_500(env: dict[str, Any], depth: int) -> None:
    """JSON nested past the parser's recursion limit (RecursionError, a 500 and a traceback before)."""
    body = b"[" * depth + b"]" * depth
    tracebacks = env["alice"].log().count("Traceback")
    status, reply = await env["alice"].request("PATCH", kernel_path(env), body, timeout=TIMEOUT)
    assert_error(status, reply, 400, "nested", '"vram"')
    assert env["alice"].log().count("Traceback") == tracebacks, env["alice"].log()[-3000:]


@pytest.mark.parametrize("payload", [{}, [], "8Gi", {"memory": "8Gi"}, {"vram": "4Gi", "gpus": 2}],
                         ids=["empty", "list", "string", "unknown-field", "extra-field"])
async def test_patch_without_vram_or_compute(env: dict[str, Any], payload: Any) -> None:
    status, body = await env["alice"].request("PATCH", kernel_path(env), payload, timeout=TIMEOUT)
    assert_error(status, body, 400, "vram", "compute")


async def test_patch_with_a_bad_quantity_names_it(env: dict[str, Any]) -> None:
    status, body = await env["alice"].request("PATCH", kernel_path(env), {"vram": "4Gx"}, timeout=TIMEOUT)
    assert_error(status, body, 400, "4Gx", "Gi")
    status, body = await env["alice"].request("PATCH", kernel_path(env), {"vram": None}, timeout=TIMEOUT)
    assert_error(status, body, 400, "memory quantity")


async def test_patch_with_compute_over_100_percent(env: dict[str, Any]) -> None:
    status, body = await env["alice"].request("PATCH", kernel_path(env), {"compute": "250%"}, timeout=TIMEOUT)
    assert_error(status, body, 400, "'250%'", "at most 100 %")


async def test_resize_bigger_than_the_worker_is_a_conflict(env: dict[str, Any]) -> None:
    status, body = await env["alice"].request("PATCH", kernel_path(env), {"vram": "64Gi"}, timeout=TIMEOUT)
    message = assert_error(status, body, 409, "cannot resize", env["lease_id"], "free")
    assert "64 GiB VRAM / 10 % compute" in message, message
    # Nothing changed.
    status, info = await env["alice"].request("GET", kernel_path(env), timeout=TIMEOUT)
    assert status == 200 and info["slice"]["vram"] == 4 << 30


# ---------------------------------------------------------------------------- unknown kernels


async def test_unknown_kernel_is_404(env: dict[str, Any]) -> None:
    path = kernel_path(env, "0f0e0d0c-no-such-kernel")
    status, body = await env["alice"].request("GET", path, timeout=TIMEOUT)
    assert_error(status, body, 404, "0f0e0d0c-no-such-kernel", "unknown")
    status, body = await env["alice"].request("PATCH", path, {"compute": "20%"}, timeout=TIMEOUT)
    assert_error(status, body, 404, "0f0e0d0c-no-such-kernel", "unknown")


async def test_kernel_without_a_slice_is_404(env: dict[str, Any]) -> None:
    path = kernel_path(env, env["plain_id"])
    status, body = await env["alice"].request("GET", path, timeout=TIMEOUT)
    assert_error(status, body, 404, env["plain_id"], "has no vGPU slice")
    status, body = await env["alice"].request("PATCH", path, {"vram": "1Gi"}, timeout=TIMEOUT)
    assert_error(status, body, 404, "has no vGPU slice")
    status, kernels = await env["alice"].request("GET", "/tf-vgpu/api/kernels", timeout=TIMEOUT)
    assert status == 200 and [k["kernel_id"] for k in kernels["kernels"]] == [env["kernel_id"]]


# ---------------------------------------------------------------------------- authentication


async def test_wrong_token_is_403_on_every_route(env: dict[str, Any]) -> None:
    alice: JupyterServerProcess = env["alice"]
    checked = []
    for pattern, handler in routes():
        if "events" in pattern:
            continue
        path = pattern.replace(r"(?P<kernel_id>[\w-]+)", env["kernel_id"])
        assert "(" not in path, f"a route with a parameter this test does not know: {pattern}"
        methods = [m for m in ("get", "patch", "post", "put", "delete")
                   if any(m in k.__dict__ for k in handler.__mro__ if k.__module__.startswith("tf_jupyter"))]
        for method in methods:
            body = {"compute": "20%"} if method != "get" else None
            for token in ("wrong", ""):
                status, answer = await alice.request(method.upper(), path, body, token=token, timeout=TIMEOUT)
                assert_error(status, answer, 403, "Authorization: token")
            checked.append((method, path))
    assert len(checked) >= 6, checked
    with pytest.raises(HTTPClientError) as info:
        await asyncio.wait_for(alice.websocket("/tf-vgpu/api/events", token="wrong"), TIMEOUT)
    assert info.value.code == 403
    # And nothing was resized by the refused PATCH.
    status, kernel = await alice.request("GET", kernel_path(env), timeout=TIMEOUT)
    assert status == 200 and kernel["slice"]["compute"] == 10


# A jupyter_server Authorizer (ServerApp.authorizer_class) that refuses the vGPU API and logs what it was asked;
# loaded by the server process from its own root directory.
DENY_VGPU_API = """
from pathlib import Path

from jupyter_server.auth.authorizer import Authorizer


class DenyVgpuApi(Authorizer):
    def is_authorized(self, handler, user, action, resource):
        if not handler.request.path.startswith("/tf-vgpu/"):
            return True
        with open(Path(__file__).with_name("asked.log"), "a") as log:
            log.write(f"{handler.request.method} {handler.request.path} {action} {resource}\\n")
        return False
"""


class DenyingServer(JupyterServerProcess):
    """A Jupyter server whose authorizer refuses everything under /tf-vgpu/ (the rest stays allowed)."""

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__(workers=[worker])
        (self.root / "deny_vgpu_api.py").write_text(DENY_VGPU_API)
        self.config["ServerApp"] = {"authorizer_class": "deny_vgpu_api.DenyVgpuApi"}

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        return env

    def asked(self) -> list[str]:
        path = self.root / "asked.log"
        return path.read_text().splitlines() if path.exists() else []


async def test_authorizer_refusal_is_403_on_every_route(env: dict[str, Any]) -> None:
    """Authenticated but not authorized: every route, the events WebSocket included, asks jupyter_server's
    authorizer about resource "kernels" and answers 403 with a JSON message, not the data."""
    server = DenyingServer(env["worker"])
    env["servers"].append(server)
    await asyncio.to_thread(server.start)
    expected = []
    for pattern, handler in routes():
        path = pattern.replace(r"(?P<kernel_id>[\w-]+)", env["kernel_id"]).replace(".*", "no-such-path")
        assert "(" not in path, f"a route with a parameter this test does not know: {pattern}"
        if "events" in pattern:
            with pytest.raises(HTTPClientError) as info:
                await asyncio.wait_for(server.websocket(path), TIMEOUT)
            assert info.value.code == 403
            expected.append(f"GET {path} read kernels")
            continue
        methods = [m for m in ("get", "patch", "post", "put", "delete")
                   if any(m in k.__dict__ for k in handler.__mro__ if k.__module__.startswith("tf_jupyter"))] or ["get"]
        for method in methods:
            body = {"compute": "20%"} if method != "get" else None
            status, answer = await server.request(method.upper(), path, body, timeout=TIMEOUT)
            assert_error(status, answer, 403, "not authorized", "kernels")
            expected.append(f"{method.upper()} {path} {'read' if method == 'get' else 'write'} kernels")
    assert sorted(server.asked()) == sorted(expected)
    assert len(expected) >= 8, expected
    # The server itself still answers: only the vGPU API was refused.
    status, _ = await server.request("GET", "/api/status", timeout=TIMEOUT)
    assert status == 200


# ---------------------------------------------------------------------------- a second principal


async def test_second_principal_does_not_see_the_kernel(env: dict[str, Any], bob: JupyterServerProcess) -> None:
    status, kernels = await bob.request("GET", "/tf-vgpu/api/kernels", timeout=TIMEOUT)
    assert status == 200 and kernels == {"kernels": []}
    status, body = await bob.request("GET", kernel_path(env), timeout=TIMEOUT)
    assert_error(status, body, 404, env["kernel_id"])
    status, pool = await bob.request("GET", "/tf-vgpu/api/pool", timeout=TIMEOUT)
    assert status == 200 and pool["workers"][0]["up"], pool
    assert env["lease_id"] not in json.dumps(pool) and env["kernel_id"] not in json.dumps(pool)
    # The events stream of bob's server carries no sample or event of alice's lease.
    ws = await asyncio.wait_for(bob.websocket("/tf-vgpu/api/events"), TIMEOUT)
    try:
        samples = 0
        deadline = time.monotonic() + 10
        while samples < 3 and time.monotonic() < deadline:
            raw = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None
            assert env["lease_id"] not in raw and env["kernel_id"] not in raw, raw
            samples += json.loads(raw)["type"] == "sample"
        assert samples, "no sample on bob's events stream"
    finally:
        ws.close()


async def test_second_principal_cannot_resize_through_its_server(env: dict[str, Any],
                                                                 bob: JupyterServerProcess) -> None:
    status, body = await bob.request("PATCH", kernel_path(env), {"compute": "50%"}, timeout=TIMEOUT)
    assert_error(status, body, 404, "unknown")
    status, info = await env["alice"].request("GET", kernel_path(env), timeout=TIMEOUT)
    assert status == 200 and info["slice"] == {"vram": 4 << 30, "compute": 10, "count": 1}


async def test_second_principal_cannot_renew_resize_or_release_the_lease(env: dict[str, Any]) -> None:
    worker: WorkerProcess = env["worker"]
    lease_id = env["lease_id"]
    async with RuntimeClient(worker.address, worker.other_token, timeout=TIMEOUT) as client:
        with pytest.raises(PermissionDenied, match="another principal"):
            await client.renew(lease_id)
        with pytest.raises(PermissionDenied):
            await client.resize(lease_id, 1 << 30, 50)
        with pytest.raises(PermissionDenied):
            await client.release(lease_id)
    async with RuntimeClient(worker.address, worker.token, timeout=TIMEOUT) as client:
        leases = {lease.id: lease for lease in await client.list_leases()}
    assert lease_id in leases and leases[lease_id].slices[0].compute == 10
    status, info = await env["alice"].request("GET", kernel_path(env), timeout=TIMEOUT)
    assert status == 200 and info["lease_id"] == lease_id
