"""The soft caps a kernel applies to PyTorch and CuPy (tf_remoting.kernel.caps).

This machine has neither a GPU nor torch/cupy: tests/fakes/fake_torch.py and fake_cupy.py stand in
for them, loaded fresh for each test. The real path: tests/gpu/test_soft_cap_torch.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tf_remoting.kernel import caps
from tf_remoting.slice_env import PREFIX, SliceEnv

FAKES = Path(__file__).resolve().parents[1] / "fakes"
GiB = 1 << 30
TOTAL = 4 * GiB


def load_fake(name: str) -> ModuleType:
    """A fresh copy of tests/fakes/fake_<name>.py as a module called `name`."""
    spec = importlib.util.spec_from_file_location(name, FAKES / f"fake_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def a_slice(kind: str = "gpu", mode: str = "soft", limit: int = GiB, total: int = TOTAL) -> SliceEnv:
    return SliceEnv(lease_id="lease-1", kernel_id="kernel-1", principal="alice", device_uuids=("GPU-0",),
                    device_name="Fake GPU", device_kind=kind, vram_limit=limit, vram_total=total,
                    compute_limit=10, mode=mode, memory_enforcement="framework", worker="unix:/nowhere",
                    token="t", shares_filesystem=True)


def slice_env(monkeypatch: pytest.MonkeyPatch, kind: str = "gpu", mode: str = "soft", limit: int = GiB,
              total: int = TOTAL) -> None:
    """This process's environment as the worker writes it for a kernel in such a slice."""
    for name, value in a_slice(kind, mode, limit, total).to_env().items():
        monkeypatch.setenv(name, value)


def resize(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """What %vgpu resize does to the environment: the same slice with a new limit."""
    for name, value in SliceEnv.from_env().resized(limit, 10).to_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No torch/cupy imported, no hook installed, nothing applied; all restored afterwards."""
    monkeypatch.setattr(caps, "applied", {})
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    for name in [n for n in os.environ if n.startswith(PREFIX)]:  # this process is in no slice
        monkeypatch.delenv(name)
    frameworks = ("torch", "cupy", "jax")
    before = {name: sys.modules.pop(name) for name in frameworks if name in sys.modules}
    yield
    for name in frameworks:  # what a test imported (the fakes) must not reach other tests
        sys.modules.pop(name, None)
    sys.modules.update(before)


@pytest.fixture
def importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`import torch` / `import cupy` find the fakes on sys.path, as the import hook expects."""
    for name in ("torch", "cupy"):
        shutil.copy(FAKES / f"fake_{name}.py", tmp_path / f"{name}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_slice_fraction() -> None:
    env = a_slice(limit=GiB, total=TOTAL).to_env()
    assert caps.slice_fraction(env) == 0.25
    assert caps.slice_fraction(a_slice(limit=8 * GiB).to_env()) == 1.0
    assert caps.slice_fraction(a_slice(total=0).to_env()) is None
    assert caps.slice_fraction({**env, PREFIX + "VRAM_TOTAL": "lots"}) is None
    assert caps.slice_fraction({PREFIX + "VRAM_LIMIT": str(GiB)}) is None  # not a whole slice
    assert caps.slice_fraction({}) is None


def test_a_broken_slice_environment_is_reported_not_capped(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    slice_env(monkeypatch)
    monkeypatch.delenv(PREFIX + "VRAM_TOTAL")
    hooks_before = list(sys.meta_path)
    caps.install_caps()
    assert sys.meta_path == hooks_before
    assert "no VRAM caps in this kernel" in capsys.readouterr().err
    monkeypatch.delenv(PREFIX + "MODE")
    assert caps.reapply_caps()[0].startswith("this kernel is not running in a vGPU slice")


def test_outside_a_slice_install_caps_does_nothing_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    hooks_before = list(sys.meta_path)
    caps.install_caps()
    assert sys.meta_path == hooks_before
    assert capsys.readouterr().err == ""


def test_import_hook_caps_torch_when_cuda_initialises(monkeypatch: pytest.MonkeyPatch, importable: Path) -> None:
    slice_env(monkeypatch, limit=GiB, total=TOTAL)
    caps.install_caps()
    torch = importlib.import_module("torch")
    assert torch.__file__ == str(importable / "torch.py")  # the fake, through the hook
    # Importing torch must not initialise CUDA: the fraction waits for it.
    assert not torch.cuda.is_initialized() and torch.cuda.fractions == {}
    torch.cuda.init()
    assert torch.cuda.fractions == {0: 0.25, 1: 0.25}
    assert caps.applied["torch"] == "set_per_process_memory_fraction(0.2500)"


def test_import_hook_sets_the_cupy_pool_limit(monkeypatch: pytest.MonkeyPatch, importable: Path) -> None:
    slice_env(monkeypatch, limit=3 * GiB // 2)
    caps.install_caps()
    cupy = importlib.import_module("cupy")
    assert cupy.get_default_memory_pool().get_limit() == 3 * GiB // 2
    assert caps.applied["cupy"] == f"memory pool limit {3 * GiB // 2} bytes"


def test_a_failing_cap_reports_and_keeps_the_import(monkeypatch: pytest.MonkeyPatch, importable: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    slice_env(monkeypatch)
    caps.install_caps()
    monkeypatch.setenv(PREFIX + "VRAM_LIMIT", "lots")  # the slice broke after the caps were installed
    cupy = importlib.import_module("cupy")
    assert cupy.get_default_memory_pool().get_limit() == 0
    assert "could not apply the cupy VRAM cap: TF_VGPU_VRAM_LIMIT='lots' is not a number" in capsys.readouterr().err
    assert "cupy" not in caps.applied


def test_cuda_already_initialised_gets_the_fraction_now(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=GiB, total=8 * GiB)
    torch = load_fake("torch")
    torch.cuda.init()
    caps.cap_torch(torch)
    assert torch.cuda.fractions == {0: 0.125, 1: 0.125}


def test_a_resize_before_cuda_initialises_needs_no_other_call(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=GiB)
    torch = load_fake("torch")
    caps.cap_torch(torch)
    resize(monkeypatch, 2 * GiB)
    torch.cuda.init()
    assert torch.cuda.calls == [(0.5, 0), (0.5, 1)]


@pytest.mark.parametrize(("kind", "mode"), [("host", "host"), ("gpu", "mps"), ("gpu", "exclusive")])
def test_nothing_is_capped_outside_soft_gpu_slices(monkeypatch: pytest.MonkeyPatch, importable: Path,
                                                   kind: str, mode: str) -> None:
    slice_env(monkeypatch, kind=kind, mode=mode)
    hooks_before = list(sys.meta_path)
    caps.install_caps()
    assert sys.meta_path == hooks_before
    torch = importlib.import_module("torch")
    cupy = importlib.import_module("cupy")
    torch.cuda.init()
    assert torch.cuda.calls == []
    assert cupy.get_default_memory_pool().calls == []
    assert caps.applied == {}


def test_reapply_after_a_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=GiB)
    torch, cupy = load_fake("torch"), load_fake("cupy")
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    caps.cap_torch(torch)
    caps.cap_cupy(cupy)
    torch.cuda.init()
    assert torch.cuda.fractions == {0: 0.25, 1: 0.25}
    assert cupy.get_default_memory_pool().get_limit() == GiB

    resize(monkeypatch, 3 * GiB)  # what %vgpu resize writes
    notes = caps.reapply_caps()
    assert torch.cuda.fractions == {0: 0.75, 1: 0.75}
    assert cupy.get_default_memory_pool().get_limit() == 3 * GiB
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.7500"
    assert "PyTorch: set_per_process_memory_fraction(0.7500)" in notes
    assert f"CuPy: memory pool limit {3 * GiB} bytes" in notes
    assert caps.applied["torch"] == "set_per_process_memory_fraction(0.7500)"
    assert caps.applied["cupy"] == f"memory pool limit {3 * GiB} bytes"


def test_reapply_before_cuda_initialises_defers_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=GiB)
    torch = load_fake("torch")
    monkeypatch.setitem(sys.modules, "torch", torch)
    caps.cap_torch(torch)
    resize(monkeypatch, 2 * GiB)
    notes = caps.reapply_caps()
    assert not torch.cuda.is_initialized()  # reapplying must not initialise CUDA itself
    assert notes == ["PyTorch: CUDA not initialised yet; 0.5000 applies when it is"]
    torch.cuda.init()
    assert torch.cuda.fractions == {0: 0.5, 1: 0.5}


def test_reapply_reports_a_framework_that_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=GiB)
    cupy = load_fake("cupy")
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    resize(monkeypatch, -GiB)  # the fake pool refuses it, as cupy's does
    notes = caps.reapply_caps()
    assert any(n.startswith("CuPy: could not set the memory pool limit") for n in notes), notes
    assert cupy.get_default_memory_pool().get_limit() == 0


def test_reapply_with_nothing_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    slice_env(monkeypatch, limit=2 * GiB)
    assert caps.reapply_caps() == [
        "no framework imported yet: PyTorch, CuPy and JAX pick up the new limit when imported"]
    assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5000"


@pytest.mark.parametrize(("kind", "mode", "says"), [
    ("host", "host", "host device: the worker enforces"),
    ("gpu", "mps", "mps mode: CUDA MPS limits are fixed when the kernel starts"),
    ("gpu", "exclusive", "exclusive mode: no in-kernel caps"),
])
def test_reapply_changes_nothing_outside_soft_gpu_slices(monkeypatch: pytest.MonkeyPatch, kind: str, mode: str,
                                                         says: str) -> None:
    slice_env(monkeypatch, kind=kind, mode=mode, limit=GiB)
    torch, cupy = load_fake("torch"), load_fake("cupy")
    torch.cuda.init()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    notes = caps.reapply_caps()
    assert len(notes) == 1 and notes[0].startswith(says), notes
    assert torch.cuda.calls == [] and cupy.get_default_memory_pool().calls == []
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ
