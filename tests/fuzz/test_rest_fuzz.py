"""Fuzz the REST API with schemathesis, driven by tf_jupyter/openapi.yaml, against a live server.

One real worker (host device, 16 GiB offered, its watchdog only warning) and one real Jupyter server
with tf_jupyter, started once for this module, with three kernels: a vGPU kernel the fuzzer resizes
at will (the target), a plain python3 kernel (no slice: 404s) and a vGPU *witness* kernel the fuzzer
never addresses.

schemathesis (4.x, Python API) generates every operation of the OpenAPI file in all modes (valid and
schema-violating data) through its examples, coverage and fuzzing phases: bodies, path parameters,
missing or wrong tokens, methods the file does not list. A generated kernel id that fits the route is
mostly replaced by the target's (or the plain kernel's), so resizes really reach the worker. Each
answer goes through schemathesis' checks (no 5xx, status code, content type and body as documented,
valid data accepted and invalid data refused, authentication enforced, 405s with an Allow header)
and two of ours: every error is JSON with a non-empty `message` and its `status`, and a request
without this server's token gets 403 (Jupyter's answer; schemathesis' own `missing_required_header`
insists on 401 for a missing Authorization header, so that one is replaced by ours).

Afterwards the server, the worker and the witness kernel (its variables and slice intact) still
serve, the target still runs code and shuts down cleanly, and a new vGPU kernel starts. The number of cases is printed
(pytest -s) and recorded as test properties (junit XML): per operation, phase, mode and status.
Reproducible: a fixed seed, derandomized hypothesis, no example database, no feedback from responses.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

import tf_jupyter
from tf_jupyter import handlers
from tf_jupyter.pytest_plugin import JupyterServerProcess, KernelWebSocket, text_of
from tf_remoting.pytest_plugin import WorkerProcess

SPEC_PATH = Path(tf_jupyter.__file__).parent / "openapi.yaml"
MAX_EXAMPLES = 100  # per operation, fuzzing phase (the examples and coverage phases add their own cases)
SEED = 20240917
TOKEN = secrets.token_hex(16)  # the server's token, known before it starts so the schema can carry it
TIMEOUT = 60.0

schema = schemathesis.openapi.from_path(SPEC_PATH, config=schemathesis.Config.from_dict({
    "seed": SEED,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {
        "coverage": {"extra-data-sources": {"responses": False}},
        "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
    },
    "auth": {"openapi": {"JupyterToken": {"api_key": f"token {TOKEN}"}}},
    "request-timeout": TIMEOUT,
}))

CASES: Counter[str] = Counter()  # "<operation> <phase> <mode>" -> cases
STATUSES: Counter[str] = Counter()  # "<operation> <status>" -> answers


@pytest.fixture(scope="module")
def live() -> Iterator[dict[str, Any]]:
    # The watchdog only warns: a fuzzed resize below the target's use would otherwise get it interrupted and
    # killed 5 and 10 s later, and the rest of the run would depend on timing.
    worker = WorkerProcess(["--host-vram", "16Gi", "--watchdog-action", "warn"])
    server: JupyterServerProcess | None = None
    try:
        worker.start()
        server = JupyterServerProcess(workers=[worker])  # after the worker: it takes the worker's address
        server.token = TOKEN
        server.start()
        status, pool = server._open("GET", "/tf-vgpu/api/pool", timeout=TIMEOUT)
        assert status == 200 and pool["workers"][0]["up"], (pool, server.log()[-3000:])
        ids = {}
        for name, kernel in (("target", "vgpu-small"), ("witness", "vgpu-small"), ("plain", "python3")):
            status, body = server._open("POST", "/api/sessions", {
                "path": f"{name}.ipynb", "type": "notebook", "name": f"{name}.ipynb", "kernel": {"name": kernel}},
                timeout=90)
            assert status == 201, (body, server.log()[-3000:])
            ids[name] = body["kernel"]["id"]
            ids[f"{name}_session"] = body["id"]
        yield {"server": server, "worker": worker, **ids}
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        worker.cleanup()


# ---------------------------------------------------------------------------- our checks


def clear_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every error answer is JSON {"message": <words>, "status": <its status>}, whatever the request."""
    if response.status_code < 400:
        return
    ctype = response.headers.get("content-type", [""])[0]
    assert "application/json" in ctype, f"{response.status_code} is not JSON ({ctype}): {response.text[:300]!r}"
    body = json.loads(response.text)
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip(), body
    assert body.get("status") == response.status_code, body


def token_enforced(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Without this server's token every method (but a CORS preflight) is refused with 403."""
    sent = response.request.headers.get("Authorization")
    if sent != f"token {TOKEN}" and response.request.method != "OPTIONS":
        assert response.status_code == 403, f"{response.status_code} with Authorization {sent!r}"


# ---------------------------------------------------------------------------- the fuzz test


def stable_repr(case: schemathesis.Case) -> str:
    """The case's content as text that is the same from run to run (the token is not)."""
    body = case.body if isinstance(case.body, (dict, list, str, int, float, bool, bytes, type(None))) else "<unset>"
    headers = {k: "<token>" if v == f"token {TOKEN}" else v for k, v in dict(case.headers or {}).items()}
    return json.dumps([case.path_parameters, body, headers, case.query], sort_keys=True, default=repr)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_rest_api(case: schemathesis.Case, live: dict[str, Any]) -> None:
    if "kernel_id" in (case.path_parameters or {}):
        # Most cases address the target kernel, some the plain kernel; the rest keep the generated id
        # (unknown, or not even one the route takes). Chosen from the case's own content, so that the
        # run stays deterministic; schemathesis sees the edit and re-labels the case valid or not.
        which = zlib.crc32(stable_repr(case).encode()) % 10
        if which < 7:
            case.path_parameters["kernel_id"] = live["target"] if which < 6 else live["plain"]
    excluded = [schemathesis.checks.missing_required_header]  # wants 401; Jupyter answers 403 (token_enforced)
    if case.operation.path == "/tf-vgpu/api/events":
        # A WebSocket: a plain HTTP GET that fits the file still lacks the Upgrade headers, hence 400.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    meta = case.meta
    CASES[f"{case.operation.label} {meta.phase.name.value if meta else '?'} "
          f"{meta.generation.mode.value if meta else '?'}"] += 1
    response = case.call_and_validate(base_url=live["server"].url, excluded_checks=excluded,
                                      additional_checks=[clear_error, token_enforced])
    STATUSES[f"{case.operation.label} {response.status_code}"] += 1


# ---------------------------------------------------------------------------- pinned cases


def test_spec_quantity_patterns_are_the_handlers() -> None:
    """openapi.yaml's ResizeRequest patterns are the very ones the PATCH handler enforces."""
    spec = yaml.safe_load(SPEC_PATH.read_text())["components"]["schemas"]
    assert spec["VramQuantity"]["oneOf"][1]["pattern"] == handlers.VRAM_PATTERN
    assert spec["ComputeQuantity"]["oneOf"][1]["pattern"] == handlers.COMPUTE_PATTERN
    vram, compute = re.compile(handlers.VRAM_PATTERN), re.compile(handlers.COMPUTE_PATTERN)
    for good in ("4Gi", "512Mi", "8G", "1.5 GiB", "4096B", "4096", ".5", "999Pi", " 64Gi "):
        assert vram.fullmatch(good), good
    for bad in ("0", "0Gi", "0.0", "1000Pi", "9999999999Gi", "4Gx", "-1Gi", "4\tGi", "٣Gi", ""):
        assert not vram.fullmatch(bad), bad
    for good in ("1", "50", "50%", "100 %", "050", "50.0"):
        assert compute.fullmatch(good), good
    for bad in ("0", "0%", "101", "50.5", "-5", "", "٥0"):
        assert not compute.fullmatch(bad), bad


def call(server: JupyterServerProcess, method: str, path: str, auth: str,
         body: bytes | None = None) -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if auth == "token":
        headers["Authorization"] = f"token {TOKEN}"
    elif auth == "wrong":
        headers["Authorization"] = "token not-the-token"
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_events_errors_are_json(live: dict[str, Any]) -> None:
    """EventsHandler (tornado WebSocketHandler + JupyterHandler) answers plain HTTP with JSON errors."""
    server = live["server"]
    for method, auth, expected in (("GET", "token", 400), ("GET", "none", 403), ("POST", "token", 405)):
        status, ctype, raw = call(server, method, "/tf-vgpu/api/events", auth, b"{}" if method == "POST" else None)
        assert status == expected, (method, auth, status, raw[:200])
        assert "json" in ctype, (method, auth, status, ctype, raw[:200])
        assert json.loads(raw)["message"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        status, _, raw = call(server, method, "/tf-vgpu/api/events", "none", b"{}")
        assert status in (403, 405), (method, status, raw[:200])


def test_unknown_paths_under_the_api_are_json_404s(live: dict[str, Any]) -> None:
    server = live["server"]
    for path, words in (("/tf-vgpu/api/kernels/%C2%84", "unknown"), ("/tf-vgpu/api/kernels/a%2Fb", "unknown"),
                        ("/tf-vgpu/api/nothing", "not part of the vGPU API"), ("/tf-vgpu/api/", "not part")):
        status, ctype, raw = call(server, "GET", path, "token")
        assert status == 404 and "json" in ctype, (path, status, raw[:300])
        assert words in json.loads(raw)["message"], (path, raw[:300])
        status, ctype, raw = call(server, "GET", path, "none")
        assert status == 403 and "json" in ctype, (path, status, raw[:300])


def test_method_not_allowed_says_what_is(live: dict[str, Any]) -> None:
    import urllib.error
    import urllib.request

    server = live["server"]
    for method, path, allow in (("DELETE", "/tf-vgpu/api/pool", "GET, OPTIONS"),
                                ("PUT", f"/tf-vgpu/api/kernels/{live['target']}", "GET, PATCH, OPTIONS"),
                                ("POST", "/tf-vgpu/api/events", "GET")):
        req = urllib.request.Request(server.url + path, data=b"{}", method=method,
                                     headers={"Authorization": f"token {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=TIMEOUT)
        assert info.value.code == 405 and info.value.headers.get("Allow") == allow, (method, path)
        assert json.loads(info.value.read())["status"] == 405


# ---------------------------------------------------------------------------- afterwards


def summary() -> tuple[int, dict[str, int], str]:
    per_operation: Counter[str] = Counter()
    for key, n in CASES.items():
        per_operation[key.rsplit(" ", 2)[0]] += n
    total = sum(per_operation.values())
    lines = [f"REST fuzz (schemathesis {schemathesis.__version__}, max_examples={MAX_EXAMPLES}, seed={SEED}): "
             f"{total} cases over {len(per_operation)} operations"]
    lines += [f"  {n:5d}  {op}" for op, n in sorted(per_operation.items())]
    lines += ["  by phase and mode:"] + [f"  {n:5d}  {key}" for key, n in sorted(CASES.items())]
    lines += ["  answers:"] + [f"  {n:5d}  {key}" for key, n in sorted(STATUSES.items())]
    return total, dict(per_operation), "\n".join(lines)


async def test_everything_still_serves(live: dict[str, Any], record_property: Any) -> None:
    """Last in this file (pytest keeps the file's order): after the fuzz test and everything else."""
    total, per_operation, text = summary()
    print("\n" + text)
    record_property("rest_fuzz_cases", total)
    for op, n in per_operation.items():
        record_property(f"rest_fuzz_cases[{op}]", n)
    operations = len(list(schema.get_all_operations()))  # every path and method openapi.yaml documents
    assert total >= operations * 50, text  # every operation ran, and most of its examples
    assert len(per_operation) == operations, text

    server: JupyterServerProcess = live["server"]
    worker: WorkerProcess = live["worker"]
    assert server.proc is not None and server.proc.poll() is None, server.log()[-4000:]
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-4000:]
    assert server.get_sync("/api/status")
    status, pool = await server.request("GET", "/tf-vgpu/api/pool", timeout=TIMEOUT)
    assert status == 200 and pool["workers"] and all(w["up"] for w in pool["workers"]), pool

    # The witness kernel: never addressed by the fuzzer, its slice and its variables intact.
    status, witness = await server.request("GET", f"/tf-vgpu/api/kernels/{live['witness']}", timeout=TIMEOUT)
    assert status == 200 and witness["worker_up"], witness
    assert witness["slice"] == {"vram": 4 << 30, "compute": 10, "count": 1}, witness
    async with worker.client() as client:
        inventory = await client.inventory()
    assert witness["lease_id"] in {lease.id for lease in inventory.leases}
    ws = await KernelWebSocket.connect(server, live["witness"])
    try:
        assert text_of(await ws.execute("x = 41; print(x + 1)")) == "42\n"
    finally:
        await ws.aclose()

    # The target, resized at random, still runs; it shuts down and frees its slice; a new vGPU kernel starts.
    status, target = await server.request("GET", f"/tf-vgpu/api/kernels/{live['target']}", timeout=TIMEOUT)
    assert status == 200 and target["worker_up"], target
    ws = await KernelWebSocket.connect(server, live["target"])
    try:
        assert text_of(await ws.execute("print(6 * 7)")) == "42\n"
    finally:
        await ws.aclose()
    status, _ = await server.request("DELETE", f"/api/sessions/{live['target_session']}", timeout=TIMEOUT)
    assert status == 204
    status, kernels = await server.request("GET", "/tf-vgpu/api/kernels", timeout=TIMEOUT)
    assert status == 200 and live["target"] not in {k["kernel_id"] for k in kernels["kernels"]}, kernels
    status, fresh = await server.request("POST", "/api/kernels", {"name": "vgpu-small"}, timeout=90)
    assert status == 201, (fresh, server.log()[-3000:])
    status, info = await server.request("GET", f"/tf-vgpu/api/kernels/{fresh['id']}", timeout=TIMEOUT)
    assert status == 200 and info["slice"]["vram"] == 4 << 30, info
    ws = await KernelWebSocket.connect(server, fresh["id"])
    try:
        assert text_of(await ws.execute("print(7 * 6)")) == "42\n"
    finally:
        await ws.aclose()
    status, _ = await server.request("DELETE", f"/api/kernels/{fresh['id']}", timeout=TIMEOUT)
    assert status == 204
    assert "Traceback" not in server.log(), server.log()[-4000:]
    assert "Traceback" not in worker.log(), worker.log()[-4000:]
