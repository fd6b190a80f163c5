"""The logo of every vGPU kernelspec: a stylised snake on a GPU chip.

Jupyter serves a kernelspec's ``logo-svg.svg``, ``logo-32x32.png`` and ``logo-64x64.png`` from its
directory (``GET /kernelspecs/<name>/logo-svg.svg``), so the JupyterLab launcher and picker,
Notebook 7 and VS Code all show it. The PNGs are rendered from the SVG by ``render_png.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["LOGO_DIR", "LOGO_FILES", "write_logos"]

LOGO_DIR = Path(__file__).resolve().parent
LOGO_FILES = ("logo-svg.svg", "logo-32x32.png", "logo-64x64.png")


def write_logos(spec_dir: str | Path) -> list[Path]:
    """Copy the logo files into a kernelspec directory (next to its kernel.json)."""
    target = Path(spec_dir)
    written = []
    for name in LOGO_FILES:
        written.append(Path(shutil.copyfile(LOGO_DIR / name, target / name)))
    return written
