"""The fake-GPU worker fixture (tests/fakes/fake_gpu_worker.py) for the tests of this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
from fake_gpu_worker import gpu_worker  # noqa: E402, F401  (a fixture)
