"""The extension in Notebook 7 (`jupyter notebook`), in Debian's Chromium (Playwright).

Notebook 7 has no status bar and no launcher; our plugin must still load there without errors and
show what its shell allows: the active notebook's slice in the top area, the vGPU panel in the
left side panel, and the kernel picker's availability.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ui_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGES,
    NO_CHROMIUM,
    BrowserLog,
    kernel_of,
    menu,
    put_notebook,
    quiet_lab,
    run_cell,
    wait_for,
)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

STATUS = re.compile(r"vGPU (\d+\.\d) / 4\.0 GiB · \d+ % of the (?:GPU|host)")


def gib_used(text: str) -> float:
    match = STATUS.fullmatch(text)
    assert match, text
    return float(match.group(1))


def test_notebook7_loads_and_shows_the_slice(tf_worker_factory, jupyter_server_factory, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    worker = tf_worker_factory(["--host-vram", "5Gi", "--watchdog-action", "warn"]).start()
    server = jupyter_server_factory(workers=[worker], app="notebook")
    quiet_lab(server)
    server.start()
    put_notebook(server, "nb7.ipynb", "vgpu-small")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        log = BrowserLog(page)
        try:
            page.goto(f"{server.url}/notebooks/nb7.ipynb?token={server.token}")
            assert page.locator("#jp-main-statusbar").count() == 0  # Notebook 7's shell has none
            # No status bar: the active notebook's slice is in the top area, in words.
            status = page.locator(".tf-vgpu-status-top .tf-vgpu-status-text")
            status.wait_for(timeout=60_000)
            kernel_id = kernel_of(server, "nb7.ipynb")
            assert STATUS.fullmatch(status.inner_text()), status.inner_text()
            assert "vGPU of this notebook's kernel" in (status.get_attribute("aria-label") or "")

            before = gib_used(status.inner_text())
            run_cell(page, "x = b'x' * (300 * 2**20); print('allocated')", "allocated")
            wait_for(lambda: gib_used(status.inner_text()) >= before + 0.25, 15,
                     f"the top item shows +300 MB: {status.inner_text()}")

            # The kernel picker (Kernel > Change Kernel…) says what fits: 4 of 5 GiB are leased.
            menu(page, "Kernel", "Change Kernel")
            option = page.locator(""".jp-Dialog select option[value='{"name":"vgpu-small"}']""")
            wait_for(lambda: option.text_content() == "Python 3 · vGPU 4 GiB · 10 % — no free slice now", 10,
                     f"the picker shows availability: {option.text_content()!r}")
            page.keyboard.press("Escape")
            page.locator(".jp-Dialog").wait_for(state="detached")

            # A click on the item opens the vGPU panel in Notebook 7's left side panel.
            status.click()
            panel = page.locator("#tf-vgpu-panel")
            panel.wait_for(state="visible")
            panel.get_by_role("status").filter(has_text=re.compile(r"^\W*Live$")).wait_for()
            panel.locator(f'.tf-vgpu-kernel[data-kernel-id="{kernel_id}"]').wait_for()

            page.screenshot(path=str(tmp_path / "notebook7.png"))
            IMAGES.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(IMAGES / "notebook7.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 420})
            # Nothing of ours failed or had to be left out (other plugins' errors are not ours).
            ours = log.ours(("console.error", "console.warning", "pageerror"))
            assert ours == [], ours
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print("\n".join(log.entries))
            raise
        finally:
            browser.close()
