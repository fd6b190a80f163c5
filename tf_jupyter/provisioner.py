"""The `tf-vgpu` kernel provisioner (selected by the metadata of vgpu-* kernelspecs).

It builds on jupyter_client's LocalProvisioner: the kernelspec's argv (the kernel launcher) runs
locally as usual. Inside a Jupyter server with tf_jupyter loaded, `pre_launch` first places and
leases the slice through the server's pool — so the queue, the lease and the kernel are known to
the server and its API — and hands the lease to the launcher. A restart keeps the lease; a
shutdown releases it.

Anywhere else (nbclient, papermill, jupyter console, which also honour provisioners) there is no
server pool: it stays a LocalProvisioner and the launcher places the kernel itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Unicode

from tf_jupyter.launcher import HANDOFF_ENV, PARENT_ENV, TOKEN_ENV, TOKEN_FILE_ENV, find_profile, passthrough_env
from tf_jupyter.placement import Request
from tf_jupyter.pool import KernelSlice, Pool
from tf_jupyter.profiles import Profile
from tf_remoting.client import RemotingError
from tf_remoting.proto import pb

log = logging.getLogger("tf_jupyter.provisioner")


class VgpuProvisioner(LocalProvisioner):  # type: ignore[misc]
    profile = Unicode("small", config=True, help="The vGPU profile this kernelspec asks for.")

    worker: str = ""
    lease_id: str = ""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        pool = Pool.current()
        if pool is not None:
            metadata = getattr(self.kernel_spec, "metadata", {}) or {}
            profile = (Profile.from_metadata(metadata["tf_vgpu"]) if "tf_vgpu" in metadata
                       else find_profile(self.profile))
            if not self.lease_id or pool.lease(self.worker, self.lease_id) is None:
                pool.emit("kernel_placing", f"placing a {profile.slice_text} kernel", kernel_id=self.kernel_id)

                def queued(position: int) -> None:
                    pool.emit("kernel_queued", f"waiting for a slice ({profile.slice_text}): position {position}",
                              kernel_id=self.kernel_id, position=position)

                placed = await pool.allocate(
                    Request(vram=profile.vram, compute=profile.compute, count=profile.count,
                            whole_device=profile.whole_device),
                    qos=profile.qos if profile.qos != "medium" else pool.default_qos, profile=profile.name,
                    on_queued=queued,
                    labels={"jupyter_kernel_id": self.kernel_id, "client": "jupyter_server"})
                self.worker, self.lease_id = placed.worker, placed.lease.id
            pool.register_kernel(KernelSlice(self.kernel_id, self.worker, self.lease_id, profile.name, profile.qos))
        kwargs = await super().pre_launch(**kwargs)  # writes the connection file: its key is known from here
        if pool is not None:
            # Start the kernel on the worker now, from this already-connected server, so that it boots
            # while the launcher process starts up; the launcher then only attaches its relay to it.
            env = kwargs["env"]
            key = self.connection_info["key"]
            kernel = await pool.workers[self.worker].client.start_kernel(
                self.lease_id, key=key if isinstance(key, bytes) else key.encode(),
                signature_scheme=self.connection_info.get("signature_scheme") or "hmac-sha256",
                cwd=kwargs.get("cwd") or os.getcwd(), env=passthrough_env(env),
                labels={"jupyter_kernel_id": self.kernel_id or ""})
            tls = pool.tls
            env[HANDOFF_ENV] = json.dumps({"worker": self.worker, "lease_id": self.lease_id, "kernel_id": kernel.id,
                                           "ttl": pool.lease_ttl,
                                           "tls_ca": tls["tls_ca"] or "", "tls_cert": tls["client_cert"] or "",
                                           "tls_key": tls["client_key"] or "",
                                           "tls_server_name": tls["server_name"] or ""})
            env[TOKEN_ENV] = pool.token
            if pool.token_file:
                env[TOKEN_FILE_ENV] = pool.token_file
            env[PARENT_ENV] = str(os.getpid())
        return kwargs

    async def _signal_remote(self, signal: int) -> None:
        """Reach the kernel on the worker directly (a SIGKILLed launcher cannot forward)."""
        pool = Pool.current()
        if pool is None or not self.lease_id or self.worker not in pool.workers:
            return
        client = pool.workers[self.worker].client
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
        pool = Pool.current()
        if not restart and pool is not None and self.lease_id:
            await pool.release(self.worker, self.lease_id)
            pool.forget_kernel(self.kernel_id)
            self.lease_id = ""

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["tf_vgpu"] = {"worker": self.worker, "lease_id": self.lease_id, "profile": self.profile}
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        saved = provisioner_info.get("tf_vgpu") or {}
        self.worker, self.lease_id = saved.get("worker", ""), saved.get("lease_id", "")
