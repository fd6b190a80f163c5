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


async def test_default_qos_critical_exempts_kernels_from_idle_release(tf_worker, jupyter_server_factory):
    """c.TfVgpu.default_qos = critical applies to kernels whose profile leaves QoS at medium: the queue, the
    lease on the worker, the API and idle release all see critical. A kernel of an explicitly low profile
    beside it is the yardstick: once it has been released, the critical one, idle for longer, was exempt."""
    from tf_jupyter.profiles import Profile, kernelspec
    from tf_remoting.proto import pb

    server = jupyter_server_factory(workers=[tf_worker], settings={
        "idle_release": 1.0, "idle_warning": 1.0, "default_qos": "critical"})
    for profile in (Profile("plain", vram=1 << 30, compute=10), Profile("yardstick", vram=1 << 30, compute=10,
                                                                        qos="low")):
        spec_dir = server.root / "data" / "kernels" / profile.kernelspec_name
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(profile)))
    server.start()
    events = await server.websocket("/tf-vgpu/api/events")
    kernel_ids = {}
    for name in ("plain", "yardstick"):
        status, s = await server.request("POST", "/api/sessions", {
            "path": f"{name}.ipynb", "type": "notebook", "name": f"{name}.ipynb", "kernel": {"name": f"vgpu-{name}"}})
        assert status == 201, server.log()
        kernel_ids[name] = s["kernel"]["id"]
    kinds: dict[str, list[str]] = {name: [] for name in kernel_ids}
    deadline = time.monotonic() + 40
    while "idle_release" not in kinds["yardstick"]:
        msg = json.loads(await asyncio.wait_for(events.read_message(), max(0.1, deadline - time.monotonic())))
        for name, kernel_id in kernel_ids.items():
            if msg.get("type") == "event" and msg.get("kernel_id") == kernel_id:
                kinds[name].append(msg["kind"])
    events.close()
    assert "idle_warning" not in kinds["plain"] and "idle_release" not in kinds["plain"], kinds
    status, k = await server.request("GET", f"/tf-vgpu/api/kernels/{kernel_ids['plain']}")
    assert status == 200 and k["qos"] == "critical"
    status, _ = await server.request("GET", f"/api/kernels/{kernel_ids['plain']}")
    assert status == 200
    async with tf_worker.client() as client:
        [lease] = [x for x in await client.list_leases() if x.id == k["lease_id"]]
    assert lease.qos == pb.QOS_CRITICAL


async def test_a_kernel_running_a_cell_is_not_idle_released(tf_worker, jupyter_server_factory):
    """A cell that works on the CPU or waits (here: sleeps) shows no utilization, yet the kernel is
    in use: the worker counts its running cell in the lease's last_active, and idle release follows
    it, as the admin view does. A kernel started later and left idle is the yardstick: once it has
    been released, the busy one, in use all along but without utilization for longer, was kept."""
    from tf_jupyter.profiles import Profile, kernelspec

    server = jupyter_server_factory(workers=[tf_worker], settings={
        "idle_release": 3.0, "idle_warning": 2.0, "refresh_interval": 0.5})
    spec_dir = server.root / "data" / "kernels" / "vgpu-one"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(Profile("one", vram=1 << 30, compute=10))))
    server.start()
    events = await server.websocket("/tf-vgpu/api/events")
    busy = await server.start_session("busy.ipynb", "vgpu-one")
    ws = await KernelWebSocket.connect(server, busy)
    try:
        msg_id = await ws.send("execute_request", {"code": "import time; time.sleep(60)", "silent": False,
                                                   "store_history": True, "user_expressions": {},
                                                   "allow_stdin": False, "stop_on_error": True})
        while True:  # the cell runs
            msg = await ws.recv(30)
            if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg.get("msg_type") == "status"
                    and msg["content"]["execution_state"] == "busy"):
                break
        yardstick = await server.start_session("idle.ipynb", "vgpu-one")
        kinds: dict[str, list[str]] = {busy: [], yardstick: []}
        deadline = time.monotonic() + 60
        while "idle_release" not in kinds[yardstick]:
            msg = json.loads(await asyncio.wait_for(events.read_message(), max(0.1, deadline - time.monotonic())))
            if msg.get("type") == "event" and msg.get("kernel_id") in kinds:
                kinds[msg["kernel_id"]].append(msg["kind"])
        assert "idle_release" not in kinds[busy], kinds
        status, _ = await server.request("GET", f"/api/kernels/{busy}")
        assert status == 200
    finally:
        events.close()
        await ws.aclose()
