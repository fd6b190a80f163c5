"""The README's screenshots, from a real JupyterLab with a few vGPU kernels (Debian's Chromium).

    python tests/ui/screenshots.py [--out DIR] [--history S]   # default: docs/images, 180 s
    TF_UPDATE_SCREENSHOTS=1 pytest tests/ui/test_screenshots.py   # the same, as a test (CI: to tmp)

One worker (host device, 20 GiB; `admin` is its admin principal) shared by three principals, each
with its own real Jupyter server: alice (JupyterLab) runs two notebooks (small, medium) and has a
large start waiting for room; bob runs one kernel (an anonymous slice in alice's GPU map); admin
(JupyterLab) sees everyone. Written: launcher.png (vGPU cards small -> large, logos, availability),
sidebar.png and sidebar-dark.png (alice's panel), gpu-map.png (alice's map of the device),
statusbar.png (alice's notebook), panel-admin.png (the admin section).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ui_helpers import CHROMIUM, CHROMIUM_ARGS, IMAGES, menu, put_notebook, quiet_lab, wait_for  # noqa: E402

from tf_jupyter.pytest_plugin import JupyterServerProcess, KernelWebSocket  # noqa: E402
from tf_remoting.pytest_plugin import WorkerProcess  # noqa: E402

NAMES = ("launcher.png", "sidebar.png", "sidebar-dark.png", "gpu-map.png", "statusbar.png", "panel-admin.png")
VIEWPORT = {"width": 1400, "height": 900}

# Run in a kernel: a background thread that grows its memory (the host device's "VRAM" is the
# kernel's RAM) towards PEAK MiB, then swings between half and all of it, busy about a third of the time.
WORK = """
import threading as _t, time as _time
def _tf_work(peak, step=64):
    held, grow = [], True
    while True:
        began = _time.time()
        while _time.time() - began < 0.15:
            sum(range(2000))
        if grow:
            held.append(bytearray(b"\\1") * (step << 20))
            grow = len(held) * step < peak
        else:
            del held[len(held) // 2:]
            grow = True
        _time.sleep(0.35)
_t.Thread(target=_tf_work, args=(PEAK,), daemon=True).start()
"""


async def run_work(server: JupyterServerProcess, kernel_id: str, peak_mib: int) -> None:
    ws = await KernelWebSocket.connect(server, kernel_id)
    try:
        reply = await ws.execute(WORK.replace("PEAK", str(peak_mib)))
        assert reply["reply"]["content"]["status"] == "ok", reply
    finally:
        ws.ws.close()


@contextlib.contextmanager
def setting() -> Iterator[dict[str, JupyterServerProcess]]:
    """The worker, the three servers and their kernels (alice's at work); everything ends on exit.
    `wait_large(servers)` then adds alice's waiting start."""
    worker = WorkerProcess(["--host-vram", "20Gi", "--admin-principals", "admin", "--sample-interval", "0.5",
                            "--watchdog-action", "warn"])
    admin_token = secrets.token_urlsafe(24)
    worker.token_file.write_text(f"alice {worker.token}\nbob {worker.other_token}\nadmin {admin_token}\n")
    servers: dict[str, JupyterServerProcess] = {}
    try:
        worker.start()
        for name, token, app in (("alice", worker.token, "jupyterlab"), ("bob", worker.other_token, "jupyter_server"),
                                 ("admin", admin_token, "jupyterlab")):
            token_file = worker.root / f"{name}-token"
            token_file.write_text(f"{name} {token}\n")
            server = JupyterServerProcess(workers=[worker], app=app,
                                          settings={"token_file": str(token_file), "queue_timeout": 600.0})
            if app == "jupyterlab":
                quiet_lab(server)
            servers[name] = server.start()
        for who, path, spec, peak in (("alice", "analysis.ipynb", "vgpu-small", 900),
                                      ("alice", "train-resnet.ipynb", "vgpu-medium", 2000),
                                      ("bob", "bob-experiment.ipynb", "vgpu-small", 0)):
            kernel_id = start_session(servers[who], path, spec)
            if peak:
                asyncio.run(run_work(servers[who], kernel_id, peak))
        yield servers
    finally:
        for server in servers.values():
            server.cleanup()
        worker.cleanup()


def wait_large(servers: dict[str, JupyterServerProcess]) -> threading.Thread:
    """alice asks for 16 GiB on a device with 20 GiB less 16 leased: her start waits in the line
    (in the returned thread, which ends when the server does)."""
    alice = servers["alice"]

    def start() -> None:
        with contextlib.suppress(OSError):  # the server ends while it waits
            start_session(alice, "big-model.ipynb", "vgpu-large", check=False)

    t = threading.Thread(target=start, daemon=True)
    t.start()
    wait_for(lambda: len(alice.get_sync("/tf-vgpu/api/queue")["queue"]) == 1, 60, "alice's large start waits")
    return t


def start_session(server: JupyterServerProcess, path: str, kernelspec: str, check: bool = True) -> str:
    put_notebook(server, path, kernelspec)
    status, body = server._open("POST", "/api/sessions", {"path": path, "type": "notebook", "name": path,
                                                          "kernel": {"name": kernelspec}}, timeout=700)
    if check:
        assert status == 201, (status, body, server.log()[-2000:])
    return str(body["kernel"]["id"]) if status == 201 else ""


def open_panel(page: Any, server: JupyterServerProcess, workspace: str) -> Any:
    page.goto(f"{server.url}/lab/workspaces/{workspace}?token={server.token}")
    page.locator('.jp-SideBar [data-id="tf-vgpu-panel"]').click(timeout=60_000)
    panel = page.locator("#tf-vgpu-panel")
    panel.locator(".tf-vgpu-banner", has_text="Live").wait_for(timeout=30_000)
    return panel


def take(out: Path, history_s: float = 20.0) -> list[Path]:
    """Take every screenshot into `out`, the panel's once its kernels have run `history_s` seconds
    (their charts span 10 minutes); returns their paths."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    waiting: list[threading.Thread] = []
    with setting() as servers, sync_playwright() as pw:
        began = time.monotonic()
        alice, admin = servers["alice"], servers["admin"]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(30_000)
            # The launcher: vGPU cards small -> large with their logos and availability.
            page.goto(f"{alice.url}/lab/workspaces/shots-launcher?token={alice.token}")
            page.locator(".jp-LauncherCard img.jp-Launcher-kernelIcon").first.wait_for()
            page.locator(".tf-vgpu-launcher-badge").first.wait_for()
            page.locator(".jp-Launcher-content").screenshot(path=str(out / "launcher.png"))
            page.close()
            waiting.append(wait_large(servers))

            # alice's panel: two kernels with charts of a few seconds, the map, quota, the waiting start.
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(30_000)
            panel = open_panel(page, alice, "shots-panel")
            wait_for(lambda: time.monotonic() - began >= history_s, history_s + 5, "the kernels' history", page)
            wait_for(lambda: panel.locator('[data-testid="tf-vgpu-kernel"]').count() == 2, 30, "two kernels", page)
            charts = panel.locator('[data-testid="tf-vgpu-chart"]')
            wait_for(lambda: charts.count() == 2 and all(int(c.get_attribute("data-points") or 0) >= 30
                                                         for c in charts.all()), 90, "charts with points", page)
            panel.locator('[data-testid="tf-vgpu-waiting"]').first.wait_for()
            wait_for(lambda: panel.locator('[data-testid="tf-vgpu-slice"]').count() >= 3, 30,
                     "own slices and the anonymous one", page)
            panel.locator(".tf-vgpu-view").screenshot(path=str(out / "sidebar.png"))  # the content, not the rest
            panel.locator('[data-testid="tf-vgpu-device-map"]').first.screenshot(path=str(out / "gpu-map.png"))

            # A notebook open: the status bar says its slice.
            page.goto(f"{alice.url}/lab/workspaces/shots-nb/tree/analysis.ipynb?token={alice.token}")
            status = page.locator("#jp-main-statusbar")
            status.get_by_text(re.compile(r"vGPU .*GiB")).first.wait_for(timeout=60_000)
            status.screenshot(path=str(out / "statusbar.png"))

            # The dark theme.
            panel = open_panel(page, alice, "shots-dark")
            menu(page, "Settings", "Theme", re.compile(r"^\s*JupyterLab Dark\s*$"), command="apputils:change-theme")
            page.locator('body[data-jp-theme-name="JupyterLab Dark"]').wait_for(state="attached")
            wait_for(lambda: charts.count() == 2, 30, "charts again", page)
            page.wait_for_timeout(1500)  # the theme's stylesheet applied and the charts redrawn
            panel.locator(".tf-vgpu-view").screenshot(path=str(out / "sidebar-dark.png"))
            menu(page, "Settings", "Theme", re.compile(r"^\s*JupyterLab Light\s*$"), command="apputils:change-theme")
            page.locator('body[data-jp-theme-name="JupyterLab Light"]').wait_for(state="attached")
            page.close()

            # The admin's panel: the admin section (users, idle kernels, everyone's queue, workers).
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.set_default_timeout(30_000)
            panel = open_panel(page, admin, "shots-admin")
            section = panel.locator('[data-testid="tf-vgpu-admin"]')
            section.wait_for()
            wait_for(lambda: "alice" in section.inner_text() and "bob" in section.inner_text(), 30,
                     "the admin section names alice and bob", page)
            section.screenshot(path=str(out / "panel-admin.png"))
        finally:
            browser.close()
    for t in waiting:
        t.join(30)
    return [out / name for name in NAMES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=IMAGES, help=f"where to write them (default {IMAGES})")
    parser.add_argument("--history", type=float, default=180.0, metavar="S",
                        help="seconds of kernel history in the panel's charts (default 180)")
    args = parser.parse_args()
    for path in take(args.out, args.history):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
