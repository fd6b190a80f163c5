"""The README's screenshots (tests/ui/screenshots.py) are taken from a real JupyterLab: each image is
written and shows something (not one flat colour). They go to docs/images only with
TF_UPDATE_SCREENSHOTS=1 (with 3 minutes of kernel history in the charts), to the test's tmp
directory otherwise (20 s of history)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from screenshots import NAMES, take
from ui_helpers import CHROMIUM, IMAGES, NO_CHROMIUM

pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM), pytest.mark.timeout(600)]


def test_screenshots(tmp_path: Path) -> None:
    update = os.environ.get("TF_UPDATE_SCREENSHOTS") == "1"
    paths = take(IMAGES if update else tmp_path, history_s=180.0 if update else 20.0)
    assert [p.name for p in paths] == list(NAMES)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 100 and height >= 20, (path, width, height)
        assert len(data) > 2000, f"{path} is nearly empty ({len(data)} bytes)"
