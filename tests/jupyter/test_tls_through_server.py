"""A vGPU kernel through a real Jupyter server whose worker requires TLS and client certificates:
the server's pool and the kernel launcher it starts both use c.TfVgpu.tls_ca / tls_cert / tls_key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from certs import have_openssl, make_ca, make_cert  # noqa: E402


async def test_kernel_on_an_mtls_worker(tf_worker_factory, jupyter_server_factory, tmp_path):
    if not have_openssl():
        pytest.skip("openssl is not installed")
    ca = make_ca(tmp_path, "ca")
    server_cert = make_cert(ca, tmp_path, "server", server=True)
    client_cert = make_cert(ca, tmp_path, "client", server=False)
    worker = tf_worker_factory(["--host-vram", "4Gi", "--tls-cert", str(server_cert.cert),
                                "--tls-key", str(server_cert.key), "--tls-client-ca", str(ca.cert)]).start()
    server = jupyter_server_factory(workers=[worker], settings={
        "tls_ca": str(ca.cert), "tls_cert": str(client_cert.cert), "tls_key": str(client_cert.key)}).start()

    status, pool = await server.request("GET", "/tf-vgpu/api/pool")
    assert status == 200 and pool["workers"][0]["up"], (pool, server.log()[-3000:])
    status, session = await server.request("POST", "/api/sessions", {
        "path": "tls.ipynb", "type": "notebook", "name": "tls.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, (session, server.log()[-3000:])
    ws = await KernelWebSocket.connect(server, session["kernel"]["id"])
    try:
        result = await ws.execute("print(6 * 7)")
        assert text_of(result).strip() == "42", result
    finally:
        await ws.aclose()
    status, _ = await server.request("DELETE", f"/api/sessions/{session['id']}")
    assert status == 204
    # A server without the client certificate is refused by the worker: it shows it down, not up.
    plain = jupyter_server_factory(workers=[worker], settings={"tls_ca": str(ca.cert)}).start()
    status, pool = await plain.request("GET", "/tf-vgpu/api/pool")
    assert status == 200 and not pool["workers"][0]["up"], pool
