"""Attack tests (issue 11, point 5, the process and file side): a real worker run as root with
`--tenant-uids`, two principals alice and bob, real kernels. From each one's kernel, every attempt on
the other's processes, files, keys and ports, and on the worker's own files, fails with a permission
error; and each kernel runs as its principal's uid with a private home.

Root only. This machine's Python may live under a directory other users cannot enter (/root, 0700):
the `reachable_python` fixture gives others search permission (o+x, never listing) on those
directories for the module's duration, as an administrator installing for tenant uids would.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tf_remoting.client import RuntimeClient
from tf_remoting.client.runtime import ResourceExhausted
from tf_remoting.client.session import RemoteKernel
from tf_remoting.pytest_plugin import WorkerProcess, python_open_to_tenants, ready_kernel, tenant_worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tenant uids need a worker run as root")

RANGE = "20000-20099"


@pytest.fixture(scope="module")
def reachable_python() -> Iterator[None]:
    with python_open_to_tenants():
        yield


@dataclass
class Side:
    principal: str
    token: str
    lease_id: str
    kernel_id: str
    key: bytes
    kernel_dir: Path
    facts: dict[str, object]  # what the kernel says about itself


async def _start(worker: WorkerProcess, principal: str, token: str) -> Side:
    async with RuntimeClient(worker.address, token) as client:
        lease = await client.allocate(vram=64 << 20, compute=5, ttl_seconds=3600)
        async with ready_kernel(client, lease.id) as remote:
            result = await remote.execute(
                "import os, json, site\n"
                "open(os.path.join(os.environ['HOME'], 'secret.txt'), 'w').write('home secret')\n"
                "open('secret.txt', 'w').write('cwd secret')\n"
                "get_ipython().run_cell('x = 41  # typed by the user')\n"
                "print(json.dumps({'resuid': os.getresuid(), 'resgid': os.getresgid(), 'groups': os.getgroups(),"
                " 'home': os.environ['HOME'], 'ipythondir': os.environ['IPYTHONDIR'], 'cwd': os.getcwd(),"
                " 'user_base': site.getuserbase(), 'pid': os.getpid(),"
                " 'nonewprivs': [l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1],"
                " 'ipython_profile': get_ipython().profile_dir.location,"
                " 'hist_file': str(get_ipython().history_manager.hist_file)}))")
            assert result.status == "ok", result.reply
            facts = json.loads(result.stdout())
            kernel_id, key = remote.channels.kernel_id, remote.session.key
    return Side(principal, token, lease.id, kernel_id, key, worker.state_dir / "kernels" / kernel_id, facts)


@pytest.fixture(scope="module")
def pool(reachable_python: None) -> Iterator[tuple[WorkerProcess, dict[str, Side]]]:
    worker = tenant_worker(["--tenant-uids", RANGE, "--no-shares-filesystem"]).start()
    try:
        sides = {"alice": asyncio.run(_start(worker, "alice", worker.token)),
                 "bob": asyncio.run(_start(worker, "bob", worker.other_token))}
        yield worker, sides
    finally:
        worker.cleanup()


async def run_in(worker: WorkerProcess, side: Side, code: str) -> str:
    async with RuntimeClient(worker.address, side.token) as client:
        remote = RemoteKernel(client, side.kernel_id, side.key)
        await remote.connect()
        try:
            result = await remote.execute(code, timeout=60)
        finally:
            await remote.close()
    assert result.status == "ok", result.reply
    return result.stdout()


ATTACK = r'''
import json, os, signal, socket
victim = json.loads({victim!r})
results = {{}}
def attempt(name, fn):
    try:
        fn()
        results[name] = "succeeded"
    except Exception as exc:
        results[name] = type(exc).__name__
attempt("signal kernel", lambda: os.kill(victim["kernel_pid"], signal.SIGTERM))
attempt("signal nanny", lambda: os.kill(victim["nanny_pid"], signal.SIGTERM))
attempt("read environ", lambda: open(f"/proc/{{victim['kernel_pid']}}/environ", "rb").read())
attempt("read nanny environ", lambda: open(f"/proc/{{victim['nanny_pid']}}/environ", "rb").read())
attempt("list cwd", lambda: os.listdir(victim["cwd"]))
attempt("read cwd file", lambda: open(os.path.join(victim["cwd"], "secret.txt")).read())
attempt("list home", lambda: os.listdir(victim["home"]))
attempt("read home file", lambda: open(os.path.join(victim["home"], "secret.txt")).read())
attempt("list ipython dir", lambda: os.listdir(victim["ipythondir"]))
attempt("read history file", lambda: open(os.path.join(victim["ipython_profile"], "history.sqlite"), "rb").read())
attempt("list kernel dir", lambda: os.listdir(victim["kernel_dir"]))
attempt("read connection file", lambda: open(os.path.join(victim["kernel_dir"], "connection.json")).read())
attempt("read spec", lambda: open(os.path.join(victim["kernel_dir"], "spec.json")).read())
attempt("read kernel fds", lambda: os.listdir(f"/proc/{{victim['kernel_pid']}}/fd"))
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()
attempt("connect nanny socket", lambda: connect(victim["nanny_socket"]))
attempt("connect shell port", lambda: connect(victim["shell_socket"]))
attempt("read token file", lambda: open(victim["token_file"]).read())
attempt("read ledger", lambda: open(victim["ledger"], "rb").read())
attempt("list state dir", lambda: os.listdir(victim["state_dir"]))
attempt("read scope", lambda: open(victim["scope"]).read())
attempt("setuid root", lambda: os.setuid(0))
attempt("setgid root", lambda: os.setgid(0))
attempt("setresuid root", lambda: os.setresuid(0, 0, 0))
attempt("setuid victim", lambda: os.setuid(victim["uid"]))
attempt("setgroups root", lambda: os.setgroups([0]))
print(json.dumps(results))
'''

# Sent unsigned to the victim's shell socket by the attacker: creates the marker file if it ever runs.
UNSIGNED = r'''
import json, os, time, uuid, zmq
victim = json.loads({victim!r})
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect("ipc://" + victim["shell_socket"])
header = {{"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "username": "x", "session": "x",
          "date": "", "version": "5.3"}}
content = {{"code": "open(%r, 'w').write('ran')" % victim["marker"], "silent": False}}
parts = [b"<IDS|MSG>", b""] + [json.dumps(p).encode() for p in (header, {{}}, {{}}, content)]
try:
    s.send_multipart(parts, flags=zmq.NOBLOCK)
    print("sent")
except zmq.Again:
    print("not connected")
time.sleep(1.0)
s.close()
ctx.term()
'''


def victim_facts(worker: WorkerProcess, side: Side, marker: str) -> dict[str, object]:
    state = json.loads((side.kernel_dir / "state.json").read_text())
    sockets = Path(state["socket"]).parent
    return {**side.facts, "kernel_pid": state["kernel_pid"], "nanny_pid": state["nanny_pid"],
            "kernel_dir": str(side.kernel_dir), "nanny_socket": state["socket"],
            "shell_socket": str(sockets / "n-k-1"), "token_file": str(worker.token_file),
            "ledger": str(worker.state_dir / "ledger.sqlite3"), "state_dir": str(worker.state_dir),
            "scope": str(worker.state_dir / "scopes" / side.kernel_id), "uid": side.facts["resuid"][0],  # type: ignore[index]
            "marker": marker}


@pytest.mark.parametrize("attacker, victim", [("alice", "bob"), ("bob", "alice")])
async def test_every_attack_on_the_other_tenant_is_refused(pool: tuple[WorkerProcess, dict[str, Side]],
                                                           attacker: str, victim: str) -> None:
    worker, sides = pool
    marker = f"/tmp/tf-tenant-marker-{secrets.token_hex(6)}"
    facts = victim_facts(worker, sides[victim], marker)
    results = json.loads(await run_in(worker, sides[attacker], ATTACK.format(victim=json.dumps(facts))))
    assert set(results.values()) == {"PermissionError"}, results
    # The victim's kernel and nanny are alive and untouched.
    state = json.loads((sides[victim].kernel_dir / "state.json").read_text())
    assert state["status"] == "running"
    for pid in (state["kernel_pid"], state["nanny_pid"]):
        os.kill(pid, 0)
    # Unsigned (keyless) execute to the victim's shell port: nothing runs.
    await run_in(worker, sides[attacker], UNSIGNED.format(victim=json.dumps(facts)))
    assert "ok" == (await run_in(worker, sides[victim], "print('ok', end='')"))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_each_kernel_runs_as_its_own_uid_with_a_private_home(pool: tuple[WorkerProcess, dict[str, Side]],
                                                             who: str) -> None:
    worker, sides = pool
    facts = sides[who].facts
    uid = facts["resuid"][0]  # type: ignore[index]
    assert 20000 <= uid <= 20099
    assert facts["resuid"] == [uid] * 3 and facts["resgid"] == [uid] * 3 and 0 not in facts["groups"]  # type: ignore[operator]
    other = sides["bob" if who == "alice" else "alice"].facts["resuid"][0]  # type: ignore[index]
    assert other != uid
    assert facts["nonewprivs"] == "1"
    home = Path(str(facts["home"]))
    assert home.parent == worker.state_dir / "homes"
    st = os.stat(home)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
    assert str(facts["ipythondir"]).startswith(str(home) + "/")
    assert str(facts["ipython_profile"]).startswith(str(home) + "/")  # its IPython profile is in its home
    assert facts["hist_file"] == ":memory:"  # history is kept in the kernel, no file anyone could read
    assert str(facts["user_base"]).startswith(str(home) + "/")  # pip install --user lands in its home
    cwd = Path(str(facts["cwd"]))
    assert os.stat(cwd).st_uid == uid and stat.S_IMODE(os.stat(cwd).st_mode) == 0o700
    kdir = sides[who].kernel_dir
    assert os.stat(kdir).st_uid == uid and stat.S_IMODE(os.stat(kdir).st_mode) == 0o700
    for name in ("connection.json", "spec.json"):
        st = os.stat(kdir / name)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o600), name
    for path in (worker.state_dir / "ledger.sqlite3", worker.token_file):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path


async def test_kernel_processes_are_counted_and_killed_across_uids(pool: tuple[WorkerProcess, dict[str, Side]]
                                                                   ) -> None:
    worker, sides = pool
    alice = sides["alice"]
    child = int(await run_in(worker, alice, "import subprocess, sys\n"
                             "p = subprocess.Popen([sys.executable, '-c', 'b = bytearray(80 << 20); "
                             "b[::4096] = b\"x\" * len(b[::4096]); import time; time.sleep(600)'])\n"
                             "import time; time.sleep(1.5)\nprint(p.pid, end='')"))
    async with RuntimeClient(worker.address, alice.token) as client:
        async def sample() -> int:
            async for update in client.watch():
                for s in update.leases:
                    if s.lease_id == alice.lease_id and s.vram_used > 80 << 20:
                        return s.vram_used
            raise AssertionError("watch ended")
        assert await asyncio.wait_for(sample(), 30) > 80 << 20  # the root worker reads the tenant's processes
    os.kill(child, 0)


def test_a_restarted_worker_keeps_uids_and_readopts(pool: tuple[WorkerProcess, dict[str, Side]]) -> None:
    worker, sides = pool
    worker.stop()
    worker.start()

    async def again() -> tuple[str, list[int]]:
        out = await run_in(worker, sides["alice"], "import os; print(os.getuid(), end='')")
        async with RuntimeClient(worker.address, worker.token) as client:
            lease = await client.allocate(vram=16 << 20, compute=1, ttl_seconds=60)
            async with ready_kernel(client, lease.id) as remote:
                uid = (await remote.execute("import os; print(os.getuid(), end='')")).stdout()
            await client.release(lease.id)
        return out, [int(uid)]

    out, uids = asyncio.run(again())
    assert int(out) == sides["alice"].facts["resuid"][0] == uids[0]  # type: ignore[index]


def test_uid_range_used_up_is_resource_exhausted(reachable_python: None) -> None:
    worker = tenant_worker(["--tenant-uids", "20100-20100"]).start()
    try:
        async def both() -> ResourceExhausted:
            async with RuntimeClient(worker.address, worker.token) as alice:
                lease = await alice.allocate(vram=16 << 20, compute=1, ttl_seconds=60)
                await alice.start_kernel(lease.id, key=b"k" * 32)
            async with RuntimeClient(worker.address, worker.other_token) as bob:
                lease = await bob.allocate(vram=16 << 20, compute=1, ttl_seconds=60)
                with pytest.raises(ResourceExhausted) as err:
                    await bob.start_kernel(lease.id, key=b"k" * 32)
            return err.value

        error = asyncio.run(both())
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no uid is left for principal 'bob'" in str(error)
    finally:
        worker.cleanup()


def test_a_home_left_by_an_earlier_uid_is_reowned(reachable_python: None) -> None:
    worker = tenant_worker(["--tenant-uids", "20200-20210"])
    from tf_remoting.worker.tenants import safe_name

    home = worker.state_dir / "homes" / safe_name("alice")
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    for p in (home, home / "notes.txt"):
        os.chown(p, 20999, 20999)
    worker.start()
    try:
        async def uid() -> str:
            async with RuntimeClient(worker.address, worker.token) as client:
                lease = await client.allocate(vram=16 << 20, compute=1, ttl_seconds=60)
                async with ready_kernel(client, lease.id) as remote:
                    return (await remote.execute("import os; print(os.getuid(), open(os.path.expanduser("
                                                 "'~/notes.txt')).read(), end='')")).stdout()

        assert asyncio.run(uid()) == "20200 mine"
        assert os.stat(home / "notes.txt").st_uid == 20200
    finally:
        worker.cleanup()


def test_worker_without_capabilities_refuses_to_start(reachable_python: None) -> None:
    root = Path(tempfile.mkdtemp(prefix="tfw-", dir="/tmp"))
    try:
        os.chown(root, 65534, 65534)
        tokens = root / "tokens"
        tokens.write_text(f"alice {secrets.token_urlsafe(24)}\n")
        os.chown(tokens, 65534, 65534)
        os.chmod(tokens, 0o600)
        proc = subprocess.run([sys.executable, "-m", "tf_remoting", "--listen", "127.0.0.1:0", "--token-file",
                               str(tokens), "--state-dir", str(root / "state"), "--backend", "host",
                               "--tenant-uids", RANGE], user=65534, group=65534, extra_groups=[],
                              capture_output=True, text=True, timeout=60, cwd="/")
        assert proc.returncode != 0
        assert "needs root or the capabilities" in proc.stderr and "lacks CAP_CHOWN" in proc.stderr, proc.stderr
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False, timeout=30)


def test_readable_token_file_is_refused(reachable_python: None) -> None:
    worker = tenant_worker(["--tenant-uids", RANGE])
    os.chmod(worker.token_file, 0o644)
    try:
        with pytest.raises(RuntimeError, match="readable by other users.*chmod 600"):
            worker.start(timeout=30)
    finally:
        worker.cleanup()


def test_without_tenant_uids_kernels_run_as_the_worker(reachable_python: None) -> None:
    worker = WorkerProcess(["--host-vram", "4Gi"]).start()
    try:
        async def uid() -> str:
            async with RuntimeClient(worker.address, worker.token) as client:
                lease = await client.allocate(vram=16 << 20, compute=1, ttl_seconds=60)
                async with ready_kernel(client, lease.id) as remote:
                    return (await remote.execute("import os; print(os.getuid(), os.environ['HOME'], end='')")).stdout()

        assert asyncio.run(uid()) == f"{os.getuid()} {os.environ.get('HOME', '')}"
    finally:
        worker.cleanup()

