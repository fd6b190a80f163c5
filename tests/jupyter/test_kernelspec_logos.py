"""The vGPU kernelspecs' logos are served by a real Jupyter server, so every client shows them."""

from __future__ import annotations

import asyncio
import urllib.request

from tf_jupyter.kernelspec_logo import LOGO_DIR
from tf_jupyter.profiles import Profile, ProfileStore


def fetch(server, path: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"token {server.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


async def test_kernelspec_logos_are_served(tf_worker, jupyter_server_factory):
    server = jupyter_server_factory(workers=[tf_worker])
    # A profile added the way `tf-jupyter profiles add` does, in the server's own data directory.
    ProfileStore(server.root / "data" / "kernels").add(Profile("train", 2 << 30, 20))
    server.start()
    status, specs = await server.request("GET", "/api/kernelspecs")
    assert status == 200, specs
    for name in ("vgpu-small", "vgpu-medium", "vgpu-large", "vgpu-whole", "vgpu-train"):
        resources = specs["kernelspecs"][name]["resources"]
        assert set(resources) >= {"logo-svg", "logo-32x32", "logo-64x64"}, (name, resources)
        assert resources["logo-svg"] == f"/kernelspecs/{name}/logo-svg.svg"
        status, ctype, body = await asyncio.to_thread(fetch, server, resources["logo-svg"])
        assert status == 200 and "svg" in ctype, (name, ctype)
        assert body == (LOGO_DIR / "logo-svg.svg").read_bytes()
    status, ctype, body = await asyncio.to_thread(fetch, server, "/kernelspecs/vgpu-small/logo-64x64.png")
    assert status == 200 and ctype == "image/png"
    assert body == (LOGO_DIR / "logo-64x64.png").read_bytes()
