"""The kernel launcher on the Jupyter host carries no token in its environment, which any process
of the same user can read in /proc/<pid>/environ: it gets the client's token file's path, or a
one-use 0600 file it deletes as it starts. Real server, real worker, real kernels."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of, wait_until


def launcher_pids(jupyter_kernel_id: str) -> list[int]:
    """The kernel launcher processes started for this Jupyter kernel (by its connection file's name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tf_jupyter.launcher" in argv and any(jupyter_kernel_id.encode() in a for a in argv):
            found.append(int(entry))
    return found


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def start_session(server, name: str) -> tuple[dict, KernelWebSocket]:
    status, session = await server.request("POST", "/api/sessions", {
        "path": f"{name}.ipynb", "type": "notebook", "name": f"{name}.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, (session, server.log())
    ws = await KernelWebSocket.connect(server, session["kernel"]["id"])
    result = await ws.execute("print(6 * 7)")
    assert text_of(result).strip() == "42", result
    return session, ws


async def assert_launcher_holds_no_token(server, session: dict, *secrets: str, old: int = 0) -> int:
    async def one_launcher() -> list[int]:
        pids = launcher_pids(session["kernel"]["id"])
        return pids if len(pids) == 1 and pids[0] != old else []

    pids = await wait_until(one_launcher, timeout=30)
    environ = environ_of(pids[0])
    assert b"TF_VGPU_HANDOFF=" in environ  # it is the launcher, and it was handed its lease
    for secret in secrets:
        assert secret.encode() not in environ, "a token is in the launcher's /proc/<pid>/environ"
    return pids[0]


async def test_launcher_environ_holds_the_token_file_path_not_the_token(tf_worker_factory, jupyter_server_factory):
    worker = tf_worker_factory(["--host-vram", "8Gi"]).start()
    server = jupyter_server_factory(workers=[worker]).start()
    session, ws = await start_session(server, "a")
    try:
        pid = await assert_launcher_holds_no_token(server, session, worker.token)
        assert f"TF_VGPU_CLIENT_TOKEN_FILE={worker.token_file}".encode() in environ_of(pid)
    finally:
        await ws.aclose()
        await server.request("DELETE", f"/api/sessions/{session['id']}")


async def test_a_token_from_elsewhere_is_handed_over_in_a_file_read_once(tf_worker_factory, jupyter_server_factory,
                                                                         monkeypatch):
    """token_source 'hub': the server's token is JUPYTERHUB_API_TOKEN, not a file the launcher could
    follow. (The worker here knows it from its token file; the hub itself plays no part.)"""
    worker = tf_worker_factory(["--host-vram", "8Gi"]).start()
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", worker.token)
    server = jupyter_server_factory(workers=[worker], settings={"token_source": "hub"}).start()
    session, ws = await start_session(server, "b")
    handoff_dir = server.root / "runtime" / "tf-vgpu-handoff"
    try:
        pid = await assert_launcher_holds_no_token(server, session, worker.token)
        assert b"JUPYTERHUB_API_TOKEN" not in environ_of(pid)
        assert stat.S_IMODE(handoff_dir.stat().st_mode) == 0o700
        assert list(handoff_dir.iterdir()) == []  # taken and deleted by the launcher
        # A restart hands a fresh launcher its own file; it works and leaves nothing either.
        status, _ = await server.request("POST", f"/api/kernels/{session['kernel']['id']}/restart", {})
        assert status == 200, server.log()
        await ws.aclose()
        ws = await KernelWebSocket.connect(server, session["kernel"]["id"])
        assert text_of(await ws.execute("print(6 * 7)")).strip() == "42"
        await assert_launcher_holds_no_token(server, session, worker.token, old=pid)
        assert list(handoff_dir.iterdir()) == []
    finally:
        await ws.aclose()
        await server.request("DELETE", f"/api/sessions/{session['id']}")


def test_token_handoff_file_is_private_and_used_once(tmp_path):
    from tf_jupyter.handoff import take_token_handoff, write_token_handoff

    directory = tmp_path / "handoff"
    path = write_token_handoff("s3cret-token-value", directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert take_token_handoff(path) == "s3cret-token-value"
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="is gone .* restart the kernel"):
        take_token_handoff(path)
    with pytest.raises(ValueError, match="no token was handed to this launcher"):
        take_token_handoff("")
    # A directory left too open is tightened; a link in its place is refused.
    directory.chmod(0o755)
    os.unlink(write_token_handoff("x" * 20, directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(directory, target_is_directory=True)
    with pytest.raises(PermissionError, match="not a directory of this user"):
        write_token_handoff("x" * 20, link)
