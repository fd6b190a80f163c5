"""The Binder recipe, run for real: binder/postBuild in a fresh virtual environment, then the server it configured.

Binder (repo2docker) clones the repository, installs binder/environment.yml (Python, Node) and runs
binder/postBuild from the repository root. Here: a copy of the working tree (tracked and untracked,
not ignored files) stands in for the clone, a `python -m venv` for the conda environment, and the
JupyterLab extension already built in tf_jupyter/labextension is copied along so that `pip install .`
skips npm (a fresh Binder build runs npm; the wheel build is the same otherwise). Then JupyterLab is
started from that environment, the vGPU kernelspecs and the embedded worker's host device are checked
over HTTP, and the demo notebook is executed with nbconvert from the same environment.

Takes 2-4 minutes (most of it `pip install`). Set TF_JUPYTER_SKIP_BINDER_TEST=1 to skip it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = ROOT / "tf_jupyter" / "labextension"

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("TF_JUPYTER_SKIP_BINDER_TEST") == "1",
                       reason="TF_JUPYTER_SKIP_BINDER_TEST=1"),
]


def test_binder_files_are_consistent() -> None:
    """Cheap checks that run even when the full build below is skipped."""
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable (repo2docker runs it directly)"
    assert post_build.read_text().startswith("#!/usr/bin/env bash\n")
    env_text = (ROOT / "binder" / "environment.yml").read_text()
    assert "nodejs" in env_text, "the labextension build needs Node on Binder"
    nb = nbformat.read(ROOT / "examples" / "tour.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "vgpu-demo"
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for command in ("%vgpu status", "%vgpu watch", "%vgpu resize"):
        assert command in sources
    assert "profiles add demo" in post_build.read_text(), "the tour's kernel (vgpu-demo) comes from postBuild"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_checkout(dest: Path) -> None:
    """What a clone would hold: tracked and untracked-but-not-ignored files (uncommitted edits included)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    shutil.copytree(BUILT_EXTENSION, dest / "tf_jupyter" / "labextension")


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode} while waiting for {what}:\n"
                        f"{log.read_text()[-4000:]}")
        if "tf_jupyter | extension failed starting" in log.read_text(errors="replace"):
            pytest.fail(f"the tf_jupyter extension failed to start:\n{log.read_text()[-4000:]}")
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s (last error: {last}):\n{log.read_text()[-4000:]}")


def test_postbuild_then_server(tmp_path: Path) -> None:
    # scripts/test.sh installs with `pip install -e .`, which builds it: missing means a broken install.
    assert (BUILT_EXTENSION / "static" / "style.js").exists(), "the JupyterLab extension is not built"
    src, venv = tmp_path / "repo", tmp_path / "venv"
    _copy_checkout(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # Short: the embedded worker's unix sockets live below the data dir (at most 107 characters).
    short = Path(tempfile.mkdtemp(prefix="tfb-", dir="/tmp"))
    jupyter_dirs = {name: short / name[8:].lower() for name in
                    ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR")}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "VIRTUAL_ENV", "PYTHON"))},
           **{k: str(v) for k, v in jupyter_dirs.items()},
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off",
           "XDG_STATE_HOME": str(tmp_path / "state")}

    build = subprocess.run([str(src / "binder" / "postBuild")], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, f"postBuild failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    written = json.loads((venv / "etc/jupyter/jupyter_server_config.json").read_text())
    assert written["TfVgpu"]["embedded_worker_args"] == ["--backend", "host", "--host-vram", "2Gi"]

    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [str(bin_dir / "jupyter"), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={src}"],
            cwd=src, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for("/api/status", lambda: _get(f"{base}/api/status", token), server, log, 90)
        specs = _wait_for("vGPU kernelspecs", lambda: _get(f"{base}/api/kernelspecs", token), server, log, 30)
        names = set(specs["kernelspecs"])
        assert {"vgpu-small", "vgpu-tiny", "vgpu-demo"} <= names, names
        assert specs["kernelspecs"]["vgpu-demo"]["spec"]["metadata"]["kernel_provisioner"]["provisioner_name"] \
            == "tf-vgpu"

        extensions = _get(f"{base}/lab/api/extensions", token)
        assert any(e["name"] == "tf-jupyter-vgpu" and e["enabled"] for e in extensions), extensions

        def host_device_of_2gib() -> dict:
            pool = _get(f"{base}/tf-vgpu/api/pool", token)
            text = json.dumps(pool)
            return pool if "host" in text and str(2 << 30) in text else {}

        _wait_for("the embedded worker's 2 GiB host device in /tf-vgpu/api/pool", host_device_of_2gib, server, log, 60)

        # The demo notebook, run from the same environment: the kernel launcher finds the server's
        # embedded worker through JUPYTER_RUNTIME_DIR, as any client on the Binder machine would.
        out = tmp_path / "tour.out.ipynb"
        run = subprocess.run(
            [str(bin_dir / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
             "--ExecutePreprocessor.timeout=120", str(src / "examples" / "tour.ipynb"), "--output", str(out)],
            cwd=src / "examples", env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"the tour failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
        executed = nbformat.read(out, as_version=4)
        text = json.dumps([c.get("outputs", []) for c in executed.cells if c.cell_type == "code"])
        assert "host" in text
        assert "Resized lease" in text, text[:3000]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        _stop_leftover_worker(jupyter_dirs["JUPYTER_RUNTIME_DIR"])
        shutil.rmtree(short, ignore_errors=True)


def _stop_leftover_worker(runtime_dir: Path) -> None:
    """The server stops the embedded worker it started; make sure of it, by the pid it recorded."""
    record = runtime_dir / "tf-vgpu-worker.json"
    try:
        pid = int(json.loads(record.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"tf_remoting" not in f.read():
                return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
