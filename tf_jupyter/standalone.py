"""Placing a kernel without a Jupyter server (jupyter console, papermill, nbclient, VS Code).

The launcher and the provisioner of such clients read the same configuration a server would
(`c.TfVgpu.*`, or the local worker), start a pool of their own for one allocation, and wait in
its queue, saying their position on stderr.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from tf_jupyter.profiles import Profile
from tf_jupyter.tokens import client_token
from tf_remoting.client import RuntimeClient

if TYPE_CHECKING:  # imported when needed: a launcher handed its lease never loads the pool
    from tf_jupyter.pool import Pool

__all__ = ["LaunchError", "standalone_lease"]


class LaunchError(RuntimeError):
    """The kernel cannot be placed (no token configured, the queue timed out); the text says why."""


async def standalone_lease(profile: Profile, labels: dict[str, str] | None = None) -> tuple[Pool, RuntimeClient, str]:
    """Place and allocate without a Jupyter server, from the same configuration it would use.

    Returns the (started) pool, the chosen worker's client and the lease id; the caller stops the pool.
    """
    from tf_jupyter.config import TfVgpu, load_jupyter_config
    from tf_jupyter.local_worker import ensure_local_worker
    from tf_jupyter.placement import Request
    from tf_jupyter.pool import Pool, QueueTimeout, Tls, WaitingAt

    settings = TfVgpu(config=load_jupyter_config())
    addresses = list(settings.workers)
    token_file = settings.token_file
    if settings.embedded_worker == "on" or (settings.embedded_worker == "auto" and not addresses
                                            and not settings.workers_dns):
        worker, _ = ensure_local_worker(list(settings.embedded_worker_args))
        addresses.append(worker.address)
        token_file = token_file or worker.token_file
    if settings.token_source == "file" and not token_file:
        raise LaunchError("c.TfVgpu.token_file is not set; it is needed to reach the configured workers")
    try:
        token, follow = client_token(settings.token_source, token_file)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    pool = Pool(addresses, token, dns=settings.workers_dns,
                tls=Tls(settings.tls_ca, settings.tls_cert, settings.tls_key, settings.tls_server_name),
                policy=settings.placement_policy, queue_timeout=settings.queue_timeout, lease_ttl=settings.lease_ttl)
    pool.default_qos = settings.default_qos
    if follow:
        pool.follow_token_file(follow)
    await pool.start(watch=True)

    def queued(at: WaitingAt) -> None:
        print(f"tf-vgpu: waiting for a slice ({profile.slice_text}); position {at.position} in the line of "
              f"{at.worker} ({at.message or at.reason})",
              file=sys.stderr, flush=True)

    try:
        placed = await pool.allocate(Request(vram=profile.vram, compute=profile.compute, count=profile.count,
                                             whole_device=profile.whole_device),
                                     qos=pool.qos_for(profile.qos), profile=profile.name, on_queued=queued,
                                     labels=labels or {"client": "launcher", "launcher_pid": str(os.getpid())})
    except QueueTimeout as exc:
        await pool.stop()
        raise LaunchError(str(exc)) from None
    except BaseException:
        await pool.stop()
        raise
    return pool, pool.workers[placed.worker].client, placed.lease.id
