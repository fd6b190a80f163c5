"""Every test here needs a real NVIDIA driver: they skip, each with the reason, where none answers."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def driver_answers() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.fixture(autouse=True)
def _nvidia_driver() -> None:
    if not driver_answers():
        pytest.skip("no NVIDIA driver answers (pynvml.nvmlInit failed)")
