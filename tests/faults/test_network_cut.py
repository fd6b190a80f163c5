"""A 5-second network cut between the Jupyter server and the worker in the middle of a long output.

The Jupyter server reaches the worker only through a TCP proxy in this test. While a cell prints
3000 numbered lines, the proxy resets every connection and refuses new ones for 5 s, then forwards
again. The kernel launcher's Channels stream resumes by itself and the nanny replays what the kernel
printed meanwhile: every line arrives exactly once, in order, and the cell completes. The events
WebSocket tells the UI that the worker went down and came back.
"""

from __future__ import annotations

import asyncio
import json
import time

from tcp_proxy import TcpProxy

from tf_jupyter.pytest_plugin import KernelWebSocket

LINES = 3000
CELL = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(0.0025)\n"


def stream_lines(messages: list[dict], msg_id: str) -> list[int]:
    text = "".join(m["content"]["text"] for m in messages
                   if m.get("channel") == "iopub" and m["msg_type"] == "stream"
                   and m["content"]["name"] == "stdout" and m["parent_header"].get("msg_id") == msg_id)
    return [int(x) for x in text.split()]


async def test_five_second_cut_loses_nothing(tf_worker, jupyter_server_factory):
    proxy = await TcpProxy(tf_worker.address).start()
    events: list[dict] = []
    reader: asyncio.Task[None] | None = None
    ws = events_ws = None
    try:
        server = jupyter_server_factory(settings={
            "workers": [proxy.address], "token_file": str(tf_worker.token_file), "embedded_worker": "off"})
        await asyncio.to_thread(server.start)  # the proxy lives on this loop: keep it running

        events_ws = await server.websocket("/tf-vgpu/api/events")

        async def read_events() -> None:
            while True:
                raw = await events_ws.read_message()
                if raw is None:
                    return
                events.append({**json.loads(raw), "_t": time.monotonic()})

        reader = asyncio.create_task(read_events())

        status, session = await server.request("POST", "/api/sessions", {
            "path": "cut.ipynb", "type": "notebook", "name": "cut.ipynb", "kernel": {"name": "vgpu-small"}})
        assert status == 201, (session, server.log()[-3000:])
        kernel_id = session["kernel"]["id"]
        ws = await KernelWebSocket.connect(server, kernel_id)
        assert (await ws.execute("1+1", timeout=60))["reply"]["content"]["status"] == "ok"

        msg_id = await ws.send("execute_request", {"code": CELL, "silent": False, "store_history": True,
                                                   "user_expressions": {}, "allow_stdin": False,
                                                   "stop_on_error": True})
        reply = None
        idle = False
        cut_at = restored_at = None
        lines_at_cut = 0
        deadline = time.monotonic() + 120
        while reply is None or not idle:
            if cut_at is None and len(stream_lines(ws.messages, msg_id)) >= 600:
                lines_at_cut = len(stream_lines(ws.messages, msg_id))
                reset = await proxy.cut()
                assert reset > 0  # the pool's and the launcher's connections were live
                cut_at = time.monotonic()
            if cut_at is not None and restored_at is None and time.monotonic() - cut_at >= 5.0:
                proxy.restore()
                restored_at = time.monotonic()
            try:
                msg = await ws.recv(timeout=0.25)
            except TimeoutError:
                assert time.monotonic() < deadline, "the cell did not complete within 120 s"
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                reply = msg
            elif msg["channel"] == "iopub" and msg["msg_type"] == "status" \
                    and msg["content"]["execution_state"] == "idle":
                idle = True
        assert cut_at is not None and restored_at is not None, "the cell ended before the cut was over"
        assert lines_at_cut < LINES, "the cut came after the output ended: not mid-stream"
        assert proxy.refused > 0  # something tried to reach the worker during the cut and was refused

        assert reply["content"]["status"] == "ok", reply
        # Every line exactly once, in order (on failure: stderr the server sent, e.g. its rate limiter).
        got = stream_lines(ws.messages, msg_id)
        stderr = [m["content"]["text"] for m in ws.messages
                  if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
        missing = sorted(set(range(LINES)) - set(got))
        assert got == list(range(LINES)), (f"{len(missing)} line(s) missing, first {missing[:1]}, last {missing[-1:]}",
                                           stderr)

        # The UI heard that the worker went down during the cut and came back after it.
        async def recovered() -> bool:
            for _ in range(60):
                ups = [e for e in events if e.get("type") == "worker" and e.get("up") and e["_t"] > restored_at]
                if ups:
                    return True
                await asyncio.sleep(0.25)
            return False

        assert await recovered(), [e for e in events if e.get("type") == "worker"]
        worker_events = [e for e in events if e.get("type") == "worker"]
        downs = [e for e in worker_events if not e["up"]]
        assert downs and cut_at <= downs[0]["_t"] <= restored_at, worker_events
        assert downs[0]["worker"] == proxy.address
        _, pool = await server.request("GET", "/tf-vgpu/api/pool")
        assert pool["workers"][0]["up"] is True

        # The kernel goes on as before.
        assert (await ws.execute("6*7", timeout=60))["reply"]["content"]["status"] == "ok"
    finally:
        if ws is not None:
            ws.close()
        if reader is not None:
            reader.cancel()
        if events_ws is not None:
            events_ws.close()
        await proxy.close()
