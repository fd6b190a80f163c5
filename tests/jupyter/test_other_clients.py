"""vGPU kernels in clients that launch kernelspecs themselves: jupyter console, papermill, nbclient.

No Jupyter server is involved. The worker is configured the way a user would do it, in a
`jupyter_server_config.json` in their Jupyter config directory; the kernel launcher (the argv of
every vgpu-* kernelspec) reads it, places the kernel, and releases its own lease when the kernel
exits, so the worker has no lease left after each client is done.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

BIN = Path(sys.executable).parent


@pytest.fixture
def user_env(tmp_path, tf_worker) -> dict[str, str]:
    """Jupyter directories of a user whose config names tf_worker (and no embedded worker)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"TfVgpu": {
        "workers": [tf_worker.address], "token_file": str(tf_worker.token_file), "embedded_worker": "off"}}))
    env = {"JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
    (tmp_path / "work").mkdir()
    return env


def subprocess_env(user_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_VGPU_HANDOFF" and not k.startswith("JUPYTER_")}
    env.update(user_env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


async def _leases(worker) -> list:
    async with worker.client() as client:
        return list((await client.inventory()).leases)


def leases(worker) -> list:
    return asyncio.run(_leases(worker))


def assert_no_leases_left(worker, timeout: float = 15.0) -> None:
    """The launcher releases its lease as the kernel exits; give it a bounded moment."""
    deadline = time.monotonic() + timeout
    while (left := leases(worker)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"leases left on the worker: {[(x.id, x.profile) for x in left]}\n{worker.log()[-3000:]}"


def notebook(*sources: str, parameters: str | None = None) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "vgpu-small", "display_name": "Python 3 · vGPU 4 GiB · 10 %",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if parameters is not None:
        cell = new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(new_code_cell(s) for s in sources)
    return nb


def outputs_text(cell: nbformat.NotebookNode) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            out.append(o["data"].get("text/plain", ""))
        elif o["output_type"] == "error":
            out.append(f"{o['ename']}: {o['evalue']}")
    return "".join(out)


def test_jupyter_console(tf_worker, user_env, tmp_path):
    script = "print(6*7)\nimport os; print('lease', os.environ['TF_VGPU_LEASE_ID'])\nexit\n"
    try:
        result = subprocess.run([str(BIN / "jupyter"), "console", "--kernel", "vgpu-small", "--simple-prompt"],
                                input=script, capture_output=True, text=True, timeout=120,
                                env=subprocess_env(user_env), cwd=tmp_path / "work")
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"jupyter console hung: stdout {exc.stdout!r}\nstderr {exc.stderr!r}\n"
                             f"worker log:\n{tf_worker.log()[-6000:]}") from None
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert any(line.rstrip().endswith(": 42") or line.strip() == "42" for line in lines), result.stdout
    lease_line = next(line for line in lines if "lease lease-" in line)
    lease_id = lease_line.split("lease ", 1)[1].strip()
    assert f"in lease {lease_id} on {tf_worker.address}" in result.stderr, result.stderr
    assert_no_leases_left(tf_worker)


def test_papermill(tf_worker, user_env, tmp_path):
    source, target = tmp_path / "work" / "report.ipynb", tmp_path / "work" / "report.out.ipynb"
    nbformat.write(notebook("import os\nprint(x * 6, os.environ['TF_VGPU_LEASE_ID'])", parameters="x = 1"), source)
    result = subprocess.run([str(BIN / "papermill"), "-k", "vgpu-small", "-p", "x", "7", str(source), str(target)],
                            capture_output=True, text=True, timeout=150, env=subprocess_env(user_env),
                            cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    out = nbformat.read(target, as_version=4)
    assert out.metadata["papermill"]["parameters"] == {"x": 7}
    assert out.metadata["kernelspec"]["name"] == "vgpu-small"
    value, lease_id = outputs_text(out.cells[-1]).split()
    assert value == "42"
    assert lease_id.startswith("lease-")
    assert f"in lease {lease_id} on {tf_worker.address}" in result.stderr
    assert_no_leases_left(tf_worker)


def test_nbclient_in_process(tf_worker, user_env, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    for key, value in user_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_VGPU_HANDOFF", raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    nb = notebook(
        "import os\nlease = os.environ['TF_VGPU_LEASE_ID']\nprint(lease, os.getcwd())",
        "squares = [i * i for i in range(10)]\nsum(squares)",
        "%vgpu status",
        "import IPython\nstatus = IPython.get_ipython().run_line_magic('vgpu', 'status')\nprint('ok')",
    )
    seen: list = []

    def on_cell_executed(cell, cell_index, execute_reply):
        # While the kernel runs, its lease is on the worker, under the configured token's principal.
        if cell_index == 0:
            with ThreadPoolExecutor(1) as pool:  # nbclient's loop is running in this thread
                seen.extend(pool.submit(leases, tf_worker).result(timeout=30))

    client = NotebookClient(nb, kernel_name="vgpu-small", timeout=60, startup_timeout=90,
                            resources={"metadata": {"path": str(tmp_path / "work")}},
                            on_cell_executed=on_cell_executed)
    client.execute()
    assert [(x.principal, x.profile) for x in seen] == [("alice", "small")]
    assert [k.status for k in seen[0].kernels]

    lease_id, cwd = outputs_text(nb.cells[0]).split()
    assert lease_id == seen[0].id
    assert cwd == str(tmp_path / "work")  # kernels start next to the notebook
    assert outputs_text(nb.cells[1]) == "285"
    status = outputs_text(nb.cells[2])
    assert "4 GiB VRAM, 10 % compute" in status and lease_id in status, status
    html = next(o for o in nb.cells[2].outputs if o["output_type"] == "execute_result")["data"]["text/html"]
    assert "tf-vgpu-status" in html
    assert outputs_text(nb.cells[3]).strip() == "ok"
    assert all(o["output_type"] != "error" for c in nb.cells for o in c.outputs)
    assert_no_leases_left(tf_worker)


async def test_kernel_manager_restart_and_a_hard_kill_free_the_slice(tf_worker, user_env, monkeypatch):
    """jupyter_client alone (what nbclient and papermill build on): the provisioner places from the
    client process; a restart runs in a fresh lease (the old one is released, not left to expire);
    `shutdown_kernel(now=True)` (the launcher is SIGKILLed and cannot release anything) still frees
    the slice at once, not after the lease TTL."""
    from jupyter_client.manager import AsyncKernelManager

    for key, value in user_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_VGPU_HANDOFF", raising=False)
    km = AsyncKernelManager(kernel_name="vgpu-small")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=90)
        [lease] = await _leases(tf_worker)
        assert lease.labels["client"] == "jupyter_client", lease.labels
        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=90)
        printed: list[str] = []
        reply = await kc.execute_interactive(
            "import os; print(os.environ['TF_VGPU_LEASE_ID'])", timeout=60,
            output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        [now] = await _leases(tf_worker)  # one lease: the old one is gone
        assert "".join(printed).strip() == now.id
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    deadline = time.monotonic() + 15  # well under the 60 s lease TTL
    while (left := await _leases(tf_worker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert not left, [(x.id, x.profile) for x in left]


def launch_kernelspec(name: str, connection_file: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run a kernelspec's argv the way VS Code (or any client that skips provisioners) does."""
    spec = json.loads((Path(__file__).parents[2] / "kernels" / name / "kernel.json").read_text())
    argv = [str(connection_file) if arg == "{connection_file}" else arg for arg in spec["argv"]]
    assert argv[:3] == ["python", "-m", "tf_jupyter.launcher"], argv  # found on PATH, as a client would
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=connection_file.parent)


def test_kernel_launcher_run_directly(tf_worker, user_env, tmp_path):
    """No provisioner handoff: the launcher reads the user's config (here default_qos = critical), places and
    leases itself, relays the connection file's ports, exits with the kernel's exit code and releases the lease;
    SIGTERM stops the kernel and frees the lease; an unknown profile exits 2 saying so."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    from tf_remoting.proto import pb

    config = Path(user_env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
    settings = json.loads(config.read_text())
    settings["TfVgpu"]["default_qos"] = "critical"
    config.write_text(json.dumps(settings))
    env = subprocess_env(user_env)
    log = tmp_path / "launcher.log"

    def start(n: int) -> tuple[subprocess.Popen[bytes], BlockingKernelClient]:
        connection_file, _ = write_connection_file(str(tmp_path / "work" / f"kernel-{n}.json"), ip="127.0.0.1",
                                                   key=os.urandom(16).hex().encode())
        proc = launch_kernelspec("vgpu-small", Path(connection_file), env, log)
        kc = BlockingKernelClient()
        kc.load_connection_file(connection_file)
        # No heartbeat channel: a client without a kernel manager that watches heartbeats gives up on any
        # kernel silent for its first second (here: placing the slice and starting the kernel on the worker).
        kc.start_channels(hb=False)
        try:
            kc.wait_for_ready(timeout=90)
        except BaseException:
            kc.stop_channels()
            proc.kill()
            proc.wait(10)
            raise
        return proc, kc

    # The kernel works; its exit code is the launcher's.
    proc, kc = start(1)
    try:
        printed: list[str] = []
        reply = kc.execute_interactive("import os; print(6 * 7, os.environ['TF_VGPU_LEASE_ID'])", timeout=60,
                                       output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply
        value, lease_id = "".join(printed).split()
        assert value == "42"
        [lease] = leases(tf_worker)
        assert lease.id == lease_id and lease.labels["client"] == "launcher", lease.labels
        assert lease.qos == pb.QOS_CRITICAL  # the profile leaves QoS at medium: c.TfVgpu.default_qos applies
        kc.execute("import os; os._exit(3)")
        assert proc.wait(timeout=60) == 3, log.read_text()
    finally:
        kc.stop_channels()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert f"in lease {lease_id} on {tf_worker.address}" in log.read_text()
    assert_no_leases_left(tf_worker)

    # SIGTERM to the launcher stops the kernel on the worker and frees the lease.
    proc, kc = start(2)
    try:
        [lease] = leases(tf_worker)
        [kernel] = lease.kernels
        assert kernel.status == pb.KERNEL_STATUS_RUNNING
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        kc.stop_channels()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_no_leases_left(tf_worker)
    assert tf_worker.kernel_states()[kernel.id]["status"] == "exited", tf_worker.kernel_states()

    # An unknown profile: exit code 2 and a message that says what exists.
    connection_file, _ = write_connection_file(str(tmp_path / "work" / "kernel-3.json"), ip="127.0.0.1")
    result = subprocess.run([sys.executable, "-m", "tf_jupyter.launcher", "--profile", "no-such", "-f",
                             connection_file], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unknown vGPU profile 'no-such'" in result.stderr and "tf-jupyter profiles list" in result.stderr, \
        result.stderr
    assert not leases(tf_worker)


def python3_as_vgpu(user_env: dict[str, str]) -> None:
    """A user whose `python3` kernelspec is a vGPU one: nbclient and papermill then append
    --HistoryManager.hist_file=:memory: to its argv, as for any python3 kernel."""
    spec = json.loads((Path(__file__).parents[2] / "kernels" / "vgpu-small" / "kernel.json").read_text())
    path = Path(user_env["JUPYTER_DATA_DIR"]).parent / "path"  # JUPYTER_PATH: before this venv's own python3
    (path / "kernels" / "python3").mkdir(parents=True)
    (path / "kernels" / "python3" / "kernel.json").write_text(json.dumps(spec))
    user_env["JUPYTER_PATH"] = str(path)


def test_nbclient_extra_arguments_reach_the_kernel(tf_worker, user_env, tmp_path, monkeypatch):
    """Defect 18: arguments a client appends to the kernelspec's argv were refused by the launcher
    ("unrecognized arguments") before the kernel answered; they are the kernel's, as for a local one."""
    from nbclient import NotebookClient

    for key, value in user_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_VGPU_HANDOFF", raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    nb = notebook("import IPython\nip = IPython.get_ipython()\n"
                  "print(ip.history_manager.hist_file, ip.config.InteractiveShell.colors)")
    client = NotebookClient(nb, kernel_name="vgpu-small", timeout=60, startup_timeout=90,
                            extra_arguments=["--HistoryManager.hist_file=:memory:",
                                             "--InteractiveShell.colors=nocolor"],
                            resources={"metadata": {"path": str(tmp_path / "work")}})
    client.execute()
    assert outputs_text(nb.cells[0]).split() == [":memory:", "nocolor"]
    assert_no_leases_left(tf_worker)


def test_papermill_on_a_python3_kernelspec_that_is_vgpu(tf_worker, user_env, tmp_path):
    python3_as_vgpu(user_env)
    source, target = tmp_path / "work" / "p3.ipynb", tmp_path / "work" / "p3.out.ipynb"
    nb = notebook("import os, IPython\nprint(IPython.get_ipython().history_manager.hist_file, "
                  "os.environ['TF_VGPU_LEASE_ID'])")
    nb.metadata["kernelspec"]["name"] = "python3"
    nbformat.write(nb, source)
    result = subprocess.run([str(BIN / "papermill"), str(source), str(target)], capture_output=True, text=True,
                            timeout=150, env=subprocess_env(user_env), cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    hist_file, lease_id = outputs_text(nbformat.read(target, as_version=4).cells[-1]).split()
    assert hist_file == ":memory:" and lease_id.startswith("lease-")
    assert_no_leases_left(tf_worker)


def test_launcher_refuses_to_replace_the_connection_file(tf_worker, user_env, tmp_path):
    """Appended arguments are only ever the kernel's options: one that would point the kernel at
    another connection file is refused with a sentence, and the lease is released."""
    from jupyter_client.connect import write_connection_file

    connection_file, _ = write_connection_file(str(tmp_path / "work" / "k.json"), ip="127.0.0.1")
    result = subprocess.run([sys.executable, "-m", "tf_jupyter.launcher", "--profile", "small", "-f",
                             connection_file, "--IPKernelApp.connection_file=/tmp/other.json"],
                            capture_output=True, text=True, timeout=90, env=subprocess_env(user_env))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "would replace the connection file" in result.stderr, result.stderr
    assert_no_leases_left(tf_worker)


async def test_each_kernel_gets_its_own_clients_environment(tmp_path, monkeypatch):
    """Defect 17: a vGPU kernel got the environment of whoever first started the local worker (plus a
    short pass-through list): a client's own variables and start_kernel(env=...) did not reach it, and a
    later client's kernel saw the first client's variables. On a worker on this machine a kernel now gets
    its client's environment exactly, as a local kernel would, less the launcher's TF_VGPU_* secrets."""
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file
    from jupyter_client.manager import AsyncKernelManager

    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"TfVgpu": {
        "embedded_worker": "auto", "embedded_worker_args": ["--host-vram", "8Gi", "--backend", "host"]}}))
    user = {"JUPYTER_CONFIG_DIR": str(config), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_PLATFORM_DIRS": "1"}
    (tmp_path / "work").mkdir()
    show = ("import os; print(os.environ.get('TFJ_MARK'), os.environ.get('TFJ_ONLY_ONE'), "
            "os.environ.get('TF_VGPU_CLIENT_TOKEN'), 'TF_VGPU_LEASE_ID' in os.environ)")

    # Client one runs the kernelspec's argv itself (as VS Code does): its launcher starts the local worker.
    env_one = subprocess_env(user) | {"TFJ_MARK": "one", "TFJ_ONLY_ONE": "x"}
    connection_file, _ = write_connection_file(str(tmp_path / "work" / "one.json"), ip="127.0.0.1",
                                               key=os.urandom(16).hex().encode())
    proc = launch_kernelspec("vgpu-small", Path(connection_file), env_one, tmp_path / "one.log")
    kc_one = BlockingKernelClient()
    kc_one.load_connection_file(connection_file)
    kc_one.start_channels(hb=False)
    km = None
    worker_pid = 0
    try:
        kc_one.wait_for_ready(timeout=90)
        printed: list[str] = []
        kc_one.execute_interactive(show, timeout=60, output_hook=lambda m: printed.append(m["content"].get("text", "")))
        assert "".join(printed).split() == ["one", "x", "None", "True"], (printed, (tmp_path / "one.log").read_text())
        worker_pid = json.loads((tmp_path / "runtime" / "tf-vgpu-worker.json").read_text())["pid"]

        # Client two: jupyter_client in this process, with start_kernel(env=...), on the same local worker.
        for key, value in user.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("TF_VGPU_HANDOFF", raising=False)
        monkeypatch.delenv("TFJ_ONLY_ONE", raising=False)
        km = AsyncKernelManager(kernel_name="vgpu-small")
        await km.start_kernel(env={**os.environ, "TFJ_MARK": "two"})
        kc_two = km.client()
        kc_two.start_channels()
        try:
            await kc_two.wait_for_ready(timeout=90)
            printed = []
            await kc_two.execute_interactive(show, timeout=60,
                                             output_hook=lambda m: printed.append(m["content"].get("text", "")))
            assert "".join(printed).split() == ["two", "None", "None", "True"], printed
        finally:
            kc_two.stop_channels()
    finally:
        kc_one.stop_channels()
        proc.terminate()
        proc.wait(60)
        if km is not None:
            await km.shutdown_kernel(now=True)
        if worker_pid:
            os.kill(worker_pid, 15)
