"""What the browser tests share: Chromium, a quiet JupyterLab, waiting, typing into cells, and
telling our extension's console errors from everybody else's."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tf_jupyter.pytest_plugin import JupyterServerProcess

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
MiB = 1 << 20

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]

NO_CHROMIUM = ("needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium; "
               "scripts/test.sh installs it when run as root)")


def quiet_lab(server: JupyterServerProcess) -> None:
    """No news or update checks (no network, and no stray notifications)."""
    settings = server.root / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def add_profile(server: JupyterServerProcess, name: str, vram: int) -> str:
    from tf_jupyter.profiles import Profile, kernelspec

    profile = Profile(name, vram=vram, compute=10)
    spec_dir = server.root / "data" / "kernels" / profile.kernelspec_name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(kernelspec(profile)))
    return profile.kernelspec_name


def put_notebook(server: JupyterServerProcess, path: str, kernelspec: str) -> None:
    nb = {"cells": [], "metadata": {"kernelspec": {"name": kernelspec, "display_name": kernelspec,
                                                   "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    status, body = server._open("PUT", f"/api/contents/{path}", {"type": "notebook", "content": nb})
    assert status in (200, 201), body


def kernel_of(server: JupyterServerProcess, path_suffix: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for s in server.get_sync("/api/sessions"):
            if s["path"].endswith(path_suffix) and s.get("kernel"):
                return str(s["kernel"]["id"])
        time.sleep(0.2)
    raise AssertionError(f"no session for {path_suffix}: {server.get_sync('/api/sessions')}")


def row_bytes(page: Any, kernel_id: str) -> tuple[int, int]:
    row = page.locator(f'.tf-vgpu-kernel[data-kernel-id="{kernel_id}"]')
    return int(row.get_attribute("data-vram-used") or 0), int(row.get_attribute("data-vram-limit") or 0)


def wait_for(predicate: Any, timeout: float, what: str, page: Any = None) -> None:
    """Poll `predicate` for up to `timeout` s. With `page`, wait through Playwright, so its event
    handlers (routes, console) run meanwhile: the sync API dispatches them only inside its calls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)


def run_cell(page: Any, code: str, expect: str, timeout: float = 90) -> None:
    """Type `code` into the last cell, run it, wait for an output containing `expect`.

    A notebook that was just opened may still be loading its document: a late load can wipe what
    was typed (the code is then nowhere in the notebook and nothing ran), so it is typed and run
    again, at most twice. Code that did run is never run twice."""
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    output = notebook.locator(".jp-OutputArea-output", has_text=expect)
    deadline = time.monotonic() + timeout
    for _ in range(3):
        cell = notebook.locator(".jp-Cell .cm-content").last
        cell.wait_for(timeout=60_000)
        typing_deadline = time.monotonic() + 30
        while code not in cell.inner_text():
            assert time.monotonic() < typing_deadline, f"could not type into the cell: {cell.inner_text()!r}"
            cell.click()
            page.keyboard.press("Control+a")
            page.keyboard.press("Delete")
            page.keyboard.type(code)
            time.sleep(0.3)
        page.keyboard.press("Shift+Enter")
        while time.monotonic() < deadline:
            if output.count():
                return
            if code not in notebook.inner_text():
                break  # the document was reloaded under us: type it again
            page.wait_for_timeout(200)
        else:
            raise AssertionError(f"no output {expect!r} within {timeout} s: {notebook.inner_text()[-500:]!r}")
    raise AssertionError(f"the cell was wiped three times: {notebook.inner_text()[-500:]!r}")


OURS = re.compile(r"tf-jupyter-vgpu|tf-vgpu", re.IGNORECASE)


class BrowserLog:
    """Console messages and uncaught errors of a page, with where they came from."""

    def __init__(self, page: Any) -> None:
        self.entries: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", self._pageerror)

    def _console(self, msg: Any) -> None:
        location = msg.location or {}
        self.entries.append(f"console.{msg.type}: {msg.text} @ {location.get('url', '')}")

    def _pageerror(self, error: Any) -> None:
        self.entries.append(f"pageerror: {error.message}\n{error.stack or ''}")

    def ours(self, types: tuple[str, ...] = ("console.error", "pageerror")) -> list[str]:
        """Errors that name our extension (its plugin id, its console prefix, its files or its API)."""
        return [e for e in self.entries if e.startswith(types) and OURS.search(e)]


def menu(page: Any, *path: str | re.Pattern[str], command: str | None = None, timeout: float = 10_000) -> None:
    """Click through the menu bar: menu(page, "Kernel", "Change Kernel…"); `command` picks among
    items with the same text by their command id."""
    page.locator(".lm-MenuBar-item", has_text=path[0]).click(timeout=timeout)
    for label in path[1:-1]:
        page.locator(".lm-Menu:visible .lm-Menu-item", has_text=label).first.hover(timeout=timeout)
    last = page.locator(".lm-Menu:visible .lm-Menu-item", has_text=path[-1])
    if command:
        last = last.and_(page.locator(f'.lm-Menu-item[data-command="{command}"]'))
    last.first.click(timeout=timeout)
