"""Render logo-svg.svg into logo-32x32.png and logo-64x64.png with Chromium (dev tool, not imported).

Run after changing the SVG: ``python tf_jupyter/kernelspec_logo/render_png.py`` (needs Playwright
and /usr/bin/chromium, as the browser tests do); commit the PNGs with the SVG.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    from playwright.sync_api import sync_playwright

    svg = (HERE / "logo-svg.svg").read_text(encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
        for size in (32, 64):
            page = browser.new_page(viewport={"width": size, "height": size})
            sized = svg.replace("<svg ", f'<svg style="width:{size}px;height:{size}px;display:block" ', 1)
            page.set_content(f"<html><body style='margin:0;background:transparent'>{sized}</body></html>")
            page.screenshot(path=str(HERE / f"logo-{size}x{size}.png"), omit_background=True)
            page.close()
        browser.close()


if __name__ == "__main__":
    main()
