"""`%vgpu` inside a real kernel started by a real worker: status, watch, resize, push/pull, help."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tf_remoting.client import FailedPrecondition
from tf_remoting.client.session import start_remote_kernel
from tf_remoting.proto import pb

GiB = 1 << 30
MiB = 1 << 20


async def start_kernel(client, vram=GiB, compute=10):
    return await start_remote_kernel(client, vram, compute)


def stderr(result) -> str:
    return "".join(m["content"]["text"] for m in result.outputs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")


def usage_error(result) -> str:
    """The one-line message of a UsageError (no traceback), from the reply and the cell's stderr."""
    assert result.status == "error", result.reply
    assert result.reply["content"]["ename"] == "UsageError", result.reply
    message = result.reply["content"]["evalue"]
    assert f"UsageError: {message}" in stderr(result)
    return message


async def test_status_help_and_bad_arguments(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client, vram=GiB, compute=25)
        try:
            for line in ("%vgpu", "%vgpu status"):
                result = await remote.execute(line)
                assert result.status == "ok", result.reply
                text = result.data()
                assert "host device (no GPU)" in text
                assert "1 GiB VRAM, 25 % compute" in text
                assert " of 1 GiB (" in text and "[" in text  # the VRAM bar, in words and characters
                assert lease.id in text
                page = result.data("text/html")
                assert "<table" in page and "<caption" in page and "vGPU slice of this kernel" in page
                assert "<th scope='row'" in page
                assert "<meter" in page and "aria-label='VRAM used:" in page
                assert " of 1 GiB (" in page  # the meter's value is also written out

            for line in ("%vgpu help", "%vgpu -h", "%vgpu --help"):
                result = await remote.execute(line)
                assert result.status == "ok"
                for word in ("%vgpu status", "%vgpu watch", "%vgpu resize", "--vram", "%vgpu push", "%vgpu pull"):
                    assert word in result.stdout()
                assert "Not built yet" not in result.stdout()
            # IPython's own help for the magic comes from the same argument parser.
            result = await remote.execute("print(get_ipython().find_line_magic('vgpu').__doc__)")
            assert "--vram SIZE" in result.stdout() and "%vgpu watch [SECONDS]" in result.stdout()

            assert "unknown %vgpu command 'frobnicate'" in usage_error(await remote.execute("%vgpu frobnicate"))
            assert "takes no arguments" in usage_error(await remote.execute("%vgpu status now"))
            assert "not a number of seconds" in usage_error(await remote.execute("%vgpu watch soon"))
            assert "at most 3600" in usage_error(await remote.execute("%vgpu watch 7200"))
            assert "at most one argument" in usage_error(await remote.execute("%vgpu watch 1 2"))
            assert "No closing quotation" in usage_error(await remote.execute("%vgpu resize --vram '4Gi"))
            assert "belong to %vgpu resize" in usage_error(await remote.execute("%vgpu status --vram 1Gi"))
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_watch_updates_one_display(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client, vram=GiB, compute=20)
        try:
            result = await remote.execute("%vgpu watch 2", timeout=60)
            assert result.status == "ok", result.reply
            outputs = [m for m in result.outputs if m["msg_type"] != "execute_input"]
            kinds = [m["msg_type"] for m in outputs]
            assert kinds.count("display_data") == 1, kinds
            assert kinds[0] == "display_data"
            display_id = outputs[0]["content"]["transient"]["display_id"]
            updates = [m for m in result.outputs if m["msg_type"] == "update_display_data"]
            assert len(updates) >= 3, kinds  # samples every 0.25 s for 2 s, then the final state
            assert all(m["content"]["transient"]["display_id"] == display_id for m in updates)
            last = updates[-1]["content"]["data"]
            assert "finished after 2 s" in last["text/plain"]
            assert " of 1 GiB (" in last["text/plain"]
            assert "compute limit  20 %" in last["text/plain"]
            samples = int(last["text/plain"].split("samples")[1].split()[0])
            assert samples >= 2
            assert "<caption" in last["text/html"] and lease.id in last["text/html"]

            # Interrupting the kernel stops a watch cleanly: no error, the output says so.
            msg_id = await remote.send_execute("%vgpu watch 60")
            await asyncio.sleep(2.0)
            await client.interrupt(kernel.id)
            reply = None
            final = None
            while reply is None:
                msg = await asyncio.wait_for(remote.iopub.get(), 20)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "update_display_data":
                    final = msg["content"]["data"]["text/plain"]
                if msg["msg_type"] == "error":
                    raise AssertionError(msg["content"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    reply = msg
            assert final is not None and "stopped after" in final
            assert (await remote.execute("6*7")).data() == "42"
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_watch_rides_out_a_worker_restart(tf_worker):
    """The worker is killed and restarted during %vgpu watch: the watch says so, reconnects by
    itself and goes on sampling until its end, with no error."""
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client, vram=GiB, compute=20)
        try:
            msg_id = await remote.send_execute("%vgpu watch 8")
            texts: list[str] = []

            def samples(text: str) -> int:
                return int(text.split("samples")[1].split()[0])

            async def until(predicate: Callable[[], bool], timeout: float) -> None:
                end = asyncio.get_running_loop().time() + timeout
                while not predicate():
                    msg = await asyncio.wait_for(remote.iopub.get(), end - asyncio.get_running_loop().time())
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    if msg["msg_type"] == "update_display_data":
                        texts.append(msg["content"]["data"]["text/plain"])
                    elif msg["msg_type"] == "error":
                        raise AssertionError(msg["content"])
                    elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        texts.append("<idle>")

            await until(lambda: bool(texts) and samples(texts[-1]) >= 2, 20)
            before = samples(texts[-1])
            tf_worker.kill()
            await asyncio.sleep(1.5)
            tf_worker.start()
            await until(lambda: "<idle>" in texts, 40)
            updates = texts[:-1]
            assert "finished after 8 s" in updates[-1], updates[-1]
            assert samples(updates[-1]) > before + 2, updates[-1]  # sampling went on after the restart
            reconnecting = [i for i, t in enumerate(updates) if "reconnecting" in t]
            resumed = [i for i, t in enumerate(updates) if "watching resumed" in t]
            assert reconnecting and resumed and reconnecting[0] < resumed[0], updates
            assert (await remote.execute("6*7")).data() == "42"
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_resize_up_down_and_refusals(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client, vram=GiB, compute=10)
        try:
            up = await remote.execute("%vgpu resize --vram 2Gi --compute 50")
            assert up.status == "ok", up.reply
            assert f"Resized lease {lease.id}: VRAM 1 GiB -> 2 GiB, compute 10 % -> 50 %" in up.stdout()
            assert "host device" in up.stdout()  # what happened to the in-kernel caps
            assert "2 GiB VRAM, 50 % compute" in (await remote.execute("%vgpu status")).data()
            env = await remote.execute(
                "import os; os.environ['TF_VGPU_VRAM_LIMIT'], os.environ['TF_VGPU_COMPUTE_LIMIT']")
            assert env.data() == f"('{2 * GiB}', '50')"
            [mine] = [x for x in await client.list_leases() if x.id == lease.id]
            assert (mine.slices[0].vram, mine.slices[0].compute) == (2 * GiB, 50)

            # Down, one flag only: the other keeps its value.
            down = await remote.execute("%vgpu resize --vram=512Mi")
            assert down.status == "ok", down.reply
            assert "VRAM 2 GiB -> 512 MiB" in down.stdout() and "compute" not in down.stdout().split("\n")[0]
            assert "512 MiB VRAM, 50 % compute" in (await remote.execute("%vgpu status")).data()
            [mine] = [x for x in await client.list_leases() if x.id == lease.id]
            assert (mine.slices[0].vram, mine.slices[0].compute) == (512 * MiB, 50)
            down = await remote.execute("%vgpu resize --compute 25%")
            assert "compute 50 % -> 25 %" in down.stdout()

            # Too big: another lease holds 3 GiB of the 4 GiB device; the worker's sentence shows.
            other = await client.allocate(vram=3 * GiB, compute=10)
            try:
                message = usage_error(await remote.execute("%vgpu resize --vram 2Gi"))
                assert "no room" in message
                assert f"cannot resize lease {lease.id} to 2 GiB" in message
                assert "Ask for less" in message
            finally:
                await client.release(other.id)
            # Nothing changed after the refusal.
            assert "512 MiB VRAM, 25 % compute" in (await remote.execute("%vgpu status")).data()

            message = usage_error(await remote.execute("%vgpu resize --vram 4Gx"))
            assert "'4Gx'" in message and "invalid memory quantity" in message
            assert "'150'" in usage_error(await remote.execute("%vgpu resize --compute 150"))
            assert "must be more than 0" in usage_error(await remote.execute("%vgpu resize --vram 0"))
            assert "say what to change" in usage_error(await remote.execute("%vgpu resize"))
            assert "unrecognized arguments: --cpu 3" in usage_error(await remote.execute("%vgpu resize --cpu 3"))
            assert "--vram: expected one argument" in usage_error(await remote.execute("%vgpu resize --vram"))
            assert "given twice" in usage_error(await remote.execute("%vgpu resize --vram 1Gi --vram 2Gi"))
            assert "unexpected '3'" in usage_error(await remote.execute("%vgpu resize 3"))
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_push_pull_on_a_shared_filesystem(tf_worker):
    async with tf_worker.client() as client:
        lease, kernel, remote = await start_kernel(client)
        try:
            await remote.execute("open('data.csv', 'w').write('a,b\\n')")
            for line in ("%vgpu push data.csv", "%vgpu pull data.csv out.csv"):
                result = await remote.execute(line)
                assert result.status == "ok", result.reply
                assert "Nothing to move" in result.stdout() and "it is there" in result.stdout()
            assert "takes LOCAL [REMOTE]" in usage_error(await remote.execute("%vgpu push"))
            assert "takes REMOTE [LOCAL]" in usage_error(await remote.execute("%vgpu pull a b c"))
        finally:
            await remote.close()
            await client.release(lease.id)


async def test_push_pull_on_a_remote_worker_move_files_through_the_client(tf_worker_factory, tmp_path):
    worker = tf_worker_factory(["--host-vram", "4Gi", "--no-shares-filesystem"]).start()
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    (notebook_dir / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret.txt").write_text("not yours")
    async with worker.client() as client:
        lease, kernel, remote = await start_kernel(client)
        assert "serves no directory" in usage_error(await remote.execute("%vgpu push data.csv"))
        # What the kernel launcher does on the Jupyter side: serve the notebook's directory.
        remote.channels.serve_transfers(notebook_dir)
        try:
            result = await remote.execute("%vgpu push data.csv inputs/data.csv")
            assert result.status == "ok", result.reply
            assert "Pushed data.csv" in result.stdout()
            assert (await remote.execute("print(open('inputs/data.csv').read())")).stdout() == "a,b\n1,2\n\n"
            await remote.execute("import pathlib; pathlib.Path('model.bin').write_bytes(bytes(range(256)) * 4096)")
            result = await remote.execute("%vgpu pull model.bin results/model.bin")
            assert result.status == "ok", result.reply
            assert (notebook_dir / "results" / "model.bin").read_bytes() == bytes(range(256)) * 4096
            # One argument: the same name on the other side.
            assert (await remote.execute("%vgpu pull model.bin")).status == "ok"
            assert (notebook_dir / "model.bin").stat().st_size == 256 * 4096

            # Bad requests get a clear error and move nothing.
            assert "is not a file" in usage_error(await remote.execute("%vgpu push missing.csv"))
            for escape in ("%vgpu push ../secret.txt", "%vgpu pull model.bin ../stolen.bin"):
                assert "leaves the notebook's directory" in usage_error(await remote.execute(escape))
            assert not (tmp_path / "stolen.bin").exists()
            assert "leaves the kernel's working directory" in usage_error(
                await remote.execute("%vgpu pull ../../../etc/hostname"))
            missing = usage_error(await remote.execute("%vgpu pull nothing.bin"))
            assert "no file 'nothing.bin' in the kernel's directory" in missing
            # The magic's other commands work there as well.
            assert "files" in (await remote.execute("%vgpu status")).data()
        finally:
            await remote.close()
        # With no Jupyter side attached, nobody can move the files: the worker says so.
        with pytest.raises(FailedPrecondition, match="no Jupyter-side client"):
            await client.request_transfer(kernel.id, pb.TRANSFER_TO_KERNEL, "data.csv", "data.csv", timeout=10)
        await client.release(lease.id)
