"""The kernel launcher: the argv of every vGPU kernelspec.

    python -m tf_jupyter.launcher --profile small -f CONNECTION_FILE

To Jupyter it looks like a local kernel process: it binds the connection file's ports on
127.0.0.1 and exits with the kernel's exit code. Behind that it holds a lease on a worker, asks
the worker to start the kernel inside the slice, relays the five channels over one Channels
stream (tf_jupyter.relay), renews the lease, and turns SIGINT/SIGTERM into Signal calls.

Two ways in:
- Started by the `tf-vgpu` provisioner inside a Jupyter server: the lease is handed over in
  `TF_VGPU_HANDOFF` (worker, lease id; the token as a file, never in the environment: see
  tf_jupyter.handoff). The server placed it, queued it if needed and owns it: the launcher never
  releases it (a restart keeps the slice).
- Started by any other client (jupyter console, papermill, nbclient, VS Code): it reads the same
  Jupyter configuration (`c.TfVgpu.*`) to find workers, or uses the local worker (starting one
  that stops itself after 10 idle minutes), places and allocates itself, waits in the queue
  (position on stderr), and releases the lease when the kernel exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tf_jupyter.config import configured_kernel_env
from tf_jupyter.handoff import HANDOFF_ENV, PARENT_ENV, TOKEN_FILE_ENV, TOKEN_HANDOFF_ENV, take_token_handoff
from tf_jupyter.kernel_env import client_kernel_env
from tf_jupyter.kernelspecs import UnknownProfile, find_profile
from tf_jupyter.local_worker import LocalWorkerError
from tf_jupyter.relay import Relay
from tf_jupyter.standalone import LaunchError, standalone_lease
from tf_jupyter.tokens import read_token
from tf_remoting.client import NotFound, RemotingError, RuntimeClient
from tf_remoting.proto import pb

log = logging.getLogger("tf_jupyter.launcher")

class Launcher:
    def __init__(self, connection_file: str, profile_name: str, kernel_args: list[str] | None = None) -> None:
        self.connection = json.loads(Path(connection_file).read_text())
        self.profile_name = profile_name  # resolved only when we place the kernel ourselves
        # Arguments a client appended to the kernelspec's argv (nbclient's extra_arguments): the kernel's.
        self.kernel_args = list(kernel_args or [])
        self.client: RuntimeClient | None = None
        self.lease_id = ""
        self.kernel_id = ""
        self.owns_lease = False
        self.pool: Any = None
        self.stopping = False
        self.ttl = 60.0
        # The process that started us: a server says who it is (it may be gone before we look).
        self.parent_pid = int(os.environ.get(PARENT_ENV) or os.getppid())

    async def _acquire(self) -> None:
        handoff = os.environ.get(HANDOFF_ENV)
        if handoff:
            info = json.loads(handoff)
            self.client = RuntimeClient(info["worker"], _handed_token(), tls_ca=info.get("tls_ca") or None,
                                        client_cert=info.get("tls_cert") or None,
                                        client_key=info.get("tls_key") or None,
                                        server_name=info.get("tls_server_name") or None)
            self.lease_id = info["lease_id"]
            self.kernel_id = info.get("kernel_id", "")
            self.ttl = float(info.get("ttl") or 60)
            # Placed by a provisioner outside a Jupyter server: nothing outlives this process to
            # release the lease (jupyter console just exits), so it is ours to release.
            self.owns_lease = bool(info.get("release_on_exit"))
            return
        self.pool, self.client, self.lease_id = await standalone_lease(find_profile(self.profile_name))
        self.ttl = float(self.pool.lease_ttl)
        self.owns_lease = True

    async def run(self) -> int:
        relay = Relay(self.connection)
        relay.bind()  # bind first: the client may connect and queue requests meanwhile
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(self._interrupt()))
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self._terminate()))
        renewer: asyncio.Task[None] | None = None
        try:
            await self._acquire()
            assert self.client is not None
            if not self.kernel_id or not await self._still_running(self.kernel_id):
                kernel = await self.client.start_kernel(
                    self.lease_id, key=self.connection["key"].encode(),
                    signature_scheme=self.connection.get("signature_scheme", "hmac-sha256"),
                    cwd=os.getcwd(), env=self._kernel_env(),
                    labels={"launcher_pid": str(os.getpid())}, kernel_args=self.kernel_args)
                self.kernel_id = kernel.id
            print(f"tf-vgpu: kernel {self.kernel_id} in lease {self.lease_id} on {self.client.address}",
                  file=sys.stderr, flush=True)
            # The launcher lives exactly as long as the kernel is in use, so it is the heartbeat,
            # whoever owns the lease.
            token_file = os.environ.get(TOKEN_FILE_ENV) or (self.pool.token_file if self.pool is not None else "")
            renewer = self.client.keep_alive(self.lease_id, interval=max(0.5, self.ttl / 3),
                                             token_source=(lambda: read_token(token_file)) if token_file else None)
            channels = self.client.channels(self.kernel_id, reconnect_timeout=120.0)
            # %vgpu push / pull move files between the kernel's directory and ours: a Jupyter server
            # starts us in the notebook's directory.
            channels.serve_transfers(os.getcwd())
            await channels.open()
            relaying = asyncio.create_task(relay.run(channels))
            orphaned = asyncio.create_task(_parent_gone(self.parent_pid))
            done, _ = await asyncio.wait({relaying, orphaned}, return_when=asyncio.FIRST_COMPLETED)
            if orphaned in done:
                # The Jupyter server (or other client) that started us died: nobody can reach this
                # kernel any more, and jupyter_server cannot re-attach it. Free the slice now.
                print("tf-vgpu: the process that started this kernel is gone; stopping it and freeing its slice",
                      file=sys.stderr, flush=True)
                relaying.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relaying
                self.owns_lease = True
                await channels.close()
                return 1
            orphaned.cancel()
            code = relaying.result()
            await channels.close()
            return int(code or 0)
        finally:
            if renewer is not None:
                renewer.cancel()
            relay.close()
            if self.owns_lease and self.client is not None and self.lease_id:
                with contextlib.suppress(RemotingError):
                    await self.client.release(self.lease_id)
            if self.pool is not None:
                await self.pool.stop()
            elif self.client is not None:
                await self.client.close()

    def _kernel_env(self) -> dict[str, str]:
        """This launcher's environment, as a local kernel would get it (see tf_jupyter.kernel_env)."""
        assert self.client is not None
        return client_kernel_env(os.environ, self.client.address, self.profile_name, configured_kernel_env)

    async def _still_running(self, kernel_id: str) -> bool:
        assert self.client is not None
        # Only 'no such kernel' means start one: any other error (worker away, token refused)
        # raises, since a second kernel started because a question went unanswered would leave
        # the first one running unseen in the lease.
        try:
            return (await self.client.kernel_state(kernel_id)).status == pb.KERNEL_STATUS_RUNNING
        except NotFound:
            return False

    async def _interrupt(self) -> None:
        if self.client is not None and self.kernel_id:
            with contextlib.suppress(RemotingError):
                await self.client.interrupt(self.kernel_id)

    async def _terminate(self) -> None:
        """SIGTERM: ask the kernel to stop; escalate to a kill if it lingers."""
        if self.stopping or self.client is None or not self.kernel_id:
            if not self.kernel_id:
                os._exit(143)  # nothing started yet
            return
        self.stopping = True
        with contextlib.suppress(RemotingError):
            await self.client.signal(self.kernel_id, pb.SIGNAL_TERMINATE)
        await asyncio.sleep(5)
        with contextlib.suppress(RemotingError):
            await self.client.signal(self.kernel_id, pb.SIGNAL_KILL)


def _handed_token() -> str:
    """The token the provisioner handed over: from the client's token file, or from a one-use file
    deleted as it is read. Never from the environment, which same-user processes can read."""
    token_file = os.environ.get(TOKEN_FILE_ENV)
    try:
        if token_file:
            return read_token(token_file)
        return take_token_handoff(os.environ.pop(TOKEN_HANDOFF_ENV, ""))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot reach the vGPU worker: {exc}") from None


async def _parent_gone(parent: int, interval: float = 1.0) -> None:
    """Returns when `parent`, the process that started the launcher, has exited (we get re-parented)."""
    while os.getppid() == parent:
        await asyncio.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_jupyter.launcher",
                                     description="Run a Jupyter kernel in a vGPU slice "
                                     "(the argv of vgpu-* kernelspecs). Other arguments go to the kernel, "
                                     "as a client's extra arguments would to a local kernel.",
                                     allow_abbrev=False)  # --prof... is IPython's --profile, not ours
    parser.add_argument("--profile", default="small", help="profile name (see tf-jupyter profiles list)")
    parser.add_argument("-f", "--connection-file", required=True, help="Jupyter connection file")
    args, kernel_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tf-vgpu %(levelname)s %(message)s")
    launcher = Launcher(args.connection_file, args.profile, kernel_args)
    try:
        return asyncio.run(launcher.run())
    except UnknownProfile as exc:
        print(f"tf-vgpu: {exc}", file=sys.stderr)
        return 2
    except (LaunchError, LocalWorkerError) as exc:
        print(f"tf-vgpu: {exc}", file=sys.stderr)
        return 1
    except RemotingError as exc:
        print(f"tf-vgpu: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
