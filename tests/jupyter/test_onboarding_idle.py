"""Seamless onboarding (existing kernelspecs mapped to profiles) and GPU-aware idle release."""

from __future__ import annotations

import asyncio
import json
import time

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of


async def test_python3_kernelspec_mapped_to_a_profile(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker], settings={"kernelspec_profiles": {"python3": "small"}}).start()
    _, specs = await server.request("GET", "/api/kernelspecs")
    assert "vGPU" in specs["kernelspecs"]["python3"]["spec"]["display_name"]
    status, s = await server.request("POST", "/api/sessions", {
        "path": "old.ipynb", "type": "notebook", "name": "old.ipynb", "kernel": {"name": "python3"}})
    assert status == 201, server.log()
    ws = await KernelWebSocket.connect(server, s["kernel"]["id"])
    try:
        result = await ws.execute("import os; print(os.environ.get('TF_VGPU_LEASE_ID', 'none'))")
        assert text_of(result).startswith("lease-")
    finally:
        ws.close()
    status, k = await server.request("GET", f"/tf-vgpu/api/kernels/{s['kernel']['id']}")
    assert status == 200 and k["profile"] == "small"


async def test_idle_kernel_is_warned_then_released(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker],
                                    settings={"idle_release": 2.0, "idle_warning": 2.0}).start()
    events = await server.websocket("/tf-vgpu/api/events")
    status, s = await server.request("POST", "/api/sessions", {
        "path": "idle.ipynb", "type": "notebook", "name": "idle.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201
    kernel_id = s["kernel"]["id"]
    kinds = []
    deadline = time.monotonic() + 40
    while "idle_release" not in kinds and time.monotonic() < deadline:
        msg = json.loads(await asyncio.wait_for(events.read_message(), 40))
        if msg.get("type") == "event" and msg.get("kernel_id") == kernel_id:
            kinds.append(msg["kind"])
    events.close()
    assert kinds.index("idle_warning") < kinds.index("idle_release")
    status, _ = await server.request("GET", f"/api/kernels/{kernel_id}")
    assert status == 404
    async with tf_worker.client() as client:
        for _ in range(80):
            if (await client.inventory()).devices[0].vram_leased == 0:
                break
            await asyncio.sleep(0.25)
        assert (await client.inventory()).devices[0].vram_leased == 0


async def test_critical_kernels_are_never_idle_released(tf_worker, jupyter_server_factory):
    from tf_jupyter.profiles import Profile, kernelspec

    server = jupyter_server_factory(workers=[tf_worker], settings={"idle_release": 1.0, "idle_warning": 1.0})
    spec_dir = server.root / "data" / "kernels" / "vgpu-train"
    spec_dir.mkdir(parents=True)
    critical = Profile("train", vram=1 << 30, compute=10, qos="critical")
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(critical)))
    server.start()
    events = await server.websocket("/tf-vgpu/api/events")
    status, s = await server.request("POST", "/api/sessions", {
        "path": "t.ipynb", "type": "notebook", "name": "t.ipynb", "kernel": {"name": "vgpu-train"}})
    assert status == 201, server.log()
    kinds = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            msg = json.loads(await asyncio.wait_for(events.read_message(), max(0.1, deadline - time.monotonic())))
        except TimeoutError:
            break
        if msg.get("type") == "event" and msg.get("kernel_id") == s["kernel"]["id"]:
            kinds.append(msg["kind"])
    events.close()
    assert "idle_warning" not in kinds and "idle_release" not in kinds
    status, k = await server.request("GET", f"/tf-vgpu/api/kernels/{s['kernel']['id']}")
    assert status == 200 and k["qos"] == "critical"
