"""The embedded worker's life cycle: what a Jupyter server with no workers configured starts, reuses and
stops, and what it leaves behind (nothing) when it is stopped."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil

from tf_jupyter.pytest_plugin import JupyterServerProcess, KernelWebSocket, text_of
from tf_remoting.pytest_plugin import WorkerProcess

EMBEDDED = {"embedded_worker": "auto", "embedded_worker_args": ["--host-vram", "8Gi", "--backend", "host"]}


def processes_of(root: Path) -> list[str]:
    """Live processes whose command line names a path under root (worker, nannies, kernels)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(root) in a for a in proc.info["cmdline"] or []):
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'])}")
        except psutil.Error:
            continue
    return found


def ledger_rows(state_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(live kernels as (id, status), unreleased leases) in the worker's ledger file."""
    with sqlite3.connect(state_dir / "ledger.sqlite3") as db:
        kernels = db.execute("SELECT id, status FROM kernels WHERE status != 'exited'").fetchall()
        leases = [r[0] for r in db.execute("SELECT id FROM leases WHERE released_at IS NULL")]
    return kernels, leases


async def test_stopping_the_server_leaves_no_kernel_nanny_or_lease(jupyter_server_factory, tmp_path):
    """Defect 19: a server stopped with SIGTERM while vGPU kernels ran on its embedded worker left a
    kernel and its nanny running with no worker (extensions stop before kernels are shut down)."""
    server: JupyterServerProcess = jupyter_server_factory(settings=EMBEDDED).start()
    ids = []
    for name in ("a.ipynb", "b.ipynb"):
        status, s = await server.request("POST", "/api/sessions", {
            "path": name, "type": "notebook", "name": name, "kernel": {"name": "vgpu-small"}})
        assert status == 201, server.log()[-3000:]
        ids.append(s["kernel"]["id"])
    for kernel_id in ids:
        ws = await KernelWebSocket.connect(server, kernel_id)
        try:
            assert text_of(await ws.execute("6*7")) == "42"
        finally:
            await ws.aclose()
    state_dir = server.root / "data" / "tfw"
    assert len(ledger_rows(state_dir)[0]) == 2
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not stop within 30 s:\n{server.log()[-3000:]}") from None
    deadline = time.monotonic() + 20
    while (left := processes_of(server.root)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    nanny_logs = "".join(f"{p}:\n{p.read_text()[-1500:]}" for p in (state_dir / "kernels").glob("*/nanny.log"))
    assert not left, "\n".join(left) + "\n" + nanny_logs + (state_dir / "worker.log").read_text()[-3000:]
    assert ledger_rows(state_dir)[1] == [], "leases left unreleased"
    # A worker started later on the same state finds nothing to re-adopt that nobody owns.
    (tmp_path / "later").mkdir()
    later = WorkerProcess(["--host-vram", "8Gi"], root=tmp_path / "later")
    later.state_dir = state_dir
    try:
        later.start()
        assert "re-adopted 0 kernel(s)" in later.log(), later.log()[-2000:]
        assert ledger_rows(state_dir) == ([], [])
    finally:
        later.stop()


def runtime_record(server: JupyterServerProcess) -> dict:
    return json.loads((server.root / "runtime" / "tf-vgpu-worker.json").read_text())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_bad_embedded_worker_args_is_one_clear_line_and_no_kernel_runs_elsewhere(jupyter_server_factory):
    """Defect 16: the worker's usage error made the extension fail with a traceback, and vGPU kernels then
    ran on a worker the launcher started, without the configured flags."""
    server = jupyter_server_factory(settings={"embedded_worker": "auto",
                                              "embedded_worker_args": ["--no-such-flag", "3"]}).start()
    await asyncio.sleep(1.0)  # the extension starts its pool after the server answers
    log = server.log()
    [line] = [x for x in log.splitlines() if "embedded vGPU worker is not available" in x]
    assert "unrecognized arguments: --no-such-flag 3" in line, line
    assert "Traceback" not in log, log[-3000:]
    status, body = await server.request("POST", "/api/sessions", {
        "path": "b.ipynb", "type": "notebook", "name": "b.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status >= 500, body
    message = body["message"] if isinstance(body, dict) else body
    assert "cannot start" in message and "unrecognized arguments" in message, message
    assert not [p for p in processes_of(server.root) if "tf_remoting" in p], processes_of(server.root)


def use_server_dirs(server: JupyterServerProcess, monkeypatch) -> None:
    """This test process becomes a client of the same user as the server (its Jupyter directories)."""
    for key, value in server.env().items():
        if key.startswith("JUPYTER_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_VGPU_HANDOFF", raising=False)
    config = server.root / "config"
    config.mkdir(exist_ok=True)
    (config / "jupyter_server_config.json").write_text(json.dumps({"TfVgpu": EMBEDDED}))


async def test_a_worker_of_another_install_is_not_reused_nor_stopped(jupyter_server_factory, monkeypatch):
    """Defect 3: a server attached to a local worker started from another venv's files (and ignored
    embedded_worker_args then). It says what runs, uses it not, and leaves it alone."""
    from tf_jupyter.local_worker import ensure_local_worker, stop_local_worker

    server = jupyter_server_factory(settings=EMBEDDED)
    use_server_dirs(server, monkeypatch)
    other, proc = ensure_local_worker(list(EMBEDDED["embedded_worker_args"]), idle_exit=0.0)
    assert proc is not None
    try:
        record_file = server.root / "runtime" / "tf-vgpu-worker.json"
        record = json.loads(record_file.read_text())
        record.update(package="/opt/other-venv/lib/python3.11/site-packages/tf_remoting", version="0.0.9")
        record_file.write_text(json.dumps(record))
        server.start()
        await asyncio.sleep(1.0)
        lines = [x for x in server.log().splitlines() if "embedded vGPU worker is not available" in x]
        assert len(lines) == 1, server.log()[-3000:]
        line = lines[0]
        assert f"pid {other.pid}" in line and "tf_remoting 0.0.9 from /opt/other-venv" in line, line
        status, body = await server.request("POST", "/api/sessions", {
            "path": "o.ipynb", "type": "notebook", "name": "o.ipynb", "kernel": {"name": "vgpu-small"}})
        assert status >= 500 and "0.0.9" in str(body), body
        server.stop()
        assert alive(other.pid), "the server stopped a worker it did not start"
    finally:
        stop_local_worker(other, proc)


async def test_the_embedded_worker_outlives_the_server_while_a_standalone_kernel_uses_it(jupyter_server_factory,
                                                                                        monkeypatch):
    """Defect 3: the server stopped its embedded worker although a standalone kernel (jupyter console,
    papermill) still ran on it."""
    from jupyter_client.manager import AsyncKernelManager

    server = jupyter_server_factory(settings=EMBEDDED).start()
    use_server_dirs(server, monkeypatch)
    await asyncio.sleep(1.0)
    worker_pid = runtime_record(server)["pid"]
    km = AsyncKernelManager(kernel_name="vgpu-small")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=90)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert "is left running: other clients still hold 1 lease(s)" in server.log(), server.log()[-3000:]
        assert alive(worker_pid)
        reply = await kc.execute_interactive("6*7", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def test_a_launcher_run_directly_says_why_its_local_worker_did_not_start(tmp_path):
    """Without a server: the launcher exits 1 with the worker's own usage error, not a traceback."""
    import os
    import sys

    from jupyter_client.connect import write_connection_file

    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"TfVgpu": {
        "embedded_worker": "auto", "embedded_worker_args": ["--no-such-flag"]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "TF_VGPU_"))}
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_PLATFORM_DIRS="1")
    connection_file, _ = write_connection_file(str(tmp_path / "k.json"), ip="127.0.0.1")
    result = subprocess.run([sys.executable, "-m", "tf_jupyter.launcher", "--profile", "small", "-f",
                             connection_file], capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "unrecognized arguments: --no-such-flag" in result.stderr and "Traceback" not in result.stderr, \
        result.stderr
