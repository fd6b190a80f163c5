"""Every c.TfVgpu setting says what it does (`jupyter lab --help-all`) and is listed in the README's settings table."""

from __future__ import annotations

import re
from pathlib import Path

from tf_jupyter.config import TfVgpu

README = Path(__file__).parents[2] / "README.md"


def readme_settings() -> set[str]:
    """The names in the first column of the README's "Settings (`c.TfVgpu.*`)" table."""
    text = README.read_text()
    section = text.split("## Settings (`c.TfVgpu.*`)", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and "`" in cells[1]:
            names.update(re.findall(r"`([a-z_]+)`", cells[1]))
    return names


def test_every_setting_has_help():
    traits = TfVgpu.class_traits(config=True)
    assert len(traits) >= 15, sorted(traits)
    missing = [name for name, trait in traits.items() if not (trait.help or "").strip()]
    assert not missing, f"settings without help=: {missing}"


def test_readme_lists_every_setting_and_no_other():
    assert readme_settings() == set(TfVgpu.class_traits(config=True))
