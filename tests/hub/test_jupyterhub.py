"""A real JupyterHub in front of one shared worker: each hub user is its own principal, from the
hub's API, with no per-user secret made by hand.

JupyterHub (the `jupyterhub` package, the Python `configurable-http-proxy`), two users through the
DummyAuthenticator, SimpleLocalProcessSpawner; both single-user servers run tf_jupyter with
`c.TfVgpu.token_source = "hub"` and the same worker, started with `--hub-api-url`. The worker's
token file holds one admin token only, written by this test before the hub exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tf_jupyter.pytest_plugin import KernelWebSocket, free_port, text_of
from tf_remoting.client import PermissionDenied, RuntimeClient, Unauthenticated
from tf_remoting.proto import pb
from tf_remoting.pytest_plugin import WorkerProcess

pytest.importorskip("jupyterhub", reason="the jupyterhub package is in the test extras")

SCOPE = "custom:tf-vgpu:use"
USERS = ("alice", "bob")
START_TIMEOUT = 60.0

HUB_CONFIG = """
import json, sys
settings = json.loads({settings!r})
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = settings["proxy_port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % settings["proxy_api_port"]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///" + settings["root"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = settings["root"] + "/cookie_secret"
c.JupyterHub.pid_file = settings["root"] + "/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = set(settings["users"])  # created by the hub at start
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = settings["root"] + "/home/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root", "--config=" + settings["singleuser_config"]]
c.Spawner.environment = settings["environment"]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
# Least privilege: a custom scope for the worker, held by every user and given to the servers'
# tokens with activity only (no access:servers: the worker cannot use it to reach the user's server).
c.JupyterHub.custom_scopes = {{"custom:tf-vgpu:use": {{"description": "use the tf-vgpu GPU workers"}}}}
c.Spawner.server_token_scopes = ["users:activity!user", "custom:tf-vgpu:use"]
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "custom:tf-vgpu:use"]}},
    {{"name": "test-driver", "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens"],
      "services": ["test-driver"]}},
]
c.JupyterHub.services = [{{"name": "test-driver", "api_token": settings["service_token"]}}]
"""


class Hub:
    """`python -m jupyterhub` with its proxy, on free ports under one temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tfh-", dir="/tmp"))
        self.hub_port, self.proxy_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.service_token = secrets.token_hex(24)
        self.log_path = self.root / "hub.log"
        jupyter = self.root / "jupyter"
        self.singleuser_config = self.root / "singleuser_config.json"
        bin_dir = str(Path(sys.executable).parent)
        environment = {"JUPYTER_CONFIG_DIR": str(jupyter / "config"), "JUPYTER_DATA_DIR": str(jupyter / "data"),
                       "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"), "JUPYTER_PLATFORM_DIRS": "1",
                       "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        settings = {"proxy_port": self.proxy_port, "hub_port": self.hub_port, "proxy_api_port": free_port(),
                    "root": str(self.root), "users": list(USERS),
                    "singleuser_config": str(self.singleuser_config), "environment": environment,
                    "service_token": self.service_token}
        (self.root / "jupyterhub_config.py").write_text(HUB_CONFIG.format(settings=json.dumps(settings)))
        for user in USERS:
            (self.root / "home" / user).mkdir(parents=True)
        self.env = {**os.environ, "PATH": environment["PATH"]}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, worker_address: str) -> Hub:
        # What each user's server is told: the worker and where its token comes from. Nothing per user.
        self.singleuser_config.write_text(json.dumps({"TfVgpu": {
            "workers": [worker_address], "token_source": "hub", "embedded_worker": "off",
            "refresh_interval": 1.0, "queue_timeout": 30.0}}))
        with open(self.log_path, "ab") as log:
            argv = [sys.executable, "-m", "jupyterhub", "-f", str(self.root / "jupyterhub_config.py")]
            self.proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = self.call("GET", self.api_url + "/", timeout=2)
                if status == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyterhub not up within {START_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-12000:] if self.log_path.exists() else ""

    def call(self, method: str, url: str, body: Any = None, token: str | None = None,
             timeout: float = 30.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"token {token or self.service_token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(raw)
            return exc.code, raw.decode(errors="replace")
        with contextlib.suppress(ValueError):
            return resp.status, json.loads(raw) if raw else None
        return resp.status, raw.decode(errors="replace")

    def hub_api(self, method: str, path: str, body: Any = None) -> Any:
        status, reply = self.call(method, self.api_url + path, body)
        assert status < 300, f"{method} {path}: {status} {reply}\n{self.log()}"
        return reply

    def start_server(self, user: str) -> None:
        """Start the user's server and wait until the hub says it is ready (bounded)."""
        self.hub_api("POST", f"/users/{user}/server")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            model = self.hub_api("GET", f"/users/{user}")
            server = (model.get("servers") or {}).get("", {})
            if server.get("ready"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user}'s server not ready within {START_TIMEOUT:.0f} s: {model}\n{self.log()}")
            time.sleep(0.25)

    def user_token(self, user: str, scopes: list[str] | None = None) -> str:
        body: dict[str, Any] = {"note": "test"}
        if scopes is not None:
            body["scopes"] = scopes
        return str(self.hub_api("POST", f"/users/{user}/tokens", body)["token"])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):  # stop the users' servers, as the hub would on shutdown
            for user in USERS:
                self.call("DELETE", f"{self.api_url}/users/{user}/server", timeout=20)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)  # the proxy and any server left in its session
        shutil.rmtree(self.root, ignore_errors=True)


class UserServer:
    """A user's single-user server through the hub's proxy, as KernelWebSocket wants one."""

    def __init__(self, hub: Hub, user: str, token: str) -> None:
        self.hub, self.user, self.token = hub, user, token
        self.url = f"{hub.url}/user/{user}"

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self.hub.call, method, self.url + path, body, self.token, 120.0)

    async def websocket(self, path: str) -> Any:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        req = HTTPRequest(self.url.replace("http", "ws", 1) + path,
                          headers={"Authorization": f"token {self.token}"}, connect_timeout=20)
        return await websocket_connect(req)

    def log(self) -> str:
        return self.hub.log()


@pytest.fixture
def hub_worker() -> Iterator[WorkerProcess]:
    worker = WorkerProcess(["--host-vram", "16Gi", "--hub-cache-seconds", "5"])  # room for two small slices
    # One admin principal, written before any hub user exists; nothing is added for the users.
    admin_token = secrets.token_urlsafe(24)
    worker.token = admin_token
    worker.token_file.write_text(f"admin {admin_token}\n")
    worker.extra_args += ["--admin-principals", "admin", "--admin-groups", "gpu-admins"]
    yield worker
    worker.cleanup()


async def test_hub_users_are_principals_of_one_shared_worker(hub_worker: WorkerProcess) -> None:
    hub = Hub()
    hub_worker.extra_args += ["--hub-api-url", hub.api_url]
    hub_worker.start()
    token_file_before = hub_worker.token_file.read_text()
    try:
        await asyncio.to_thread(hub.start, hub_worker.address)
        hub.hub_api("POST", "/groups/gpu-admins", {"users": ["alice"]})  # hub groups reach the worker
        await asyncio.gather(*(asyncio.to_thread(hub.start_server, user) for user in USERS))
        servers = {user: UserServer(hub, user, hub.user_token(user)) for user in USERS}

        # Each user starts a vGPU kernel from their own server, and it runs code.
        kernels: dict[str, str] = {}
        for user, server in servers.items():
            status, session = await server.request("POST", "/api/sessions", {
                "path": f"{user}.ipynb", "type": "notebook", "name": f"{user}.ipynb",
                "kernel": {"name": "vgpu-small"}})
            assert status == 201, f"{user}: {status} {session}\n{hub.log()}"
            kernels[user] = session["kernel"]["id"]
            ws = await KernelWebSocket.connect(server, kernels[user])  # type: ignore[arg-type]
            try:
                result = await ws.execute("import os; print('ran as', os.environ.get('JUPYTERHUB_USER'))")
            finally:
                await ws.aclose()
            assert f"ran as {user}" in text_of(result), result

        # Each sees only their own kernel in their server's pool view.
        for user, server in servers.items():
            status, listed = await server.request("GET", "/tf-vgpu/api/kernels")
            assert status == 200, listed
            assert [k["kernel_id"] for k in listed["kernels"]] == [kernels[user]], (user, listed)

        # The worker knows two principals, named as the hub users, each holding one lease.
        async with RuntimeClient(hub_worker.address, hub_worker.token) as admin:
            inventory = await asyncio.wait_for(admin.inventory(), 10)
        owners = sorted(lease.principal for lease in inventory.leases)
        assert owners == ["hub:alice", "hub:bob"], inventory

        # Hub groups reach the worker: alice (in gpu-admins, an --admin-groups group) sees every
        # lease; bob sees his own only.
        for user, view, leases in (("alice", pb.INVENTORY_VIEW_ALL, 2), ("bob", pb.INVENTORY_VIEW_OWN, 1)):
            async with RuntimeClient(hub_worker.address, servers[user].token) as client:
                seen = await asyncio.wait_for(client.inventory(), 10)
            assert (seen.viewer, seen.view, len(seen.leases)) == (f"hub:{user}", view, leases), seen

        # Only hub tokens with the worker's scope get in; an unknown one is unauthenticated.
        narrow = hub.user_token("alice", scopes=["read:users:name!user"])
        async with RuntimeClient(hub_worker.address, narrow) as client:
            with pytest.raises(PermissionDenied, match="lacks the scope 'custom:tf-vgpu:use'"):
                await asyncio.wait_for(client.inventory(), 10)
        async with RuntimeClient(hub_worker.address, secrets.token_hex(20)) as client:
            with pytest.raises(Unauthenticated, match="JupyterHub does not know this token"):
                await asyncio.wait_for(client.inventory(), 10)

        # Nothing was written by hand for the users: the token file is as it was, and each
        # server's settings name no token file.
        assert hub_worker.token_file.read_text() == token_file_before
        assert "hub:" not in token_file_before
        assert "token_file" not in (hub.root / "singleuser_config.json").read_text()
    finally:
        await asyncio.to_thread(hub.stop)

