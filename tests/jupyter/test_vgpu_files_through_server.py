"""`%vgpu push` / `pull` from a notebook in a real Jupyter server whose worker does not share its
filesystem: the kernel launcher, started in the notebook's directory, moves the files."""

from __future__ import annotations

from tf_jupyter.pytest_plugin import KernelWebSocket, text_of


async def test_push_and_pull_between_the_notebook_directory_and_a_remote_kernel(tf_worker_factory,
                                                                               jupyter_server_factory):
    worker = tf_worker_factory(["--host-vram", "4Gi", "--no-shares-filesystem"]).start()
    server = jupyter_server_factory(workers=[worker]).start()
    project = server.notebooks / "project"
    project.mkdir()
    (project / "train.csv").write_text("x,y\n1,2\n")
    status, session = await server.request("POST", "/api/sessions", {
        "path": "project/analysis.ipynb", "type": "notebook", "name": "analysis.ipynb",
        "kernel": {"name": "vgpu-small"}})
    assert status == 201, (session, server.log())
    ws = await KernelWebSocket.connect(server, session["kernel"]["id"])
    try:
        result = await ws.execute("import os; print(os.getcwd())")
        kernel_dir = text_of(result).strip()
        assert kernel_dir != str(project)  # the kernel really runs elsewhere

        result = await ws.execute("%vgpu push train.csv")
        assert result["reply"]["content"]["status"] == "ok", result
        result = await ws.execute("print(open('train.csv').read().split()[1]); "
                                  "_ = open('metrics.json', 'w').write('{\"loss\": 0.5}')")
        assert text_of(result).strip() == "1,2"

        result = await ws.execute("%vgpu pull metrics.json out/metrics.json")
        assert result["reply"]["content"]["status"] == "ok", result
        assert (project / "out" / "metrics.json").read_text() == '{"loss": 0.5}'

        result = await ws.execute("%vgpu push ../../etc/passwd")
        assert result["reply"]["content"]["status"] == "error"
        assert "leaves the notebook's directory" in result["reply"]["content"]["evalue"]
    finally:
        await ws.aclose()
        await server.request("DELETE", f"/api/sessions/{session['id']}")
