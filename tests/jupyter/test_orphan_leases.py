"""A lease a Jupyter server placed that none of its kernels holds is released by that server, and
only by it: two servers of one principal on one worker, with real processes.

Such a lease is left when the worker granted but its reply never came back (the call failed, the
kernel went to another worker or failed to start), or when a release failed; nobody renews it, so
before it held its slice until its TTL (CI saw a kernel wait in vain for that room). The test makes
those leases directly, labelled as the server labels its own (tf_jupyter.pool.kernels).
"""

from __future__ import annotations

import asyncio

from tf_jupyter.pool.kernels import KERNEL_LABEL, SERVER_LABEL
from tf_jupyter.pytest_plugin import wait_until

GiB = 1 << 30


async def test_each_server_releases_its_own_orphaned_leases_and_nothing_else(tf_worker_factory,
                                                                             jupyter_server_factory):
    worker = tf_worker_factory(["--host-vram", "16Gi"]).start()
    a = jupyter_server_factory(workers=[worker], settings={"refresh_interval": 0.5}).start()
    b = jupyter_server_factory(workers=[worker], settings={"refresh_interval": 0.5}).start()
    kernel_a = await a.start_session("a.ipynb", "vgpu-small")
    kernel_b = await b.start_session("b.ipynb", "vgpu-small")
    async with worker.client() as alice:  # the principal of both servers
        held = {lease.labels[KERNEL_LABEL]: lease for lease in await alice.list_leases()}
        server_a, server_b = held[kernel_a].labels[SERVER_LABEL], held[kernel_b].labels[SERVER_LABEL]
        assert server_a != server_b

        async def lease(kernel: str, server: str) -> str:
            return (await alice.allocate(GiB, 5, labels={KERNEL_LABEL: kernel, SERVER_LABEL: server})).id

        # Left by server a: a second lease of its running kernel (a reply lost, the retry granted
        # elsewhere), and the lease of a kernel whose start failed after the grant.
        orphans = {await lease(kernel_a, server_a), await lease("failed-start", server_a)}
        # Not a's or b's to release: a lease of another server (of the same principal) and a lease of
        # no server at all (the user's own client).
        others = {await lease("k", "another-server"), (await alice.allocate(GiB, 5)).id}
        kept = others | {held[kernel_a].id, held[kernel_b].id}

        async def orphans_gone() -> set[str] | None:
            ids = {x.id for x in await alice.list_leases()}
            return ids if not ids & orphans else None

        ids = await wait_until(orphans_gone, 20)
        assert kept <= ids
        await asyncio.sleep(2.0)  # a few refreshes of both servers later
        assert kept <= {x.id for x in await alice.list_leases()}
        for orphan in orphans:
            assert f"releasing lease {orphan}" in a.log() and orphan not in b.log()

