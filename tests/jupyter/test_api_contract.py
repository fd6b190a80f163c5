"""tf_jupyter/openapi.yaml matches the handlers: the same routes and methods, and real responses validate.

The OpenAPI 3.0 schema objects are checked with plain `jsonschema` (Draft 4, which OpenAPI 3.0's schema
dialect extends): `#/components/schemas/...` refs resolve inside the document; the OpenAPI-only keywords
(`nullable`, `discriminator`, `example`) are translated or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import tf_jupyter
from tf_jupyter.handlers import routes
from tf_jupyter.pytest_plugin import JupyterServerProcess
from tf_remoting.pytest_plugin import WorkerProcess

SPEC_PATH = Path(tf_jupyter.__file__).parent / "openapi.yaml"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def to_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema (Draft 4)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if k not in ("discriminator", "example", "nullable")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


class Contract:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.components = to_json_schema(spec["components"])

    def validator(self, schema: dict[str, Any]) -> jsonschema.Draft4Validator:
        root = {"allOf": [to_json_schema(schema)], "components": self.components}
        return jsonschema.Draft4Validator(root)

    def component(self, name: str) -> jsonschema.Draft4Validator:
        return self.validator({"$ref": f"#/components/schemas/{name}"})

    def response_schema(self, path: str, method: str, status: int) -> dict[str, Any]:
        operation = self.spec["paths"][path][method]
        responses = operation["responses"]
        assert str(status) in responses, f"{method.upper()} {path} answered {status}, not in openapi.yaml"
        response = responses[str(status)]
        if "$ref" in response:
            response = self.spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        return response["content"]["application/json"]["schema"]

    def check(self, path: str, method: str, status: int, body: Any) -> None:
        validator = self.validator(self.response_schema(path, method, status))
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, f"{method.upper()} {path} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]) + f"\n{json.dumps(body)[:2000]}"


def openapi_path(pattern: str) -> str:
    """tornado's route pattern as an OpenAPI path: (?P<kernel_id>...) -> {kernel_id}."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).rstrip("$")


def served() -> set[tuple[str, str]]:
    """(path, method) of every route, methods from what tf_jupyter's handler classes define."""
    out = set()
    for pattern, handler in routes():
        own = [k for k in handler.__mro__ if k.__module__.startswith("tf_jupyter")]
        for method in HTTP_METHODS:
            if any(method in k.__dict__ for k in own):
                out.add((openapi_path(pattern), method))
    return out


def documented(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


# ---------------------------------------------------------------------------- the document itself


def test_routes_and_methods_match_the_handlers() -> None:
    spec = load_spec()
    assert spec["openapi"] == "3.0.3"
    assert documented(spec) == served()
    assert ("/tf-vgpu/api/kernels/{kernel_id}", "patch") in served()


def test_document_is_well_formed() -> None:
    spec = load_spec()
    text = SPEC_PATH.read_text()
    for ref in set(re.findall(r"#/components/(\w+)/(\w+)", text)):
        assert ref[1] in spec["components"][ref[0]], f"dangling $ref #/components/{ref[0]}/{ref[1]}"
    scheme = spec["components"]["securitySchemes"]["JupyterToken"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "Authorization"}
    assert spec["security"] == [{"JupyterToken": []}]
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"message", "status"}
    assert error["properties"]["message"]["type"] == "string" and error["properties"]["status"]["type"] == "integer"
    contract = Contract(spec)
    for schema in contract.components["schemas"].values():
        jsonschema.Draft4Validator.check_schema(schema)
    ids = []
    for path, item in spec["paths"].items():
        params = {p["name"] for p in item.get("parameters", [])}
        assert params == set(re.findall(r"{(\w+)}", path)), path
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            ids.append(operation["operationId"])
            statuses = set(operation["responses"])
            assert "403" in statuses, f"{method} {path}: every route is authenticated"
            for status in statuses - {"101"}:
                contract.response_schema(path, method, int(status))  # every response has a JSON schema
    assert len(ids) == len(set(ids))
    kernel = spec["paths"]["/tf-vgpu/api/kernels/{kernel_id}"]
    assert {"400", "403", "404", "409", "503"} <= set(kernel["patch"]["responses"])
    assert {"403", "404", "503"} <= set(kernel["get"]["responses"])
    # The events socket documents every message type the pool sends.
    events = spec["paths"]["/tf-vgpu/api/events"]["get"]
    for kind in ("hello", "sample", "event", "worker", "queue"):
        assert f"`{kind}`" in events["description"], kind
    assert set(spec["components"]["schemas"]["EventMessage"]["discriminator"]["mapping"]) == {
        "hello", "sample", "event", "worker", "queue"}


def test_resize_request_schema_agrees_with_the_handler() -> None:
    contract = Contract(load_spec())
    body = contract.component("ResizeRequest")
    for good in ({"vram": "8Gi"}, {"compute": "50%"}, {"vram": 1 << 30, "compute": 25}):
        assert body.is_valid(good), good
    for bad in ({}, {"memory": "8Gi"}, {"vram": "8Gi", "extra": 1}, [], "8Gi"):
        assert not body.is_valid(bad), bad
    example = contract.spec["paths"]["/tf-vgpu/api/kernels/{kernel_id}"]["patch"]["requestBody"]["content"][
        "application/json"]["example"]
    assert body.is_valid(example)


async def test_server_side_events_validate() -> None:
    """Messages built by the pool itself (worker up/down, queue, server events) fit the schemas.

    Async: the pool's worker clients are grpc.aio channels, which need a running loop."""
    from tf_jupyter.pool import Pool
    from tf_remoting.proto import pb

    contract = Contract(load_spec())
    message = contract.component("EventMessage")
    pool = Pool([], "token")
    queue = pool.subscribe()
    down = pool.workers.add("127.0.0.1:1")
    pool.workers.mark_down(down, "connection refused")
    pool.events.broadcast({"type": "worker", "worker": "127.0.0.1:1", "up": True})
    pool.scheduler.on_queue_change()
    pool.emit("idle_warning", "kernel idle for 600 s", kernel_id="k1")
    pool._on_update(down, pb.WatchResponse(
        time=time.time(), devices=[pb.DeviceSample(device_uuid="host-0", vram_total=4 << 30)],
        leases=[pb.LeaseSample(lease_id="l1", device_uuid="host-0", mode=pb.ISOLATION_MODE_HOST)],
        events=[pb.Event(kind=pb.EVENT_KIND_LEASE_RELEASED, message="freed", lease_id="l1", time=time.time())]))
    seen = []
    while not queue.empty():
        m = queue.get_nowait()
        seen.append(m["type"])
        errors = list(message.iter_errors(m))
        assert not errors, (m, [e.message for e in errors])
    assert seen == ["worker", "worker", "queue", "event", "sample", "event"]
    assert contract.component("Pool").is_valid(pool.pool_json())
    await pool.stop()


# ---------------------------------------------------------------------------- against a real server


@pytest.fixture(scope="module")
def live() -> Iterator[dict[str, Any]]:
    """A worker (4 GiB host device), a Jupyter server, and one vgpu-small kernel through /api/sessions."""
    worker = WorkerProcess(["--host-vram", "4Gi"])
    server = None
    try:
        worker.start()
        server = JupyterServerProcess(workers=[worker])
        server.start()
        status, session = server._open("POST", "/api/sessions", {
            "path": "contract.ipynb", "type": "notebook", "name": "contract.ipynb",
            "kernel": {"name": "vgpu-small"}}, timeout=90)
        assert status == 201, (session, server.log())
        yield {"worker": worker, "server": server, "kernel_id": session["kernel"]["id"],
               "contract": Contract(load_spec())}
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        worker.cleanup()


async def call(live: dict[str, Any], method: str, path: str, body: Any = None, template: str = "") -> Any:
    server: JupyterServerProcess = live["server"]
    status, answer = await server.request(method, path, body, timeout=30)
    try:
        live["contract"].check(template or path, method.lower(), status, answer)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{answer}\nserver log:\n{server.log()[-3000:]}") from None
    return status, answer


async def test_pool_kernels_queue_profiles_validate(live: dict[str, Any]) -> None:
    status, pool = await call(live, "GET", "/tf-vgpu/api/pool")
    assert status == 200 and pool["workers"][0]["up"] and pool["workers"][0]["leases"] == 1

    status, kernels = await call(live, "GET", "/tf-vgpu/api/kernels")
    assert status == 200 and [k["kernel_id"] for k in kernels["kernels"]] == [live["kernel_id"]]
    # The full kernel view, optional fields included, is what the schema describes.
    kernel = kernels["kernels"][0]
    properties = live["contract"].spec["components"]["schemas"]["Kernel"]["properties"]
    assert set(kernel) == set(properties)

    status, queue = await call(live, "GET", "/tf-vgpu/api/queue")
    assert status == 200 and queue == {"queue": []}

    status, profiles = await call(live, "GET", "/tf-vgpu/api/profiles")
    assert status == 200 and "small" in {p["name"] for p in profiles["profiles"]}


async def test_kernel_get_and_resize_validate(live: dict[str, Any]) -> None:
    template = "/tf-vgpu/api/kernels/{kernel_id}"
    path = f"/tf-vgpu/api/kernels/{live['kernel_id']}"
    status, kernel = await call(live, "GET", path, template=template)
    assert status == 200 and kernel["slice"] == {"vram": 4 << 30, "compute": 10, "count": 1}

    status, resized = await call(live, "PATCH", path, {"compute": "20%"}, template=template)
    assert status == 200, resized
    assert resized["slice"]["compute"] == 20 and resized["lease_id"] == kernel["lease_id"]

    # Error responses validate too (the Error schema of each documented status).
    status, _ = await call(live, "GET", "/tf-vgpu/api/kernels/no-such-kernel", template=template)
    assert status == 404
    status, _ = await call(live, "PATCH", path, {"vram": "4Gx"}, template=template)
    assert status == 400
    status, _ = await call(live, "PATCH", path, {"vram": "64Gi"}, template=template)
    assert status == 409
    server: JupyterServerProcess = live["server"]
    status, body = await server.request("GET", "/tf-vgpu/api/queue", token="wrong", timeout=30)
    live["contract"].check("/tf-vgpu/api/queue", "get", status, body)
    assert status == 403


async def test_events_websocket_messages_validate(live: dict[str, Any]) -> None:
    server: JupyterServerProcess = live["server"]
    message = live["contract"].component("EventMessage")
    ws = await asyncio.wait_for(server.websocket("/tf-vgpu/api/events"), 20)
    try:
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while "sample" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no sample message within 20 s; got {sorted(seen)}"
            raw = await asyncio.wait_for(ws.read_message(), remaining)
            assert raw is not None, "events socket closed"
            msg = json.loads(raw)
            if not seen:
                assert msg["type"] == "hello"
            errors = list(message.iter_errors(msg))
            assert not errors, (msg, [e.message for e in errors])
            seen.setdefault(msg["type"], msg)
        hello, sample = seen["hello"], seen["sample"]
        assert [k["kernel_id"] for k in hello["kernels"]] == [live["kernel_id"]]
        assert sample["worker"] == live["worker"].address
        leases = [s for s in sample["leases"] if s["kernel_id"] == live["kernel_id"]]
        assert leases or sample["devices"], sample
    finally:
        ws.close()
