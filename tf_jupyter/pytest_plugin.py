"""Pytest fixtures that run a real Jupyter server (a subprocess) with tf_jupyter loaded.

Use with `pytest_plugins = ["tf_remoting.pytest_plugin", "tf_jupyter.pytest_plugin"]`:

    async def test_it(tf_worker, jupyter_server_factory):
        server = jupyter_server_factory(workers=[tf_worker]).start()
        kernel = await server.request("POST", "/api/kernels", {"name": "vgpu-small"})

The server gets its own Jupyter config, data and runtime directories; kernelspecs come from the
installed wheel (share/jupyter/kernels/vgpu-*), the extension from its jupyter_server_config.d.

Why not pytest-jupyter's `jp_serverapp` / `jp_fetch`: they run the ServerApp inside the test's own
process and event loop. Our tests need the server as the separate process it is in production: they
send it SIGTERM and check it exits, look for kernels, nannies and workers it leaves behind, and
start and stop its embedded worker, none of which an in-process server can show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.session import Session

from tf_remoting.pytest_plugin import WorkerProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterServerProcess:
    """`python -m jupyter_server` on 127.0.0.1 with a token and TfVgpu settings."""

    def __init__(self, workers: list[WorkerProcess] | None = None, settings: dict[str, Any] | None = None,
                 app: str = "jupyter_server", root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="tfj-", dir="/tmp"))
        self.notebooks = self.root / "notebooks"
        self.notebooks.mkdir(exist_ok=True)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        tf: dict[str, Any] = {"refresh_interval": 1.0, "queue_timeout": 30.0}
        if workers:
            tf["workers"] = [w.address for w in workers]
            tf["token_file"] = str(workers[0].token_file)
            tf["embedded_worker"] = "off"
        tf.update(settings or {})
        self.config = {"TfVgpu": tf}
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(JUPYTER_CONFIG_DIR=str(self.root / "config"), JUPYTER_DATA_DIR=str(self.root / "data"),
                   JUPYTER_RUNTIME_DIR=str(self.root / "runtime"), JUPYTER_PLATFORM_DIRS="1")
        return env

    def start(self, timeout: float = 60.0) -> JupyterServerProcess:
        config_file = self.root / "tf_test_config.json"
        config_file.write_text(json.dumps(self.config))
        args = [sys.executable, "-m", self.app, "--no-browser", f"--port={self.port}", "--port-retries=0",
                "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.notebooks}",
                f"--config={config_file}"]
        if self.app == "jupyterlab":
            args = [sys.executable, "-m", "jupyterlab", *args[3:]]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get_sync("/api/status")
                return self
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jupyter server not up within {timeout} s:\n{self.log()}") from None
                time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _open(self, method: str, path: str, body: Any = None, token: str | None = None,
              timeout: float = 120.0) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token if token is None else token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def _open_text(self, path: str) -> tuple[int, str]:
        """(status, text) of a GET, for non-JSON endpoints such as /metrics."""
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def get_sync(self, path: str) -> Any:
        status, body = self._open("GET", path, timeout=5)
        if status != 200:
            raise OSError(f"GET {path}: {status}")
        return body

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                      timeout: float = 120.0) -> tuple[int, Any]:
        """(status, JSON body) of an HTTP call, run in a thread so the test's loop stays free."""
        return await asyncio.to_thread(self._open, method, path, body, token, timeout)

    async def start_session(self, notebook: str, kernel_name: str, timeout: float = 120.0) -> str:
        """Open `notebook` with a new kernel of `kernel_name` as JupyterLab does (POST /api/sessions);
        the kernel's id."""
        status, body = await self.request("POST", "/api/sessions", {
            "path": notebook, "type": "notebook", "name": notebook, "kernel": {"name": kernel_name}}, timeout=timeout)
        assert status == 201, (status, body, self.log()[-3000:])
        return str(body["kernel"]["id"])

    async def websocket(self, path: str, token: str | None = None) -> Any:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = self.url.replace("http", "ws") + path
        req = HTTPRequest(url, headers={"Authorization": f"token {self.token if token is None else token}"},
                          connect_timeout=20)
        return await websocket_connect(req)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        # Kernel launchers of this server that outlived it (they exit by themselves; be sure).
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.root) in arg for arg in proc.info["cmdline"] or []):
                    proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class KernelWebSocket:
    """Execute code on a kernel through the server's /api/kernels/<id>/channels WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = Session(key=b"", username="test")  # the server signs towards the kernel
        self.messages: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, server: JupyterServerProcess, kernel_id: str, timeout: float = 120.0) -> KernelWebSocket:
        """Open the channels WebSocket and wait until it is usable, as JupyterLab does: a
        kernel_info_request, until its reply. jupyter_server "nudges" a new connection and, until
        the nudge sees one iopub message, it swallows that first iopub message instead of
        forwarding it; its own replies are forwarded only after the nudge. So a reply here means
        nothing later is swallowed (a cell sent at once could lose its busy or idle status)."""
        self = cls(await server.websocket(f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"))
        msg_id = await self.send("kernel_info_request", {})
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = await self.recv(max(0.1, deadline - time.monotonic()))
                if msg["channel"] == "shell" and msg.get("parent_header", {}).get("msg_id") == msg_id:
                    return self
        except (TimeoutError, ConnectionError) as exc:
            self.ws.close()  # not left for the garbage collector to warn about in a later test
            seen = [(m["channel"], m.get("msg_type") or m.get("header", {}).get("msg_type")) for m in self.messages]
            raise AssertionError(f"kernel {kernel_id}: no kernel_info_reply on its websocket ({exc!r}); messages "
                                 f"seen: {seen[-20:]}\nserver log:\n{server.log()[-12000:]}") from None

    async def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg = self.session.msg(msg_type, content)
        msg["channel"] = channel
        await self.ws.write_message(json.dumps(msg, default=str))
        return str(msg["header"]["msg_id"])

    async def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            raise ConnectionError("kernel websocket closed")
        msg = json.loads(raw)
        self.messages.append(msg)
        return msg

    async def execute(self, code: str, timeout: float = 60.0, allow_stdin: bool = False) -> dict[str, Any]:
        """Run code; returns {"reply": execute_reply, "outputs": [iopub messages]}."""
        msg_id = await self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                                     "user_expressions": {}, "allow_stdin": allow_stdin,
                                                     "stop_on_error": True})
        reply, outputs, idle = None, [], False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            msg = await self.recv(max(0.1, deadline - time.monotonic()))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                reply = msg
            elif msg["channel"] == "iopub":
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                elif msg["msg_type"] != "status":
                    outputs.append(msg)
        return {"reply": reply, "outputs": outputs}

    def close(self) -> None:
        self.ws.close()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close and wait until the connection is really gone (no socket left for the GC)."""
        self.ws.close()
        with contextlib.suppress(Exception):
            while await asyncio.wait_for(self.ws.read_message(), timeout) is not None:
                pass


async def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Await `predicate()` until it returns something truthy (returned) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f} s")


def text_of(result: dict[str, Any]) -> str:
    out = []
    for m in result["outputs"]:
        if m["msg_type"] == "stream":
            out.append(m["content"]["text"])
        elif m["msg_type"] in ("execute_result", "display_data"):
            out.append(m["content"]["data"].get("text/plain", ""))
        elif m["msg_type"] == "error":
            out.append(f"{m['content']['ename']}: {m['content']['evalue']}")
    return "".join(out)


@pytest.fixture
def jupyter_server_factory() -> Iterator[type[JupyterServerProcess]]:
    started: list[JupyterServerProcess] = []

    class Factory(JupyterServerProcess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    yield Factory
    for server in started:
        with contextlib.suppress(Exception):
            server.cleanup()
