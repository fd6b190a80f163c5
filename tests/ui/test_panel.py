"""The vGPU panel of issue 14 in Chromium, on a real Jupyter server and worker (host device).

- Every vGPU kernel of the user is listed, however and whenever it was started (REST before the
  page loaded, REST while it is open), and leaves when it ends; the counts match the API from the
  first render on.
- Each kernel has a uPlot chart (a canvas of non-zero size) that takes its colours from the theme
  and re-reads them when the theme changes to dark.
- The GPU map shows the user's own slices by name and another principal's (second server) as one
  anonymous segment; quota meters; a start that waits shows its position, reason and notebook.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from ui_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NO_CHROMIUM,
    BrowserLog,
    MiB,
    add_profile,
    menu,
    put_notebook,
    quiet_lab,
    wait_for,
)

from tf_jupyter.pytest_plugin import JupyterServerProcess

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

GiB = 1 << 30

# Records the lease count and the kernel cards the first time the panel shows them, so the test
# can tell what the first render said (not only what it says after the first updates).
FIRST_RENDER_JS = """
window.__tfFirst = null;
new MutationObserver((_, observer) => {
  const count = document.querySelector('[data-testid="tf-vgpu-lease-count"]');
  if (count && window.__tfFirst === null) {
    window.__tfFirst = {
      leases: Number(count.dataset.count),
      kernels: Array.from(document.querySelectorAll('[data-testid="tf-vgpu-kernel"]')).map(e => e.dataset.kernelId)
    };
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true, attributes: true });
"""


def start_session(server: JupyterServerProcess, path: str, kernelspec: str) -> str:
    """A notebook session on `kernelspec` by REST; its kernel id."""
    put_notebook(server, path, kernelspec)
    status, session = server._open("POST", "/api/sessions", {"path": path, "type": "notebook", "name": path,
                                                            "kernel": {"name": kernelspec}})
    assert status == 201, (status, session, server.log()[-3000:])
    return str(session["kernel"]["id"])


def api_kernels(server: JupyterServerProcess) -> set[str]:
    return {k["kernel_id"] for k in server.get_sync("/tf-vgpu/api/kernels")["kernels"]}


def api_leases(server: JupyterServerProcess) -> int:
    return sum(w["leases"] for w in server.get_sync("/tf-vgpu/api/pool")["workers"])


def lease_of(server: JupyterServerProcess, kernel_id: str) -> str:
    """The lease of a kernel as the server's API says it ('' when the kernel is gone)."""
    kernels = server.get_sync("/tf-vgpu/api/kernels")["kernels"]
    return next((str(k["lease_id"]) for k in kernels if k["kernel_id"] == kernel_id), "")


def shown_kernels(panel: Any) -> set[str]:
    return set(panel.locator('[data-testid="tf-vgpu-kernel"]').evaluate_all("els => els.map(e => e.dataset.kernelId)"))


def open_panel(page: Any, server: JupyterServerProcess) -> Any:
    page.goto(f"{server.url}/lab?token={server.token}")
    page.locator('.jp-SideBar [data-id="tf-vgpu-panel"]').click(timeout=60_000)
    panel = page.locator("#tf-vgpu-panel")
    panel.locator(".tf-vgpu-banner", has_text="Live").wait_for(timeout=30_000)
    return panel


def chart_sizes(panel: Any) -> list[tuple[float, float]]:
    return [tuple(size) for size in panel.locator('[data-testid="tf-vgpu-chart"] canvas').evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; })")]


def vram_stroke(panel: Any, kernel_id: str) -> str:
    """The colour of the VRAM series as uPlot's legend marker shows it."""
    marker = panel.locator(f'[data-testid="tf-vgpu-kernel"][data-kernel-id="{kernel_id}"] '
                           '.u-legend .u-series:nth-child(2) .u-marker')
    return str(marker.evaluate("e => getComputedStyle(e).borderColor"))


def test_every_kernel_listed_with_charts_and_counts(tf_worker_factory, jupyter_server_factory, tmp_path):
    from playwright.sync_api import sync_playwright

    worker = tf_worker_factory(["--host-vram", "4Gi"]).start()
    server = jupyter_server_factory(workers=[worker], app="jupyterlab")
    quiet_lab(server)
    a = add_profile(server, "aa", 512 * MiB)
    b = add_profile(server, "bb", 768 * MiB)
    server.start()
    # Two kernels by REST before the page is opened: one bare kernel, one notebook session.
    status, bare = server._open("POST", "/api/kernels", {"name": a})
    assert status == 201, (status, bare)
    first = {str(bare["id"]), start_session(server, "two.ipynb", b)}
    assert api_kernels(server) == first

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            log = BrowserLog(page)
            page.add_init_script(FIRST_RENDER_JS)
            panel = open_panel(page, server)
            cards = panel.locator('[data-testid="tf-vgpu-kernel"]')
            wait_for(lambda: shown_kernels(panel) == first, 30, f"both kernels listed: {shown_kernels(panel)}", page)
            # The first render with a pool already said what the API says.
            first_render = page.evaluate("window.__tfFirst")
            assert first_render is not None
            assert first_render["leases"] == api_leases(server) == 2, first_render
            lease_count = panel.locator('[data-testid="tf-vgpu-lease-count"]')
            assert lease_count.inner_text() == "2 leases"
            assert panel.locator('[data-testid="tf-vgpu-kernel-count"]').inner_text() == "2"
            two = sorted(first - {bare["id"]})[0]
            assert "two.ipynb" in panel.locator(f'[data-testid="tf-vgpu-kernel"][data-kernel-id="{two}"]').inner_text()

            # A uPlot chart per kernel, with a canvas of non-zero size at the panel's width.
            wait_for(lambda: len(chart_sizes(panel)) == 2, 30, "a chart canvas per kernel", page)
            for width, height in chart_sizes(panel):
                assert 150 <= width <= 400 and 60 <= height <= 200, (width, height)
            wait_for(lambda: all(int(c.get_attribute("data-points") or 0) >= 2
                                 for c in panel.locator('[data-testid="tf-vgpu-chart"]').all()),
                     30, "the charts have points (history, then live samples)", page)
            # Nothing wider than the panel at its default width: text wraps between phrases.
            width, scroll = panel.evaluate("p => [p.clientWidth, p.scrollWidth]")
            assert scroll <= width, f"the panel overflows: {scroll} px of content in {width} px"
            util = cards.first.locator(".tf-vgpu-util")
            assert "of the host" in util.inner_text() and "slice 10 %" in util.inner_text(), util.inner_text()
            assert "of the whole device" in str(util.get_attribute("title"))

            # A kernel started while the page is open appears; when it is shut down it leaves.
            late = start_session(server, "late.ipynb", a)
            wait_for(lambda: shown_kernels(panel) == first | {late}, 30, "the late kernel appears", page)
            wait_for(lambda: lease_count.inner_text() == f"{api_leases(server)} leases" == "3 leases", 30,
                     f"the lease count follows: {lease_count.inner_text()}", page)
            status, _ = server._open("DELETE", f"/api/kernels/{late}")
            assert status == 204
            wait_for(lambda: shown_kernels(panel) == first, 30, "the ended kernel leaves", page)
            wait_for(lambda: lease_count.inner_text() == f"{api_leases(server)} leases" == "2 leases", 30,
                     f"the lease count follows: {lease_count.inner_text()}", page)
            assert panel.locator('[data-testid="tf-vgpu-kernel-count"]').inner_text() == "2"

            # Dark theme: the charts are drawn again in the dark theme's colours.
            some = sorted(first)[0]
            light = vram_stroke(panel, some)
            menu(page, "Settings", "Theme", "JupyterLab Dark", command="apputils:change-theme")
            page.locator('body[data-jp-theme-light="false"]').wait_for(state="attached", timeout=30_000)
            wait_for(lambda: vram_stroke(panel, some) != light, 15, f"the chart re-reads its colours ({light})", page)
            assert len(chart_sizes(panel)) == 2
            panel.screenshot(path=str(tmp_path / "panel-dark.png"))
            assert not log.ours(), log.ours()
        except Exception:
            page.screenshot(path=str(server.root.parent / "tf-ui-panel-failure.png"))
            raise
        finally:
            browser.close()


def test_gpu_map_quota_and_waiting(tf_worker_factory, jupyter_server_factory, tmp_path):
    from playwright.sync_api import sync_playwright

    worker = tf_worker_factory(["--host-vram", "4Gi"]).start()
    servers = {}
    for name, token in (("alice", worker.token), ("bob", worker.other_token)):
        token_file = worker.root / f"{name}-token"
        token_file.write_text(f"{name} {token}\n")
        server = jupyter_server_factory(workers=[worker], app="jupyterlab",
                                        settings={"token_file": str(token_file), "queue_timeout": 80.0})
        quiet_lab(server)
        add_profile(server, "one", GiB)
        add_profile(server, "big", 3 * GiB)
        servers[name] = server.start()
    alice, bob = servers["alice"], servers["bob"]
    mine = start_session(alice, "mine.ipynb", "vgpu-one")
    theirs = start_session(bob, "secret-plan.ipynb", "vgpu-one")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        waiter: threading.Thread | None = None
        try:
            log = BrowserLog(page)
            panel = open_panel(page, alice)
            device_map = panel.locator('.tf-vgpu-pool [data-testid="tf-vgpu-device-map"]')
            device_map.first.wait_for(timeout=30_000)
            assert device_map.count() == 1
            own = device_map.locator('[data-testid="tf-vgpu-slice"][data-own="true"]')
            other = device_map.locator('[data-testid="tf-vgpu-slice"][data-own="false"][data-kind="other"]')
            wait_for(lambda: own.count() == 1 and other.count() == 1, 30,
                     "one own slice and one anonymous other-users segment", page)
            assert own.get_attribute("data-kernel-id") == mine
            assert "mine.ipynb" in str(own.get_attribute("title"))
            assert str(other.get_attribute("title")).startswith("Other users — 1 GiB")
            assert device_map.locator('[data-kind="free"]').count() == 1
            summary = str(device_map.locator('[role="img"]').get_attribute("aria-label"))
            assert "yours mine.ipynb 1 GiB" in summary and "other users 1 GiB" in summary and "free 2 GiB" in summary
            # Bob's notebook and kernel are nowhere in alice's panel.
            assert "secret-plan" not in panel.inner_html() and theirs not in panel.inner_html()
            quota = panel.locator('[data-testid="tf-vgpu-quota"]')
            assert "1 GiB" in quota.inner_text(), quota.inner_text()

            # A 3 GiB start waits (2 GiB free): position, reason and notebook show, then it starts.
            put_notebook(alice, "waits.ipynb", "vgpu-big")
            result: dict[str, Any] = {}

            def start_big() -> None:
                result["status"], result["body"] = alice._open("POST", "/api/sessions", {
                    "path": "waits.ipynb", "type": "notebook", "name": "waits.ipynb",
                    "kernel": {"name": "vgpu-big"}}, timeout=100)

            waiter = threading.Thread(target=start_big, daemon=True)
            waiter.start()
            waiting = panel.locator('[data-testid="tf-vgpu-waiting"]')
            waiting.first.wait_for(timeout=30_000)
            text = waiting.first.inner_text()
            assert "#1" in text and "no room on a GPU now" in text and "waited" in text, text
            assert "waits.ipynb" in text, text
            panel.screenshot(path=str(tmp_path / "panel-map.png"))
            status, _ = bob._open("DELETE", f"/api/kernels/{theirs}")
            assert status == 204
            waiter.join(timeout=90)
            assert result.get("status") == 201, result
            big = str(result["body"]["kernel"]["id"])
            wait_for(lambda: waiting.count() == 0, 30, "the started request leaves the waiting list", page)
            wait_for(lambda: shown_kernels(panel) == {mine, big}, 30, "the started kernel is listed", page)
            wait_for(lambda: own.count() == 2 and other.count() == 0, 30, "the map shows both own slices", page)
            assert not log.ours(), log.ours()
        except Exception:
            page.screenshot(path=str(alice.root.parent / "tf-ui-panel-map-failure.png"))
            raise
        finally:
            browser.close()
            if waiter is not None:
                bob._open("DELETE", f"/api/kernels/{theirs}")  # room for the waiting start, if still needed
                waiter.join(timeout=90)


@pytest.mark.timeout(300)
def test_admin_sees_everyone_and_releases_an_idle_kernel(tf_worker_factory, jupyter_server_factory, tmp_path):
    from playwright.sync_api import sync_playwright

    worker = tf_worker_factory(["--host-vram", "4Gi", "--admin-principals", "admin"])
    admin_token = "admin-" + worker.token[::-1]
    worker.token_file.write_text(worker.token_file.read_text() + f"admin {admin_token}\n")
    worker.start()
    servers = {}
    for name, token in (("alice", worker.token), ("admin", admin_token)):
        token_file = worker.root / f"{name}-token"
        token_file.write_text(f"{name} {token}\n")
        server = jupyter_server_factory(workers=[worker], app="jupyterlab", settings={"token_file": str(token_file)})
        quiet_lab(server)
        add_profile(server, "one", GiB)
        servers[name] = server.start()
    alice, admin = servers["alice"], servers["admin"]
    idle = start_session(alice, "idle.ipynb", "vgpu-one")
    held = lease_of(alice, idle)
    assert held

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            log = BrowserLog(page)
            # alice is no admin: no admin section.
            panel = open_panel(page, alice)
            panel.locator('[data-testid="tf-vgpu-kernel"]').first.wait_for(timeout=30_000)
            assert panel.locator('[data-testid="tf-vgpu-admin"]').count() == 0

            panel = open_panel(page, admin)
            section = panel.locator('[data-testid="tf-vgpu-admin"]')
            section.wait_for(timeout=30_000)
            users = section.locator(".tf-vgpu-users")
            users.locator("th", has_text="alice").wait_for(timeout=30_000)
            assert "1 GiB" in users.inner_text(), users.inner_text()
            # Every worker and device, each lease named by its principal.
            admin_map = section.locator('[data-testid="tf-vgpu-device-map"]')
            admin_map.first.wait_for(timeout=30_000)
            assert "alice" in str(admin_map.first.locator('[role="img"]').get_attribute("aria-label"))
            # alice's kernel has been idle for a minute: it is listed with a Release button.
            release = section.locator('[data-testid="tf-vgpu-idle-release"]')
            release.first.wait_for(timeout=150_000)
            assert "alice" in section.locator(".tf-vgpu-idle").first.inner_text()
            panel.screenshot(path=str(tmp_path / "panel-admin.png"))
            release.first.click()
            dialog = page.locator(".jp-Dialog")
            dialog.wait_for(timeout=10_000)
            assert "idle" in dialog.inner_text()
            dialog.locator("button", has_text="Release").click()
            # The worker ends the kernel on the released lease; alice's server shuts it down (no restart).
            wait_for(lambda: lease_of(alice, idle) == "", 60, f"alice's kernel on lease {held} is shut down", page)
            wait_for(lambda: release.count() == 0, 30, "the idle list is empty again", page)
            assert not section.locator('[role="alert"]').count(), section.inner_text()
            assert not log.ours(), log.ours()
        except Exception:
            page.screenshot(path=str(tmp_path.parent / "tf-ui-panel-admin-failure.png"))
            raise
        finally:
            browser.close()
