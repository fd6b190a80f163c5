"""Soft caps: make frameworks imported later in the kernel respect the slice's VRAM.

Environment variables cover JAX and TensorFlow (set by the worker before the kernel starts).
PyTorch and CuPy need a call after they are imported, so a tiny import hook makes that call the
moment the user imports them. The host device has no GPU and needs none of this: its memory is
watched by the worker.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

applied: dict[str, str] = {}  # framework -> what was done, shown by %vgpu


def slice_fraction(env: os._Environ[str] | dict[str, str] = os.environ) -> float | None:
    try:
        limit, total = int(env["TF_VGPU_VRAM_LIMIT"]), int(env["TF_VGPU_VRAM_TOTAL"])
    except (KeyError, ValueError):
        return None
    return min(1.0, limit / total) if total > 0 else None


def _torch_set_fraction(torch: ModuleType, fraction: float) -> None:
    for index in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(fraction, index)


def cap_torch(torch: ModuleType) -> None:
    fraction = slice_fraction()
    if fraction is None:
        return

    def apply() -> None:
        # The fraction of the moment CUDA initialises: a resize before that needs no other call.
        current = slice_fraction()
        if current is not None:
            _torch_set_fraction(torch, current)

    # Runs when CUDA initialises (or now if it already has): importing torch stays cheap.
    torch.cuda._lazy_call(apply)
    applied["torch"] = f"set_per_process_memory_fraction({fraction:.4f})"


def cap_cupy(cupy: ModuleType) -> None:
    limit = os.environ.get("TF_VGPU_VRAM_LIMIT")
    if limit:
        cupy.get_default_memory_pool().set_limit(size=int(limit))
        applied["cupy"] = f"memory pool limit {limit} bytes"


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls hooks[name](module) right after `name` is first imported."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname not in self.hooks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        hook = self.hooks.pop(fullname)
        original = loader.exec_module  # type: ignore[union-attr]

        def exec_module(module: ModuleType) -> None:
            original(module)
            try:
                hook(module)
            except Exception as exc:  # a cap that fails must say so, not break the import
                print(f"tf-vgpu: could not apply the {fullname} VRAM cap: {exc}", file=sys.stderr)

        loader.exec_module = exec_module  # type: ignore[method-assign,union-attr]
        return spec


def _active() -> bool:
    return os.environ.get("TF_VGPU_DEVICE_KIND") == "gpu" and os.environ.get("TF_VGPU_MODE") == "soft"


def reapply_caps() -> list[str]:
    """After a resize (the new TF_VGPU_* limits already in os.environ): make the frameworks follow.

    Returns one sentence per thing done or not done, for `%vgpu resize` to print.
    """
    kind, mode = os.environ.get("TF_VGPU_DEVICE_KIND"), os.environ.get("TF_VGPU_MODE")
    if kind != "gpu":
        return ["host device: the worker enforces the new memory limit; nothing to change in the kernel"]
    if mode == "mps":
        return ["mps mode: CUDA MPS limits are fixed when the kernel starts; restart the kernel to apply "
                "the new slice to the GPU"]
    if mode != "soft":
        return [f"{mode} mode: no in-kernel caps to change"]
    notes: list[str] = []
    fraction = slice_fraction()
    if fraction is None:
        return ["no VRAM total known (TF_VGPU_VRAM_TOTAL): caps left as they were"]
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
    if "jax" in sys.modules:
        notes.append("JAX: already imported; it keeps the fraction it started with until the kernel restarts")
        applied["jax"] = f"XLA_PYTHON_CLIENT_MEM_FRACTION={fraction:.4f} (after a restart)"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                _torch_set_fraction(torch, fraction)
                notes.append(f"PyTorch: set_per_process_memory_fraction({fraction:.4f})")
            else:
                notes.append(f"PyTorch: CUDA not initialised yet; {fraction:.4f} applies when it is")
            applied["torch"] = f"set_per_process_memory_fraction({fraction:.4f})"
        except Exception as exc:  # report, do not fail the resize that already happened
            notes.append(f"PyTorch: could not apply the new fraction: {exc}")
    cupy = sys.modules.get("cupy")
    limit = os.environ.get("TF_VGPU_VRAM_LIMIT")
    if cupy is not None and limit:
        try:
            cupy.get_default_memory_pool().set_limit(size=int(limit))
            notes.append(f"CuPy: memory pool limit {limit} bytes")
            applied["cupy"] = f"memory pool limit {limit} bytes"
        except Exception as exc:
            notes.append(f"CuPy: could not set the memory pool limit: {exc}")
    if not notes:
        notes.append("no framework imported yet: PyTorch, CuPy and JAX pick up the new limit when imported")
    return notes


def install_caps() -> None:
    """Install the caps for this kernel's slice (nothing on the host device or exclusive mode)."""
    if not _active():
        return
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ:
        applied["jax"] = f"XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']}"
    sys.meta_path.insert(0, _AfterImport({"torch": cap_torch, "cupy": cap_cupy}))
