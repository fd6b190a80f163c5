"""Fuzz the REST API of the server extension, driven by tf_jupyter/openapi.yaml.

A live Jupyter server with a live vGPU kernel (and a plain python3 kernel, which has no slice)
receives hypothesis-generated requests: every method on every path of the OpenAPI file (documented
or not), kernel ids that exist, are unknown or do not match the route, random query strings,
missing or wrong tokens, and bodies that are resize-like objects with random quantities, any JSON
value, or bytes that are not JSON (nor UTF-8).

Every answer must be: below 500, except 503 where the OpenAPI file documents it; a status the file
documents for a documented operation; an error that is JSON with a non-empty `message` when it comes
from our handlers; a 200 body that validates against the file's schema. Afterwards the server, the
worker and the kernel still serve. schemathesis is not in the test extras, so this is a small
hypothesis-based equivalent. The number of requests and the statuses seen are printed (pytest -s).
The /tf-vgpu/api/events error cases are pinned by the two
tests at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_jupyter
from tf_jupyter.pytest_plugin import KernelWebSocket, text_of

SPEC = yaml.safe_load((Path(tf_jupyter.__file__).parent / "openapi.yaml").read_text())
MAX_EXAMPLES = 2000
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
UNDOCUMENTED_METHOD = {405}  # tornado's answer to a method a handler does not define
EVENTS = "/tf-vgpu/api/events"


def operations() -> list[tuple[str, str, dict[str, Any] | None]]:
    """(path template, method, operation or None when the file does not document that method)."""
    out = []
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            out.append((path, method, item.get(method.lower())))
    return out


OPERATIONS = operations()
DOCUMENTED = [o for o in OPERATIONS if o[2] is not None]
RESIZE_OP = next(o for o in OPERATIONS if o[1] == "PATCH" and o[2] is not None)
# The routes as tornado matches them (the raw path, before percent-decoding), as in tf_jupyter.handlers.
ROUTES = [re.compile(re.sub(r"\{kernel_id\}", r"[\\w-]+", path) + "$") for path in SPEC["paths"]]


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def documented_statuses(op: dict[str, Any]) -> set[int]:
    return {int(code) for code in op["responses"]}


def response_schema(op: dict[str, Any], status: int) -> dict[str, Any] | None:
    response = op["responses"].get(str(status))
    if response is None:
        return None
    content = resolve(response).get("content", {}).get("application/json")
    return content["schema"] if content else None


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator({"components": SPEC["components"], **schema})


# ---------------------------------------------------------------- strategies

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
UNITS = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "K", "M", "G", "T", "k", "B", "KB", "MB", "GB", "GiB", "MiB",
         "%", "%%", " ", "Gx", "e9", "E", "i", "\x00", "٣"]
QUANTITY_STRINGS = st.builds(
    lambda sign, num, frac, space, unit: f"{sign}{num}{frac}{space}{unit}",
    st.sampled_from(["", "", "-", "+", " "]),
    st.one_of(st.integers(min_value=0, max_value=10**30).map(str), st.just(""), st.text("0123456789", max_size=40)),
    st.sampled_from(["", "", ".5", ".", ".000001", "e3", "1e400"]),
    st.sampled_from(["", "", " "]),
    st.sampled_from(UNITS),
)
QUANTITY = st.one_of(
    QUANTITY_STRINGS,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=0, max_value=8 << 30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1Gi", "512Mi", "256Mi", "5%", "1", "100%", "0", "0%", 1 << 20, 50]),
    st.text(max_size=12),
    JSON,
)
# Sizes a kernel may well be resized to (200), or that do not fit (409) or are out of range (400).
PLAUSIBLE = st.fixed_dictionaries({}, optional={
    "vram": st.sampled_from(["256Mi", "512Mi", "1Gi", "2Gi", "4Gi", "12Gi", "64Gi", "1Ti", 1 << 30, "0", 0, "1"]),
    "compute": st.sampled_from([1, 5, 10, "10%", "50%", 100, "100%", 101, 0, "0%"])})
RESIZE = (PLAUSIBLE | st.fixed_dictionaries({}, optional={"vram": QUANTITY, "compute": QUANTITY})
          | st.dictionaries(st.sampled_from(["vram", "compute", "VRAM", "count", "", "mode"]), QUANTITY, max_size=3))


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none", "resize", "resize", "resize", "json", "bytes", "text"]))
    if kind == "none":
        return None
    if kind == "resize":
        return json.dumps(draw(RESIZE)).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "text":
        return draw(st.text(max_size=40)).encode()
    return draw(st.binary(max_size=40))


SAFE_ID = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=40)


@st.composite
def cases(draw: st.DrawFn, live: dict[str, str]) -> dict[str, Any]:
    # Half the cases resize a kernel (the operation with a body), most of the rest are documented ones.
    path, method, op = draw(st.one_of(st.just(RESIZE_OP), st.just(RESIZE_OP), st.sampled_from(DOCUMENTED),
                                      st.sampled_from(OPERATIONS)))
    if "{kernel_id}" in path:
        # Mostly the live vGPU kernel (hypothesis would otherwise favour the ever-new random ids).
        which = draw(st.integers(min_value=0, max_value=9))
        kernel_id = (live["vgpu"] if which < 6 else live["plain"] if which == 6 else draw(st.uuids().map(str))
                     if which == 7 else draw(SAFE_ID) if which == 8
                     else draw(st.text(min_size=1, max_size=20).map(lambda t: urllib.parse.quote(t, safe=""))))
        path = path.replace("{kernel_id}", kernel_id)
    query = draw(st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), st.text(max_size=10),
                                 max_size=2))
    if query:
        path += "?" + urllib.parse.urlencode(query)
    auth = draw(st.sampled_from(["token"] * 18 + ["none", "wrong"]))
    body = draw(bodies()) if method in ("POST", "PUT", "PATCH", "DELETE") else None
    return {"method": method, "path": path, "op": op, "auth": auth, "body": body}


# ---------------------------------------------------------------- the test


def call(url: str, token: str, case: dict[str, Any]) -> tuple[int, str, bytes]:
    headers = {"Content-Type": "application/json"}
    if case["auth"] == "token":
        headers["Authorization"] = f"token {token}"
    elif case["auth"] == "wrong":
        headers["Authorization"] = "token not-the-token"
    req = urllib.request.Request(url + case["path"], data=case["body"], method=case["method"], headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def check(case: dict[str, Any], status: int, ctype: str, raw: bytes, tally: Counter[str]) -> None:
    op = case["op"]
    where = f"{case['method']} {case['path']} auth={case['auth']} body={case['body']!r:.200}"
    key = f"{case['method']} {(op or {}).get('operationId', '(undocumented method)')} {status}"
    documented = documented_statuses(op) if op else set()
    raw_path = case["path"].split("?")[0]
    if not any(route.match(raw_path) for route in ROUTES):
        # A kernel id the route does not match: jupyter_server's own 404 (HTML), not one of our handlers.
        tally[f"{case['method']} (no route) {status}"] += 1
        assert status < 500, f"{status} for {where}: {raw[:500]!r}"
        return
    if raw_path == EVENTS and status in (400, 403, 405):
        assert "json" in ctype, f"events error not JSON ({status}) for {where}: {raw[:300]!r}"
    tally[key] += 1
    assert status < 500 or (status == 503 and 503 in documented), f"{status} for {where}: {raw[:500]!r}"
    if case["method"] == "OPTIONS":
        # CORS preflight, answered by jupyter_server's APIHandler.options for every API path; the
        # events WebSocket is no APIHandler and says 405, as JSON.
        assert status in ((200, 204, 403, 405) if raw_path == EVENTS else (200, 204, 403)), \
            f"{status} for {where}: {raw[:300]!r}"
        return
    if op is None:
        assert status in UNDOCUMENTED_METHOD | {403}, f"{status} for {where}: {raw[:300]!r}"
    else:
        assert status in documented, f"undocumented {status} for {where}: {raw[:300]!r}"
    if status >= 400:
        assert "json" in ctype, f"{status} for {where} is not JSON ({ctype}): {raw[:300]!r}"
        body = json.loads(raw)
        assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip(), \
            f"{status} for {where} without a message: {body!r}"
        if op is not None:
            schema = response_schema(op, status)
            if schema:
                validator(schema).validate(body)
    elif status == 200 and op is not None:
        schema = response_schema(op, status)
        assert schema, where
        validator(schema).validate(json.loads(raw))


@pytest.mark.timeout(420)
async def test_rest_api_fuzz(tf_worker_factory, jupyter_server_factory):
    worker = tf_worker_factory(["--host-vram", "16Gi"]).start()
    server = jupyter_server_factory(workers=[worker]).start()
    status, s = await server.request("POST", "/api/sessions", {
        "path": "fuzz.ipynb", "type": "notebook", "name": "fuzz.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, server.log()[-3000:]
    status, plain = await server.request("POST", "/api/kernels", {"name": "python3"})
    assert status == 201, plain
    live = {"vgpu": s["kernel"]["id"], "plain": plain["id"]}
    ws = await KernelWebSocket.connect(server, live["vgpu"])
    try:
        assert text_of(await ws.execute("x = 41; print(x + 1)")) == "42\n"
    finally:
        ws.close()

    tally: Counter[str] = Counter()
    count = [0]
    stop = threading.Event()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                         HealthCheck.data_too_large])
    @given(case=cases(live))
    def fuzz(case: dict[str, Any]) -> None:
        if stop.is_set():
            return
        count[0] += 1
        status, ctype, raw = call(server.url, server.token, case)
        check(case, status, ctype, raw, tally)

    started = time.monotonic()
    try:
        await asyncio.to_thread(fuzz)
    finally:
        stop.set()
        elapsed = time.monotonic() - started
        print(f"\nREST fuzz: {count[0]} requests in {elapsed:.1f} s over {len(OPERATIONS)} path x method pairs "
              f"({sum(op is not None for _, _, op in OPERATIONS)} documented)")
        for key, n in sorted(tally.items()):
            print(f"  {n:5d}  {key}")
    assert count[0] >= MAX_EXAMPLES // 2

    # ---- everything still serves: the server, the pool, the worker, the kernel (its state intact)
    assert server.proc is not None and server.proc.poll() is None
    assert worker.proc is not None and worker.proc.poll() is None
    assert server.get_sync("/api/status")
    status, pool = await server.request("GET", "/tf-vgpu/api/pool")
    assert status == 200 and all(w["up"] for w in pool["workers"]), pool
    status, k = await server.request("GET", f"/tf-vgpu/api/kernels/{live['vgpu']}")
    assert status == 200 and k["worker_up"], k
    async with worker.client() as client:
        inv = await client.inventory()
    assert k["lease_id"] in {le.id for le in inv.leases}
    ws = await KernelWebSocket.connect(server, live["vgpu"])
    try:
        assert text_of(await ws.execute("print(x + 1)")) == "42\n"
    finally:
        ws.close()
    status, _ = await server.request("DELETE", f"/api/sessions/{s['id']}")
    assert status == 204
    assert "Traceback" not in server.log(), server.log()[-4000:]
    assert "Traceback" not in worker.log(), worker.log()[-4000:]


EVENTS_FIX = ("EventsHandler (tornado WebSocketHandler + JupyterHandler) needs a JSON write_error, a JSON 400 for a "
              "request without Upgrade and a check_origin(origin=None) that serves jupyter_server's XSRF check")


async def test_events_errors_are_json(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    for method, auth in (("GET", "token"), ("GET", "none"), ("POST", "token")):
        status, ctype, raw = call(server.url, server.token, {"method": method, "path": EVENTS, "auth": auth,
                                                             "body": b"{}" if method == "POST" else None})
        assert status == {"GET": 400 if auth == "token" else 403, "POST": 405}[method], (method, auth, status)
        assert "json" in ctype, (method, auth, status, ctype, raw[:200])
        assert json.loads(raw)["message"]


async def test_events_other_methods_without_token_are_refused_not_500(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, _, raw = call(server.url, server.token, {"method": method, "path": EVENTS, "auth": "none",
                                                         "body": b"{}"})
        assert status in (403, 405), (method, status, raw[:200])
    assert "Traceback" not in server.log()
