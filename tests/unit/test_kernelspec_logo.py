"""The vGPU kernelspecs' logo: in the package, in every generated and committed kernelspec."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

from tf_jupyter.kernelspec_logo import LOGO_DIR, LOGO_FILES
from tf_jupyter.profiles import BUILTIN_PROFILES, Profile, ProfileStore, write_builtin_kernelspecs

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_logo_files_are_what_jupyter_looks_for():
    root = ET.parse(LOGO_DIR / "logo-svg.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") == "0 0 64 64"
    assert png_size(LOGO_DIR / "logo-32x32.png") == (32, 32)
    assert png_size(LOGO_DIR / "logo-64x64.png") == (64, 64)


def test_every_builtin_kernelspec_carries_the_logo(tmp_path):
    write_builtin_kernelspecs(tmp_path)
    for profile in BUILTIN_PROFILES.values():
        for name in LOGO_FILES:
            generated = tmp_path / profile.kernelspec_name / name
            assert generated.read_bytes() == (LOGO_DIR / name).read_bytes()
            committed = REPO / "kernels" / profile.kernelspec_name / name
            assert committed.read_bytes() == generated.read_bytes(), \
                "kernels/ is stale: regenerate it (see kernels/README.md)"


def test_added_profiles_carry_the_logo(tmp_path):
    store = ProfileStore(tmp_path)
    path = store.add(Profile("train", 24 * GiB, 40))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(["kernel.json", *LOGO_FILES])
