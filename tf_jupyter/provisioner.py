"""The `tf-vgpu` kernel provisioner (selected by the metadata of vgpu-* kernelspecs).

It builds on jupyter_client's LocalProvisioner: the kernelspec's argv (the kernel launcher) runs
locally as usual. `pre_launch` places and leases the slice, starts the kernel on the worker (it
boots while the launcher process starts up) and hands lease and kernel to the launcher, which
relays it. A restart keeps the lease; a shutdown releases it.

- Inside a Jupyter server with tf_jupyter loaded, placement goes through the server's pool, so the
  queue, the lease and the kernel are known to the server and its API.
- In any other client that honours provisioners (nbclient, papermill, jupyter console), there is no
  server pool: it reads the same configuration the launcher would (`c.TfVgpu.*`, or the local
  worker) and places from this process, which is already running, instead of from a fresh
  launcher process. Such clients may exit without shutting the kernel down through the provisioner
  (jupyter console does), so the launcher releases the lease when its kernel exits; a restart
  therefore gets a new lease, and a hard kill (`shutdown_kernel(now=True)`) is released here.

Clients that run the kernelspec's argv themselves (VS Code) skip the provisioner: the launcher then
places and allocates on its own (see tf_jupyter.launcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Unicode

from tf_jupyter.config import configured_kernel_env
from tf_jupyter.handoff import HANDOFF_ENV, PARENT_ENV, TOKEN_FILE_ENV, TOKEN_HANDOFF_ENV, write_token_handoff
from tf_jupyter.kernel_env import client_kernel_env
from tf_jupyter.kernelspecs import UnknownProfile, find_profile
from tf_jupyter.placement import Request
from tf_jupyter.pool import KernelSlice, Pool, WaitingAt
from tf_jupyter.pool.kernels import KERNEL_LABEL
from tf_jupyter.profiles import Profile
from tf_jupyter.standalone import LaunchError, standalone_lease
from tf_jupyter.tokens import read_token
from tf_remoting.client import RemotingError, RuntimeClient
from tf_remoting.proto import pb

if TYPE_CHECKING:
    from tf_jupyter.app import TfVgpuApp

log = logging.getLogger("tf_jupyter.provisioner")


def server_extension(configurable: Any) -> TfVgpuApp | None:
    """The tf_jupyter extension of the Jupyter server that `configurable` belongs to, if any.

    A provisioner's parent is its KernelManager, whose parent is the server's MultiKernelManager,
    whose parent is the ServerApp; the extension app sits in the server's tornado settings, where
    its handlers find it too. None outside a server (nbclient, papermill, jupyter console).
    """
    node = configurable
    while node is not None:
        web_app = getattr(node, "web_app", None)
        if web_app is not None:
            app: TfVgpuApp | None = web_app.settings.get("tf_vgpu")
            return app
        node = getattr(node, "parent", None)
    return None



def notebook_of(launch_kwargs: dict[str, Any], app: Any) -> str:
    """The notebook a kernel starts for, relative to the server's root (jupyter_server names a session's
    notebook in the kernel's environment, as JPY_SESSION_NAME); "" when it started without one."""
    name = str((launch_kwargs.get("env") or {}).get("JPY_SESSION_NAME", ""))
    root = getattr(getattr(app, "serverapp", None), "root_dir", "")
    if name and root and os.path.isabs(name):
        relative = os.path.relpath(name, root)
        name = relative if not relative.startswith("..") else os.path.basename(name)
    return name

class VgpuProvisioner(LocalProvisioner):
    profile = Unicode("small", config=True, help="The vGPU profile this kernelspec asks for.")

    worker: str = ""
    lease_id: str = ""
    # Without a server pool: how to reach the worker (token, token file, TLS, lease TTL).
    _reach: dict[str, Any] | None = None
    _token_handoff = ""  # the one-use token file of the last launch (its launcher deletes it)

    def _server_pool(self) -> Pool | None:
        """The pool of the Jupyter server this kernel belongs to; None outside one (or before it is up)."""
        app = server_extension(self)
        return app.pool if app is not None else None

    def _profile(self) -> Profile:
        metadata = getattr(self.kernel_spec, "metadata", {}) or {}
        return Profile.from_metadata(metadata["tf_vgpu"]) if "tf_vgpu" in metadata else find_profile(self.profile)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[RuntimeClient | None]:
        """A client of this kernel's worker: the server pool's, or a short-lived one of our own."""
        pool = self._server_pool()
        if pool is not None:
            state = pool.workers.get(self.worker)
            yield state.client if state is not None else None
            return
        if self._reach is None or not self.worker:
            yield None
            return
        reach = self._reach
        token = reach["token"]
        if reach["token_file"]:
            with contextlib.suppress(OSError, ValueError):
                token = read_token(reach["token_file"])  # tokens rotate
        client = RuntimeClient(self.worker, token, timeout=10.0, **reach["tls"])
        try:
            yield client
        finally:
            await client.close()

    async def _place_in_server(self, pool: Pool, profile: Profile, notebook: str = "") -> None:
        qos = pool.qos_for(profile.qos)  # the queue, the lease and idle release all see this one
        if not self.lease_id or pool.lease(self.worker, self.lease_id) is None:
            pool.emit("kernel_placing", f"placing a {profile.slice_text} kernel", kernel_id=self.kernel_id)

            def queued(at: WaitingAt) -> None:  # from the worker's line: place and why
                pool.emit("kernel_queued", f"waiting for a slice ({profile.slice_text}) at {at.worker}: "
                          f"position {at.position} ({at.message or at.reason})",
                          kernel_id=self.kernel_id, position=at.position, worker=at.worker, reason=at.reason)

            placed = await pool.place_kernel(
                self.kernel_id, Request(vram=profile.vram, compute=profile.compute, count=profile.count,
                                        whole_device=profile.whole_device),
                qos, profile.name, labels={"client": "jupyter_server", **({"notebook": notebook} if notebook else {})},
                on_queued=queued)
            self.worker, self.lease_id = placed.worker, placed.lease.id
        else:  # a restart keeps its lease
            pool.register_kernel(KernelSlice(self.kernel_id, self.worker, self.lease_id, profile.name, qos))

    async def _place_standalone(self, profile: Profile) -> None:
        # The launcher released the previous lease (if any) when its kernel exited: always a new one.
        pool, client, lease_id = await standalone_lease(profile, labels={"client": "jupyter_client",
                                                                         "client_pid": str(os.getpid())})
        try:
            self.worker, self.lease_id = client.address, lease_id
            self._reach = {"token": pool.token, "token_file": pool.token_file, "tls": pool.tls.client_kwargs(),
                           "ttl": pool.lease_ttl}
        finally:
            await pool.stop()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        app = server_extension(self)
        pool = app.pool if app is not None else None
        began = time.monotonic()
        reach: dict[str, Any]
        try:
            if app is not None and pool is None:
                # In a server, kernels wait for its pool and never place themselves the standalone
                # way (on some other worker, under other settings than the server's).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(app.pool_ready.wait(), 120)
                pool = app.pool
                if pool is None:
                    raise LaunchError("this vGPU kernel cannot start: " + (
                        app.pool_error or "the server's vGPU pool is not ready after 120 s"))
            profile = self._profile()
            if pool is not None:
                await self._place_in_server(pool, profile, notebook_of(kwargs, app))
                reach = {"token": pool.token, "token_file": pool.token_file, "tls": pool.tls.client_kwargs(),
                         "ttl": pool.lease_ttl}
            else:
                await self._place_standalone(profile)
                assert self._reach is not None
                reach = self._reach
            kernel_args = [str(a) for a in kwargs.get("extra_arguments") or []]  # the base class pops them
            kwargs = await super().pre_launch(**kwargs)  # writes the connection file: its key is known from here
            placed = time.monotonic()
            remote_id = await self._start_early(kwargs, kernel_args)
        except BaseException:
            await self._forget_failed_start(pool)
            raise
        env = kwargs["env"]
        self.log.debug("vGPU kernel %s: slice placed on %s in %.0f ms, kernel %s started there in %.0f ms",
                       self.kernel_id, self.worker, (placed - began) * 1e3, remote_id,
                       (time.monotonic() - placed) * 1e3)
        tls = reach["tls"]
        env[HANDOFF_ENV] = json.dumps({"worker": self.worker, "lease_id": self.lease_id, "kernel_id": remote_id,
                                       "ttl": reach["ttl"], "release_on_exit": pool is None,
                                       "tls_ca": tls["tls_ca"] or "", "tls_cert": tls["client_cert"] or "",
                                       "tls_key": tls["client_key"] or "",
                                       "tls_server_name": tls["server_name"] or ""})
        # The token itself stays out of the launcher's environment (tf_jupyter.handoff), the
        # server's own JupyterHub token included: the launcher needs only what it is handed.
        env.pop("JUPYTERHUB_API_TOKEN", None)
        if reach["token_file"]:
            env[TOKEN_FILE_ENV] = reach["token_file"]
        else:
            self._token_handoff = env[TOKEN_HANDOFF_ENV] = write_token_handoff(reach["token"])
        env[PARENT_ENV] = str(os.getpid())
        return kwargs

    async def _start_early(self, kwargs: dict[str, Any], kernel_args: list[str]) -> str:
        """Start the kernel on the worker from this already-running process, so that it boots while
        the launcher process starts; the launcher then only attaches its relay (it starts the kernel
        itself if this one is gone by then). Same key, directory, environment and arguments as the
        launcher would give it. Returns the worker's kernel id."""
        key = self.connection_info["key"]
        async with self._client() as client:
            if client is None:
                raise LaunchError(f"vGPU worker {self.worker} is not in the pool any more")
            kernel = await client.start_kernel(
                self.lease_id, key=key if isinstance(key, bytes) else str(key).encode(),
                signature_scheme=self.connection_info.get("signature_scheme") or "hmac-sha256",
                cwd=kwargs.get("cwd") or os.getcwd(),
                env=client_kernel_env(kwargs["env"], self.worker, self.profile, configured_kernel_env),
                labels={KERNEL_LABEL: self.kernel_id or ""}, kernel_args=kernel_args)
        return kernel.id

    async def _forget_failed_start(self, pool: Pool | None) -> None:
        """A start that failed (queue_timeout, no worker) leaves nothing: no lease, no pool entry,
        and no kernel id in the kernel manager's pending list, where jupyter_server's shutdown at
        exit would look for a kernel that never existed (a 404 that kept the server from stopping)."""
        await self._release_lease(pool)
        if pool is not None:
            pool.forget_kernel(self.kernel_id)
        forget_pending_kernel(getattr(self.parent, "parent", None), self.kernel_id)

    async def _signal_remote(self, signal: int) -> None:
        """Reach the kernel on the worker directly (a SIGKILLed launcher cannot forward)."""
        if not self.lease_id:
            return
        async with self._client() as client:
            if client is None:
                return
            with contextlib.suppress(RemotingError):
                for lease in await client.list_leases():
                    if lease.id == self.lease_id:
                        for k in lease.kernels:
                            if k.status == pb.KERNEL_STATUS_RUNNING:
                                with contextlib.suppress(RemotingError):
                                    await client.signal(k.id, signal)

    async def kill(self, restart: bool = False) -> None:
        await self._signal_remote(pb.SIGNAL_KILL)
        await super().kill(restart)

    async def terminate(self, restart: bool = False) -> None:
        await self._signal_remote(pb.SIGNAL_TERMINATE)
        await super().terminate(restart)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self._token_handoff:  # a launcher that died before taking its token leaves it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._token_handoff)
            self._token_handoff = ""
        if restart or not self.lease_id:
            return
        pool = self._server_pool()
        await self._release_lease(pool)
        if pool is not None:
            pool.forget_kernel(self.kernel_id)

    async def _release_lease(self, pool: Pool | None) -> None:
        """Free this kernel's lease, through the server's pool when there is one."""
        if not self.lease_id:
            return
        if pool is not None:
            await pool.release(self.worker, self.lease_id)
        else:
            async with self._client() as client:
                if client is not None:
                    with contextlib.suppress(RemotingError):
                        await client.release(self.lease_id)
        self.lease_id = ""

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["tf_vgpu"] = {"worker": self.worker, "lease_id": self.lease_id, "profile": self.profile}
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Re-attach (kernel_id and connection come from the base classes); in a server, its API sees the kernel."""
        await super().load_provisioner_info(provisioner_info)
        saved = provisioner_info.get("tf_vgpu") or {}
        self.worker, self.lease_id = saved.get("worker", ""), saved.get("lease_id", "")
        if saved.get("profile"):
            self.profile = saved["profile"]
        pool = self._server_pool()
        if pool is not None and self.lease_id:
            try:
                profile = self._profile()
                name, qos = profile.name, profile.qos
            except UnknownProfile as exc:  # removed since: the lease on the worker still holds the slice
                log.warning("re-attached kernel %s: %s", self.kernel_id, exc)
                name, qos = self.profile, "medium"
            pool.register_kernel(KernelSlice(self.kernel_id, self.worker, self.lease_id, name, pool.qos_for(qos)))


def forget_pending_kernel(multi_kernel_manager: Any, kernel_id: str) -> None:
    """Drop a kernel whose start failed from jupyter_client's pending kernels (it never pops them)."""
    pending = getattr(multi_kernel_manager, "_pending_kernels", None)
    if isinstance(pending, dict) and kernel_id not in getattr(multi_kernel_manager, "_kernels", {}):
        pending.pop(kernel_id, None)
