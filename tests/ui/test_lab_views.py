"""The extension's views beyond the sidebar, in JupyterLab in Debian's Chromium (Playwright).

One `jupyter lab` and one worker (host device, 5 GiB) for the module:

- launcher cards and the kernel picker say, for each vGPU kernel, its slice and whether one fits
  now or how long the queue is, in text, and follow the pool live;
- the sidebar says "Disconnected" when the events WebSocket drops, and goes live again by itself;
- in JupyterLab Dark the sidebar is readable (contrast measured), our CSS uses theme variables
  only (its look is kept in the test's tmp directory; docs/images/ comes from screenshots.py).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    NO_CHROMIUM,
    BrowserLog,
    kernel_of,
    menu,
    put_notebook,
    quiet_lab,
    wait_for,
)

from tf_jupyter.pytest_plugin import JupyterServerProcess
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

STYLE = Path(__file__).resolve().parents[2] / "labextension" / "style"
SMALL = "Python 3 · vGPU 4 GiB · 10 %"


@pytest.fixture(scope="module")
def lab() -> Iterator[JupyterServerProcess]:
    worker = WorkerProcess(["--host-vram", "5Gi", "--watchdog-action", "warn"]).start()
    # The queued kernel of the launcher test waits while the test looks at the picker.
    server = JupyterServerProcess(workers=[worker], app="jupyterlab", settings={"queue_timeout": 120.0})
    try:
        quiet_lab(server)
        server.start()
        yield server
    finally:
        server.cleanup()
        worker.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A page of its own (no shared cookies or routes); its last look is kept in tmp_path."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(30_000)
    try:
        yield p
    finally:
        with contextlib.suppress(Exception):
            p.screenshot(path=str(tmp_path / "last.png"))
        context.close()


def open_lab(page: Any, lab: JupyterServerProcess, workspace: str) -> None:
    """A fresh workspace of its own, so no test restores another's tabs."""
    page.goto(f"{lab.url}/lab/workspaces/{workspace}?token={lab.token}")


def delete_kernel(lab: JupyterServerProcess, kernel_id: str) -> None:
    status, body = lab._open("DELETE", f"/api/kernels/{kernel_id}")
    assert status == 204, body


def start_kernel(lab: JupyterServerProcess, name: str) -> str:
    status, body = lab._open("POST", "/api/kernels", {"name": name})
    assert status == 201, body
    return str(body["id"])


def test_launcher_cards_and_kernel_picker_say_fits_or_queue(page: Any, lab: JupyterServerProcess,
                                                            tmp_path: Path) -> None:
    log = BrowserLog(page)
    open_lab(page, lab, "launcher")
    cards = page.locator('.jp-LauncherCard[data-tf-vgpu-kernelspec="vgpu-small"]')
    nb_badge = page.locator('.jp-LauncherCard[data-category="Notebook"][data-tf-vgpu-kernelspec="vgpu-small"] '
                            '.tf-vgpu-launcher-badge')
    console_badge = page.locator('.jp-LauncherCard[data-category="Console"][data-tf-vgpu-kernelspec="vgpu-small"] '
                                 '.tf-vgpu-launcher-badge')
    # Nothing leased: a 4 GiB slice of the 5 GiB host device fits, in both kernel categories.
    page.locator(".tf-vgpu-launcher-badge", has_text="fits now").first.wait_for()
    assert nb_badge.inner_text() == "fits now"
    assert console_badge.inner_text() == "fits now"
    assert cards.count() == 2
    # In words for screen readers: the card (role=button) is named by its label and this line, and
    # described by a full sentence.
    assert page.get_by_role("button", name=re.compile(re.escape(SMALL) + r".*fits now")).count() == 2
    assert "4 GiB · 10 %: fits now" in (cards.first.get_attribute("aria-description") or "")
    # A 16 GiB slice is bigger than anything free: it says so, and not by colour alone.
    large = page.locator('.jp-LauncherCard[data-category="Notebook"][data-tf-vgpu-kernelspec="vgpu-large"] '
                         '.tf-vgpu-launcher-badge')
    assert large.inner_text() == "no free slice now"
    assert large.get_attribute("data-fits") == "false"
    # Non-vGPU cards are left alone.
    assert page.locator('.jp-LauncherCard[data-category="Other"] .tf-vgpu-launcher-badge').count() == 0

    # The pool changes while the launcher is open: it follows, without a reload.
    first = start_kernel(lab, "vgpu-small")
    second: dict[str, Any] = {}
    queued = threading.Thread(target=lambda: second.update(id=start_kernel(lab, "vgpu-small")), daemon=True)
    try:
        wait_for(lambda: nb_badge.inner_text() == "no free slice now", 15, "the card says the slice is taken")
        queued.start()  # 4 of 5 GiB leased: this one waits in the queue
        wait_for(lambda: nb_badge.inner_text() == "queue: 1 waiting", 20,
                 f"the card shows the queue: {nb_badge.inner_text()!r}")
        assert console_badge.inner_text() == "queue: 1 waiting"
        # docs/images/ is written by tests/ui/screenshots.py only (README); this run's look stays in tmp.
        page.locator(".jp-Launcher-content").screenshot(path=str(tmp_path / "launcher.png"))

        # The kernel picker (File > New > Notebook asks for a kernel) says the same.
        menu(page, "File", "New", "Notebook", command="notebook:create-new")
        select = page.locator(".jp-Dialog select")
        select.wait_for()
        option = select.locator("""option[value='{"name":"vgpu-small"}']""")
        wait_for(lambda: option.text_content() == f"{SMALL} — queue: 1 waiting", 10,
                 f"the picker shows the queue: {option.text_content()!r}")
        assert "behind 1 request" in (option.get_attribute("title") or "")
        plain = select.locator("""option[value='{"name":"python3"}']""")
        assert plain.text_content() == "Python 3 (ipykernel)"
        # Live while the dialog is open: the first kernel goes, the queued one takes its place.
        delete_kernel(lab, first)
        first = ""
        queued.join(60)
        assert second.get("id"), "the queued kernel did not start"
        wait_for(lambda: option.text_content() == f"{SMALL} — no free slice now", 15,
                 f"the picker follows the pool: {option.text_content()!r}")
        page.keyboard.press("Escape")
        select.wait_for(state="detached")
    finally:
        if first:
            delete_kernel(lab, first)
        if queued.is_alive():
            queued.join(60)
        if second.get("id"):
            delete_kernel(lab, second["id"])
    wait_for(lambda: nb_badge.text_content() == "fits now", 15, "the card frees up again")
    assert log.ours() == []


class EventsRoute:
    """The page's events WebSocket, routed through the test: passed through to the server until
    `cut()` closes it as a server going away would, refusing new ones until `restore()`."""

    def __init__(self, page: Any) -> None:
        self.up = True
        self.servers: list[Any] = []
        self.refused = 0
        page.route_web_socket(re.compile(r".*/tf-vgpu/api/events.*"), self._route)

    def _route(self, ws: Any) -> None:
        if not self.up:
            self.refused += 1
            ws.close(code=4002, reason="test: server away")
            return
        self.servers.append(ws.connect_to_server())  # passes everything through, both ways

    def cut(self) -> None:
        self.up = False
        for server in self.servers:
            server.close(code=4001, reason="test: connection dropped")  # the page sees the close
        self.servers.clear()

    def restore(self) -> None:
        self.up = True


def live_banner(panel: Any) -> Any:
    return panel.get_by_role("status").filter(has_text=re.compile(r"^\W*Live$"))  # "not live" is not it


def test_sidebar_says_disconnected_and_reconnects(page: Any, lab: JupyterServerProcess) -> None:
    """The events WebSocket is cut (as when the server goes away) and refused for a while."""
    log = BrowserLog(page)
    events = EventsRoute(page)
    open_lab(page, lab, "disconnect")
    page.locator('.jp-SideBar [data-id="tf-vgpu-panel"]').click()
    panel = page.locator("#tf-vgpu-panel")
    live = live_banner(panel)
    live.wait_for()
    badge = page.locator('.jp-LauncherCard[data-category="Notebook"][data-tf-vgpu-kernelspec="vgpu-small"] '
                         '.tf-vgpu-launcher-badge')
    badge.filter(has_text="fits now").wait_for()

    events.cut()
    alert = panel.get_by_role("alert")
    alert.filter(has_text="Disconnected").wait_for(timeout=10_000)
    assert "not live" in alert.inner_text()
    assert "retrying in" in alert.inner_text()
    assert live.count() == 0
    # Everything that shows pool figures says they are not live.
    wait_for(lambda: "(not live)" in badge.inner_text(), 5, f"launcher card marks old figures: {badge.inner_text()}")
    # It keeps trying while the server is away, and keeps saying so.
    wait_for(lambda: events.refused >= 1, 15, "a reconnect attempt", page)
    assert alert.filter(has_text="Disconnected").count() == 1

    events.restore()
    live.wait_for(timeout=30_000)
    alerts = panel.get_by_role("alert")
    assert alerts.count() == 0, alerts.all_inner_texts()
    wait_for(lambda: badge.inner_text() == "fits now", 10, "launcher card live again")
    assert log.ours() == [], log.ours()


def luminance_contrast_js() -> str:
    """JS: text colour vs the background behind it, for each element with text under a root."""
    return """root => {
      const rgba = c => {
        const v = (c.match(/[\\d.]+/g) || []).map(Number);
        return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
      };
      const over = (fg, bg) => fg.slice(0, 3).map((c, i) => c * fg[3] + bg[i] * (1 - fg[3]));
      const background = el => {
        const layers = [];
        for (let e = el; e; e = e.parentElement) {
          const c = rgba(getComputedStyle(e).backgroundColor);
          if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
        }
        let bg = [255, 255, 255];
        for (const c of layers.reverse()) bg = over(c, bg);
        return bg;
      };
      const lum = rgb => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                           return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]); };
      const ratio = (a, b) => {
        const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
        return (x + 0.05) / (y + 0.05);
      };
      const items = [];
      for (const el of [root, ...root.querySelectorAll('*')]) {
        const text = Array.from(el.childNodes).filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
        // Symbols hidden from screen readers only repeat the words next to them in colour.
        if (!text || !el.getClientRects().length || el.closest('[aria-hidden="true"]')) continue;
        const bg = background(el);
        const fg = over(rgba(getComputedStyle(el).color), bg);
        items.push({ text: text.slice(0, 50), cls: String(el.className), ratio: ratio(fg, bg), bgLum: lum(bg) });
      }
      return { panelLum: lum(background(root)), items };
    }"""


def assert_readable(measured: dict[str, Any], dark: bool) -> list[dict[str, Any]]:
    """Every text readable on what is behind it: WCAG AA, 4.5:1 for body text, at least 3:1 for
    the dimmed secondary text; light on dark in the dark theme, dark on light otherwise."""
    items = measured["items"]
    assert len(items) > 20, measured
    assert (measured["panelLum"] < 0.1) == dark, measured["panelLum"]
    low = [i for i in items if i["ratio"] < 3.0]
    assert not low, low
    body = [i for i in items if "tf-vgpu-dim" not in i["cls"] and i["ratio"] < 4.5]
    assert not body, body
    title = next(i for i in items if i["text"] == "vGPU")
    assert title["ratio"] >= 7, title
    return list(items)


COLOUR_LITERAL = re.compile(
    r"#[0-9a-fA-F]{3,8}\b|\b(?:rgba?|hsla?)\(|\b(?:white|black|red|green|blue|orange|gray|grey)\b(?!-)")


def test_dark_theme_sidebar_is_readable(page: Any, lab: JupyterServerProcess, tmp_path: Path) -> None:
    # Our CSS takes every colour from JupyterLab's theme variables: nothing hard-coded.
    for css in STYLE.glob("*.css"):
        text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), css.read_text(), flags=re.S)
        for number, code in enumerate(text.splitlines(), 1):
            line = code
            assert not COLOUR_LITERAL.search(code), f"{css.name}:{number}: hard-coded colour: {line.strip()}"
            if re.search(r"\b(?:color|background|border[\w-]*|fill|stroke)\s*:", code):
                value = code.split(":", 1)[1]
                assert "var(--jp-" in value or re.search(r"\b(?:none|transparent|inherit|currentColor)\b|^\s*\d",
                                                         value), f"{css.name}:{number}: {line.strip()}"

    log = BrowserLog(page)
    events = EventsRoute(page)
    put_notebook(lab, "dark.ipynb", "vgpu-small")
    status, session = lab._open("POST", "/api/sessions", {"path": "dark.ipynb", "type": "notebook",
                                                         "name": "dark.ipynb", "kernel": {"name": "vgpu-small"}})
    assert status == 201, session
    kernel_id = kernel_of(lab, "dark.ipynb")
    try:
        open_lab(page, lab, "dark")
        page.locator('.jp-SideBar [data-id="tf-vgpu-panel"]').click()
        panel = page.locator("#tf-vgpu-panel")
        live_banner(panel).wait_for()
        row = panel.locator(f'.tf-vgpu-kernel[data-kernel-id="{kernel_id}"]')
        row.wait_for()
        wait_for(lambda: int(row.get_attribute("data-vram-used") or 0) > 0, 30, "the kernel is sampled")
        assert_readable(panel.evaluate(luminance_contrast_js()), dark=False)

        menu(page, "Settings", "Theme", re.compile(r"^\s*JupyterLab Dark\s*$"), command="apputils:change-theme")
        page.locator('body[data-jp-theme-name="JupyterLab Dark"][data-jp-theme-light="false"]').wait_for(
            state="attached")
        # The theme's stylesheet is in: the panel itself is dark.
        wait_for(lambda: panel.evaluate(luminance_contrast_js())["panelLum"] < 0.1, 10, "the panel turns dark")
        assert_readable(panel.evaluate(luminance_contrast_js()), dark=True)

        panel.screenshot(path=str(tmp_path / "sidebar-dark.png"))

        # The warning banner is readable in the dark too.
        events.cut()
        panel.get_by_role("alert").filter(has_text="Disconnected").wait_for(timeout=10_000)
        banner = [i for i in assert_readable(panel.evaluate(luminance_contrast_js()), dark=True)
                  if "Disconnected" in i["text"]]
        assert banner and banner[0]["ratio"] >= 4.5, banner
    finally:
        # Themes are a user setting on the server: back to light for whoever comes next.
        lab._open("PUT", "/lab/api/settings/@jupyterlab/apputils-extension:themes", {"raw": "{}"})
        lab._open("DELETE", f"/api/sessions/{session['id']}")
        wait_for(lambda: kernel_id not in {k["id"] for k in lab.get_sync("/api/kernels")}, 30, "kernel shut down")
    assert log.ours() == [], log.ours()
