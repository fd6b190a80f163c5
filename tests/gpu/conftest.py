"""Every test here needs a real NVIDIA driver: they skip, each with the reason, where none answers.

The skip is decided at collection (before any fixture runs), so the session-scoped worker below
is never started on a machine without a GPU. scripts/gpu-check.sh runs this folder on the GPU
machine with `-p tf_remoting.pytest_plugin --confcutdir tests/gpu`, so that the Jupyter-side
plugin (and its dependencies) is not needed there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tf_remoting.pytest_plugin import WorkerProcess

HERE = Path(__file__).resolve().parent


@functools.cache
def driver_answers() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Hooks in a conftest see every collected item: touch only this folder's.
    if driver_answers():
        return
    skip = pytest.mark.skip(reason="no NVIDIA driver answers (pynvml.nvmlInit failed): the gpu suite "
                            "runs on a GPU machine, see scripts/gpu-check.sh")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nvml_worker() -> Iterator[WorkerProcess]:
    """One worker with the NVML backend for the tests that only lease soft slices (and release them).

    The watchdog only warns: the CUDA context, outside every framework's allocator, is part of
    what NVML counts, and these tests are about measurement and caps, not escalation.
    """
    worker = WorkerProcess(["--backend", "nvml", "--isolation", "soft", "--watchdog-action", "warn",
                            "--sample-interval", "0.25"])
    try:
        worker.start()
        yield worker
    finally:
        worker.cleanup()
