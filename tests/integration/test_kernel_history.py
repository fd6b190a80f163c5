"""Defect 9: kernels of one worker do not share IPython's history database, so none of them ever
prints IPython's "history saving thread hit an unexpected error (... database is locked)"."""

from __future__ import annotations

import asyncio
import json
import secrets

from tf_remoting.client.session import RemoteKernel

MiB = 1 << 20
KERNELS = 12
CELLS = 15


async def start_kernels(client, lease_id: str, count: int) -> list[tuple[str, RemoteKernel]]:
    async def one() -> tuple[str, RemoteKernel]:
        key = secrets.token_hex(16).encode()
        kernel = await client.start_kernel(lease_id, key=key)
        remote = RemoteKernel(client, kernel.id, key)
        await remote.connect()
        await remote.wait_ready(timeout=120)
        return kernel.id, remote

    return list(await asyncio.gather(*(one() for _ in range(count))))


def text_of(outputs: list[dict]) -> str:
    return json.dumps([m["content"] for m in outputs])


async def test_each_kernel_keeps_its_history_to_itself(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=2048 * MiB, compute=10)
        kernels = await start_kernels(client, lease.id, 2)
        try:
            for _kernel_id, remote in kernels:
                result = await remote.execute("print(get_ipython().history_manager.hist_file)")
                assert result.stdout().strip() == ":memory:", result.stdout()
            for kernel_id, remote in kernels:
                await remote.execute(f"x_{kernel_id} = 1")
            for kernel_id, remote in kernels:  # the history works, and holds this kernel's code only
                result = await remote.execute("%history -n -g x_")
                assert f"x_{kernel_id} = 1" in result.stdout(), result.stdout()
                others = [k for k, _ in kernels if k != kernel_id]
                assert all(f"x_{k} = 1" not in result.stdout() for k in others), result.stdout()
        finally:
            for _, remote in kernels:
                await remote.close()
            await client.release(lease.id)


async def test_many_kernels_running_cells_at_once_print_no_history_error(tf_worker):
    async with tf_worker.client() as client:
        lease = await client.allocate(vram=4096 * MiB, compute=10)
        kernels = await start_kernels(client, lease.id, KERNELS)
        try:
            async def cells(remote: RemoteKernel) -> list[str]:
                texts = []
                for i in range(CELLS):
                    result = await remote.execute(f"v = {i}\nprint('cell', v)\nv", timeout=120)
                    assert result.reply["content"]["status"] == "ok", result.reply["content"]
                    texts.append(text_of(result.outputs))
                return texts

            every = await asyncio.gather(*(cells(remote) for _, remote in kernels))
            for texts in every:
                for text in texts:
                    assert "database is locked" not in text and "history" not in text.lower(), text
        finally:
            for _, remote in kernels:
                await remote.close()
            await client.release(lease.id)
