"""Every kind of Jupyter message works unchanged through server -> launcher relay -> worker -> kernel."""

from __future__ import annotations

import asyncio

import pytest

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of


@pytest.fixture
async def kernel_ws(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker]).start()
    status, s = await server.request("POST", "/api/sessions", {
        "path": "p.ipynb", "type": "notebook", "name": "p.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, server.log()
    ws = await KernelWebSocket.connect(server, s["kernel"]["id"])
    yield server, s["kernel"]["id"], ws
    await ws.aclose()


async def reply_to(ws, msg_id, msg_type, timeout=30):
    while True:
        msg = await ws.recv(timeout)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == msg_type:
            return msg


async def test_requests_and_replies(kernel_ws):
    server, kernel_id, ws = kernel_ws
    await ws.execute("alpha_value = 41")
    msg_id = await ws.send("complete_request", {"code": "alpha_v", "cursor_pos": 7})
    assert "alpha_value" in (await reply_to(ws, msg_id, "complete_reply"))["content"]["matches"]
    msg_id = await ws.send("inspect_request", {"code": "alpha_value", "cursor_pos": 5, "detail_level": 0})
    assert (await reply_to(ws, msg_id, "inspect_reply"))["content"]["found"]
    msg_id = await ws.send("is_complete_request", {"code": "def f():"})
    assert (await reply_to(ws, msg_id, "is_complete_reply"))["content"]["status"] == "incomplete"
    msg_id = await ws.send("history_request", {"hist_access_type": "tail", "n": 5, "output": False, "raw": True})
    history = (await reply_to(ws, msg_id, "history_reply"))["content"]["history"]
    assert any("alpha_value = 41" in h[2] for h in history)
    msg_id = await ws.send("kernel_info_request", {}, channel="control")
    assert (await reply_to(ws, msg_id, "kernel_info_reply"))["content"]["status"] == "ok"


async def test_stdin_input(kernel_ws):
    server, kernel_id, ws = kernel_ws
    msg_id = await ws.send("execute_request", {"code": "x = input('name? '); print('hi', x)", "silent": False,
                                               "allow_stdin": True, "store_history": False, "user_expressions": {}})
    request = await reply_to(ws, msg_id, "input_request")
    assert request["content"]["prompt"] == "name? "
    await ws.send("input_reply", {"value": "ada"}, channel="stdin")
    while True:
        msg = await ws.recv(30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            assert "hi ada" in msg["content"]["text"]
            break


async def test_comms(kernel_ws):
    server, kernel_id, ws = kernel_ws
    await ws.execute(
        "def _target(comm, open_msg):\n"
        "    @comm.on_msg\n"
        "    def _echo(msg):\n"
        "        comm.send({'echo': msg['content']['data']['value'] * 2})\n"
        "get_ipython().kernel.comm_manager.register_target('tf_echo', _target)\n")
    await ws.send("comm_open", {"comm_id": "c1", "target_name": "tf_echo", "data": {}})
    await ws.send("comm_msg", {"comm_id": "c1", "data": {"value": 21}})
    while True:
        msg = await ws.recv(30)
        if msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == "c1":
            assert msg["content"]["data"] == {"echo": 42}
            break


async def test_interrupt_by_message(kernel_ws):
    server, kernel_id, ws = kernel_ws
    msg_id = await ws.send("execute_request", {"code": "import time; time.sleep(60)", "silent": False,
                                               "store_history": False, "user_expressions": {}})
    await asyncio.sleep(1.0)
    await ws.send("interrupt_request", {}, channel="control")
    error = await reply_to(ws, msg_id, "error")
    assert error["content"]["ename"] == "KeyboardInterrupt"
    # Right after an error ipykernel may abort requests already queued (stop_on_error); a frontend
    # simply runs the cell again.
    for _ in range(5):
        result = await ws.execute("1+1")
        if result["reply"]["content"]["status"] == "ok":
            break
        await asyncio.sleep(0.5)
    assert text_of(result) == "2"


async def test_widget_round_trip(kernel_ws):
    """ipywidgets both ways: the kernel opens the widget's comm, the client moves the slider, the kernel reads the
    value; the kernel sets a value, the client gets the update."""
    server, kernel_id, ws = kernel_ws
    result = await ws.execute("import ipywidgets\nslider = ipywidgets.IntSlider(value=1, max=100)\ndisplay(slider)")
    assert result["reply"]["content"]["status"] == "ok", result
    [opened] = [m for m in result["outputs"] if m["msg_type"] == "comm_open"
                and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
    assert opened["content"]["target_name"] == "jupyter.widget"
    assert opened["content"]["data"]["state"]["value"] == 1
    model_id = opened["content"]["comm_id"]
    [view] = [m for m in result["outputs"] if m["msg_type"] == "display_data"]
    assert view["content"]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == model_id

    await ws.send("comm_msg", {"comm_id": model_id, "data": {"method": "update", "state": {"value": 42},
                                                             "buffer_paths": []}})
    result = await ws.execute("print(slider.value)")
    assert text_of(result).strip() == "42"

    result = await ws.execute("slider.value = 7")
    updates = [m["content"]["data"] for m in result["outputs"]
               if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == model_id]
    assert {"method": "update", "state": {"value": 7}, "buffer_paths": []} in updates, updates
