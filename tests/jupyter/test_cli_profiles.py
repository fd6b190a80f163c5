"""`tf-jupyter profiles list|add|remove` and `tf-jupyter lab`, run as a user would (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tf_jupyter.profiles import BUILTIN_PROFILES, write_builtin_kernelspecs


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tf_jupyter.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def kernels_dir(tmp_path: Path) -> Path:
    path = tmp_path / "kernels"
    write_builtin_kernelspecs(path)
    return path


def listed(kernels_dir: Path) -> dict[str, dict]:
    result = cli("profiles", "list", "--json", "--kernels-dir", str(kernels_dir))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kernels_dir"] == str(kernels_dir)
    return {p["name"]: p for p in data["profiles"]}


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("lab", "profiles", "worker", "pool"):
        assert command in result.stdout
    result = cli("profiles", "--help")
    assert result.returncode == 0
    assert all(action in result.stdout for action in ("list", "add", "remove"))
    # `worker` still goes to the remoting runtime's own command line.
    result = cli("worker", "--no-such-flag")
    assert result.returncode == 2
    assert "usage: tf-jupyter worker" in result.stderr and "--host-vram" in result.stderr


def test_worker_help():
    result = cli("worker", "--help")
    assert result.returncode == 0, result.stderr
    assert "--host-vram" in result.stdout


def test_list_table_and_json(kernels_dir):
    result = cli("profiles", "list", "--kernels-dir", str(kernels_dir))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "KERNELSPEC", "SLICE", "COUNT", "QOS", "DESCRIPTION"]
    small = next(r for r in rows if r.startswith("small "))
    assert "vgpu-small" in small and "4 GiB · 10 %" in small and "medium" in small
    assert any(r.startswith("whole ") and "whole device" in r for r in rows)

    profiles = listed(kernels_dir)
    assert set(profiles) == set(BUILTIN_PROFILES)
    assert profiles["small"]["kernelspec"] == "vgpu-small"
    assert profiles["small"]["vram"] == 4 << 30 and profiles["small"]["compute"] == 10
    assert profiles["small"]["display_name"] == "Python 3 · vGPU 4 GiB · 10 %"

    empty = cli("profiles", "list", "--kernels-dir", str(kernels_dir.parent / "nothing-here"))
    assert empty.returncode == 0 and "no vGPU profiles" in empty.stdout


def test_add_and_remove(kernels_dir):
    result = cli("profiles", "add", "train", "--vram", "8Gi", "--compute", "25", "--count", "2", "--qos", "high",
                 "--description", "Two quarter GPUs", "--kernels-dir", str(kernels_dir))
    assert result.returncode == 0, result.stderr
    assert "vgpu-train" in result.stdout
    spec = json.loads((kernels_dir / "vgpu-train" / "kernel.json").read_text())
    assert spec["argv"][-4:] == ["--profile", "train", "-f", "{connection_file}"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "tf-vgpu"
    assert spec["display_name"] == "Python 3 · 2 × vGPU 8 GiB · 25 % · high QoS (train)"

    train = listed(kernels_dir)["train"]
    assert (train["vram"], train["compute"], train["count"], train["qos"]) == (8 << 30, 25, 2, "high")
    assert train["description"] == "Two quarter GPUs"

    # A second add of the same name is refused, unless --replace.
    again = cli("profiles", "add", "train", "--vram", "4Gi", "--compute", "10%", "--kernels-dir", str(kernels_dir))
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--replace" in again.stderr
    assert listed(kernels_dir)["train"]["vram"] == 8 << 30
    replaced = cli("profiles", "add", "train", "--vram", "4Gi", "--compute", "10%", "--replace",
                   "--kernels-dir", str(kernels_dir))
    assert replaced.returncode == 0, replaced.stderr
    assert listed(kernels_dir)["train"]["vram"] == 4 << 30

    whole = cli("profiles", "add", "two-gpus", "--whole-device", "--count", "2", "--kernels-dir", str(kernels_dir))
    assert whole.returncode == 0, whole.stderr
    assert listed(kernels_dir)["two-gpus"]["whole_device"] is True

    removed = cli("profiles", "remove", "train", "--kernels-dir", str(kernels_dir))
    assert removed.returncode == 0, removed.stderr
    assert not (kernels_dir / "vgpu-train").exists()
    assert "train" not in listed(kernels_dir)

    missing = cli("profiles", "remove", "train", "--kernels-dir", str(kernels_dir))
    assert missing.returncode == 2
    assert "no vGPU profile named 'train'" in missing.stderr and "small" in missing.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--vram", "4Gx", "--compute", "25"], "invalid memory quantity '4Gx'"),
    (["--vram", "4Gi", "--compute", "250"], "at most 100"),
    (["--vram", "4Gi", "--compute", "abc"], "invalid percentage 'abc'"),
    (["--vram", "4Gi"], "needs both vram"),
    (["--vram", "4Gi", "--compute", "25", "--count", "two"], "invalid count 'two'"),
    (["--vram", "4Gi", "--compute", "25", "--count", "99"], "out of range"),
    (["--vram", "4Gi", "--compute", "25", "--qos", "urgent"], "invalid QoS 'urgent'"),
    (["--whole-device", "--vram", "4Gi"], "leave out vram and compute"),
])
def test_bad_requests_exit_2_with_a_message(kernels_dir, args, message):
    result = cli("profiles", "add", "bad", *args, "--kernels-dir", str(kernels_dir))
    assert result.returncode == 2, result
    assert result.stderr.startswith("tf-jupyter profiles add: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (kernels_dir / "vgpu-bad").exists()


def test_bad_name_exits_2(kernels_dir):
    result = cli("profiles", "add", "Big_GPU", "--vram", "4Gi", "--compute", "25", "--kernels-dir", str(kernels_dir))
    assert result.returncode == 2
    assert "invalid profile name 'Big_GPU'" in result.stderr


async def test_added_profile_shows_in_a_jupyter_server_and_runs(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker])
    kernels = server.root / "data" / "kernels"  # JUPYTER_DATA_DIR/kernels of that server
    result = cli("profiles", "add", "notebook-2g", "--vram", "2Gi", "--compute", "20", "--kernels-dir", str(kernels))
    assert result.returncode == 0, result.stderr
    server.start()
    status, body = await server.request("GET", "/api/kernelspecs")
    specs = body["kernelspecs"]
    assert "vgpu-notebook-2g" in specs, sorted(specs)
    spec = specs["vgpu-notebook-2g"]["spec"]
    assert spec["display_name"] == "Python 3 · vGPU 2 GiB · 20 % (notebook-2g)"
    assert spec["metadata"]["tf_vgpu"]["vram"] == 2 << 30
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "tf-vgpu"
    assert "vgpu-small" in specs  # the built-ins of the environment are still there

    # A kernel of that profile gets that slice on the worker.
    status, kernel = await server.request("POST", "/api/kernels", {"name": "vgpu-notebook-2g"})
    assert status == 201, (kernel, server.log())
    status, info = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel['id']}")
    assert status == 200, info
    assert info["slice"] == {"vram": 2 << 30, "compute": 20, "count": 1}
    status, _ = await server.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert status == 204


def test_lab_help_passes_through_to_jupyterlab():
    result = cli("lab", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tf-jupyter lab" in result.stdout and "embedded worker" in result.stdout
    assert "JupyterLab" in result.stdout  # JupyterLab's own help follows ours

    result = cli("lab", "--help-all", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--TfVgpu.workers" in result.stdout and "--TfVgpu.token_file" in result.stdout


def test_lab_runs_jupyterlab_with_the_extension():
    from tf_jupyter.cli import lab_argv

    argv = lab_argv(["--port=9999", "--no-browser"])
    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.jpserver_extensions=tf_jupyter=True" in argv
    assert argv[-2:] == ["--port=9999", "--no-browser"]


async def test_lab_serves_vgpu_kernels_from_an_embedded_worker(jupyter_server_factory):
    """`tf-jupyter lab` with nothing configured: an embedded worker serves, and a vgpu-small kernel runs.

    Bounded: JupyterLab is stopped (SIGTERM) as soon as a cell has run; the worker stops with it.
    """
    import psutil

    from tf_jupyter.pytest_plugin import KernelWebSocket, text_of

    server = jupyter_server_factory()  # its ports, token and private Jupyter directories; no TfVgpu config
    args = [sys.executable, "-m", "tf_jupyter.cli", "lab", "--no-browser", f"--port={server.port}",
            "--port-retries=0", "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={server.token}",
            f"--ServerApp.root_dir={server.notebooks}", "--TfVgpu.embedded_worker_args=--host-vram=4Gi"]
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(args, env=server.env(), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        assert server.proc.poll() is None, server.log()
        try:
            server.get_sync("/api/status")
            break
        except OSError:
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.25)

    # The extension starts the embedded worker as the server comes up; the pool answers once it is there, and
    # reports the worker up after its first successful inventory (a refresh tick later).
    while True:
        status, pool = await server.request("GET", "/tf-vgpu/api/pool")
        if status == 200 and pool["workers"] and (pool["workers"][0]["up"] or pool["workers"][0]["error"]):
            break
        assert status in (200, 503), (status, pool, server.log())
        assert time.monotonic() < deadline, (pool, server.log())
        await asyncio.sleep(0.25)
    [worker] = pool["workers"]
    assert worker["up"] and worker["backend"] == "host", pool
    log_text = server.log()
    assert "tf-jupyter lab: starting JupyterLab" in log_text
    assert f"embedded worker at {worker['address']}" in log_text, log_text
    assert f"worker {worker['address']} up, backend host" in log_text, log_text  # which device backend serves
    worker_pid = json.loads((server.root / "runtime" / "tf-vgpu-worker.json").read_text())["pid"]

    status, kernel = await server.request("POST", "/api/kernels", {"name": "vgpu-small"})
    assert status == 201, (kernel, server.log())
    ws = await KernelWebSocket.connect(server, kernel["id"])
    try:
        result = await ws.execute("print(6 * 7)")
        assert text_of(result).strip() == "42", result
    finally:
        ws.close()

    server.stop()
    assert server.proc.returncode is not None
    try:
        psutil.Process(worker_pid).wait(20)
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
