"""The kernel nanny: one small process per kernel that outlives the worker.

The worker starts `python -m tf_remoting.worker.nanny [--tenant UID:GID:GROUPS] DIR` in a new
process session (with `--tenant`, the nanny first becomes the principal's own uid: see
`tf_remoting.worker.tenants`). The nanny starts the kernel as its child, connects to its ZMQ
endpoints (IPC sockets in the state directory) and serves one unix socket that the worker connects
to (`tf_remoting.worker.nanny_loop`). It numbers every message the kernel sends and keeps it in the
replay buffer until the client acknowledges it, so a worker restart (even SIGKILL) or a network cut
loses nothing: the buffer lives here, not in the worker. It also reaps the kernel and records its
exit code in DIR/state.json, where a restarted worker finds it.

Files in DIR: spec.json (written by the worker), connection.json, state.json, kernel.log.
The nanny is a child subreaper (see `tf_remoting.worker.proctree`): whatever the kernel starts,
double-forked or orphaned, stays below it, is counted as the kernel's, and is killed and reaped
with the kernel. This module imports only the standard library (and tf_remoting modules that do):
the kernel starts before anything heavy loads.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tf_remoting.worker.nanny_state import write_state
from tf_remoting.worker.proctree import (
    become,
    die_with_parent,
    kill_descendants,
    no_new_privileges,
    set_child_subreaper,
)


def listen(socket_path: str) -> socket.socket:
    """The unix socket the worker connects to (owner-only), listening before the relay loop runs."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(socket_path)
    finally:
        os.umask(old)
    listener.listen(4)
    listener.setblocking(False)
    return listener


def launch_kernel(directory: Path, spec: dict[str, Any]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Write the connection file and start the kernel process; returns it and the connection."""
    # IPC endpoints next to the nanny's socket: no TCP port can be taken by someone else between
    # choosing it and the kernel binding it (which made kernels die at start under load).
    ipc_prefix = str(spec["socket"]).removesuffix(".sock") + "-k"
    connection = {
        "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
        "ip": ipc_prefix, "transport": "ipc",
        "key": base64.b64decode(spec["key"]).decode(),
        "signature_scheme": spec.get("signature_scheme") or "hmac-sha256", "kernel_name": "",
    }
    conn_file = directory / "connection.json"
    fd = os.open(conn_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(connection, f)
    argv = [a.replace("{connection_file}", str(conn_file)) for a in spec["argv"]]
    # The worker wrote the whole environment (its base, the client's, the slice's); an older spec
    # holds only additions to ours.
    env = dict(spec["env"]) if spec.get("env_complete") else {**os.environ, **spec.get("env", {})}
    with open(directory / "kernel.log", "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=spec.get("cwd") or None, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    return proc, connection


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    tenant = args[:1] == ["--tenant"]
    if tenant:
        identity, args = args[1], args[2:]
    if len(args) != 1:
        print("usage: python -m tf_remoting.worker.nanny [--tenant UID:GID:GROUP,...] KERNEL_DIR", file=sys.stderr)
        return 2
    if tenant:
        # Started by a root worker for a tenant: become the tenant before reading anything, make sure
        # nothing of root is left, and that no setuid program can give the kernel any of it back.
        # (Here rather than in the worker between fork and exec: that fork, in a process with gRPC's
        # threads, crashed now and then.)
        uid, gid, groups = identity.split(":")
        become(int(uid), int(gid), [int(g) for g in groups.split(",") if g])
        os.umask(0o077)
        if 0 in os.getresuid() or 0 in os.getresgid() or 0 in os.getgroups():
            print("nanny: --tenant, but this process still has root's uid or gid; not starting a kernel",
                  file=sys.stderr)
            return 2
        if not no_new_privileges():
            print("nanny: cannot set PR_SET_NO_NEW_PRIVS; not starting a kernel", file=sys.stderr)
            return 2
    directory = Path(args[0])
    spec = json.loads((directory / "spec.json").read_text())
    subreaper = set_child_subreaper()  # before the kernel exists: all its descendants inherit it
    proc, connection = launch_kernel(directory, spec)
    # Listen and say "running" now, with the standard library only: the worker's StartKernel
    # returns here, and a client that connects early waits in the backlog while the relay loop loads.
    listener = listen(str(spec["socket"]))
    write_state(directory, "running", proc.pid, None, str(spec["socket"]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nanny %(levelname)s %(message)s")
    from tf_remoting.worker.nanny_loop import Nanny  # heavy imports, while the kernel starts

    if not subreaper:
        logging.warning("could not become a child subreaper: processes the kernel double-forks escape "
                        "its accounting and its end")
    nanny = Nanny(directory, spec, proc, connection)
    nanny.start(listener)
    try:
        return nanny.run()
    finally:
        # The kernel and everything it started, whoever their parent is now.
        left = kill_descendants(os.getpid(), reap_them=True)
        if left:
            logging.warning("processes %s of the kernel survived SIGKILL", sorted(left))
        with contextlib.suppress(OSError):
            os.unlink(nanny.socket_path)
        for port in range(1, 6):  # the kernel's IPC endpoints, if it could not remove them itself
            with contextlib.suppress(OSError):
                os.unlink(f"{connection['ip']}-{port}")


if __name__ == "__main__":
    sys.exit(main())
