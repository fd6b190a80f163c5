"""vGPU kernels in JupyterLab's launcher and kernel picker (Debian's Chromium, Playwright).

One `jupyter lab` and one worker (host device) for the module, the built-in profiles and two
added with `ProfileStore` (as `tf-jupyter profiles add` does): 2 GiB and 32 GiB, sizes whose names
sort wrong ("16" < "2" < "32" < "4"). Checked:

- the launcher's Notebook and Console cards list vGPU kernels small -> large, whole GPU last;
- every vGPU card shows the kernelspec's logo (an <img> that loaded), not the letter placeholder;
- the kernel picker (File > New > Notebook) lists them in the same order, the others where they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import CHROMIUM, CHROMIUM_ARGS, NO_CHROMIUM, BrowserLog, menu, quiet_lab, wait_for

from tf_jupyter.profiles import BUILTIN_PROFILES, Profile, ProfileStore
from tf_jupyter.pytest_plugin import JupyterServerProcess
from tf_remoting.pytest_plugin import WorkerProcess

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)

GiB = 1 << 30
ADDED = (Profile("tiny", 2 * GiB, 5), Profile("xl", 32 * GiB, 60))
# Small -> large: the order the launcher and the picker must show (by name it would be 16, 2, 32, 4, 8, whole).
BY_SIZE = ["vgpu-tiny", "vgpu-small", "vgpu-medium", "vgpu-large", "vgpu-xl", "vgpu-whole"]
DISPLAY = {p.kernelspec_name: p.display_name for p in (*BUILTIN_PROFILES.values(), *ADDED)}


@pytest.fixture(scope="module")
def lab() -> Iterator[JupyterServerProcess]:
    worker = WorkerProcess(["--host-vram", "5Gi", "--watchdog-action", "warn"]).start()
    server = JupyterServerProcess(workers=[worker], app="jupyterlab")
    try:
        quiet_lab(server)
        store = ProfileStore(server.root / "data" / "kernels")
        for profile in ADDED:
            store.add(profile)
        server.start()
        yield server
    finally:
        server.cleanup()
        worker.cleanup()


@pytest.fixture
def page(lab: JupyterServerProcess, tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        p = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        p.set_default_timeout(30_000)
        try:
            yield p
        finally:
            with contextlib.suppress(Exception):
                p.screenshot(path=str(tmp_path / "last.png"))
            browser.close()


def vgpu_order(labels: list[str]) -> list[str]:
    """The vGPU kernelspecs among launcher labels or picker texts, in the order shown."""
    by_label = {v: k for k, v in DISPLAY.items()}
    return [by_label[t] for t in labels if t in by_label]


def test_launcher_and_picker_list_vgpu_kernels_small_to_large_with_logos(page: Any,
                                                                         lab: JupyterServerProcess) -> None:
    log = BrowserLog(page)
    page.goto(f"{lab.url}/lab/workspaces/launcher-order?token={lab.token}")
    for category in ("Notebook", "Console"):
        cards = page.locator(f'.jp-LauncherCard[data-category="{category}"]')
        wait_for(lambda cards=cards: len(vgpu_order(cards.locator(".jp-LauncherCard-label p").all_inner_texts())) == 6,
                 60, f"six vGPU cards under {category}", page=page)
        labels = cards.locator(".jp-LauncherCard-label p").all_inner_texts()
        assert vgpu_order(labels) == BY_SIZE, labels
        assert "Python 3 (ipykernel)" in labels  # the others stay
        for name in BY_SIZE:
            card = cards.filter(has=page.locator(".jp-LauncherCard-label p", has_text=DISPLAY[name]))
            img = card.locator("img.jp-Launcher-kernelIcon")
            assert img.count() == 1 and card.locator(".jp-LauncherCard-noKernelIcon").count() == 0, name
            assert img.get_attribute("src", timeout=5_000).endswith(f"/kernelspecs/{name}/logo-svg.svg")
            wait_for(lambda img=img: img.evaluate("i => i.complete && i.naturalWidth > 0"), 10,
                     f"{name}'s logo loaded", page=page)

    # The kernel picker: File > New > Notebook asks for a kernel.
    menu(page, "File", "New", "Notebook", command="notebook:create-new")
    select = page.locator(".jp-Dialog select")
    select.wait_for()
    texts = [t.split(" — ")[0] for t in select.locator("option").all_text_contents()]  # minus availability
    assert vgpu_order(texts) == BY_SIZE, texts
    assert "Python 3 (ipykernel)" in texts
    page.keyboard.press("Escape")
    select.wait_for(state="detached")
    assert log.ours() == []
