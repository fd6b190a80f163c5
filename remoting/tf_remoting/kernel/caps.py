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
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from tf_remoting.slice_env import PREFIX, NotInSlice, SliceEnv

applied: dict[str, str] = {}  # framework -> what was done, shown by %vgpu


def slice_fraction(env: Mapping[str, str] | None = None) -> float | None:
    """The slice's share of its device's VRAM (default: this process's environment), or None
    outside a slice or when the device's total is unknown."""
    try:
        return SliceEnv.from_env(env).vram_fraction
    except NotInSlice:
        return None


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
    limit = SliceEnv.from_env().vram_limit  # NotInSlice is reported by the import hook
    if limit:
        cupy.get_default_memory_pool().set_limit(size=limit)
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
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            try:
                hook(module)
            except Exception as exc:  # a cap that fails must say so, not break the import
                print(f"tf-vgpu: could not apply the {fullname} VRAM cap: {exc}", file=sys.stderr)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def reapply_caps() -> list[str]:
    """After a resize (the new slice already in os.environ, see SliceEnv.to_env): make the
    frameworks follow.

    Returns one sentence per thing done or not done, for `%vgpu resize` to print.
    """
    try:
        slice_ = SliceEnv.from_env()
    except NotInSlice as exc:
        return [f"{exc}: no in-kernel caps to change"]
    if not slice_.on_gpu:
        return ["host device: the worker enforces the new memory limit; nothing to change in the kernel"]
    if slice_.mode == "mps":
        return ["mps mode: CUDA MPS limits are fixed when the kernel starts; restart the kernel to apply "
                "the new slice to the GPU"]
    if slice_.mode != "soft":
        return [f"{slice_.mode} mode: no in-kernel caps to change"]
    notes: list[str] = []
    fraction = slice_.vram_fraction
    if fraction is None:
        return ["the device's total VRAM is unknown to this kernel: caps left as they were"]
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
    limit = slice_.vram_limit
    if cupy is not None and limit:
        try:
            cupy.get_default_memory_pool().set_limit(size=limit)
            notes.append(f"CuPy: memory pool limit {limit} bytes")
            applied["cupy"] = f"memory pool limit {limit} bytes"
        except Exception as exc:
            notes.append(f"CuPy: could not set the memory pool limit: {exc}")
    if not notes:
        notes.append("no framework imported yet: PyTorch, CuPy and JAX pick up the new limit when imported")
    return notes


def install_caps() -> None:
    """Install the caps for this kernel's slice (nothing on the host device or exclusive mode)."""
    try:
        slice_ = SliceEnv.from_env()
    except NotInSlice as exc:
        if any(name.startswith(PREFIX) for name in os.environ):  # a slice, but a broken one: say so
            print(f"tf-vgpu: no VRAM caps in this kernel: {exc}", file=sys.stderr)
        return
    if not (slice_.on_gpu and slice_.mode == "soft"):
        return
    if "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ:
        applied["jax"] = f"XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']}"
    sys.meta_path.insert(0, _AfterImport({"torch": cap_torch, "cupy": cap_cupy}))
