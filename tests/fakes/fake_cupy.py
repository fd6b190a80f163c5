"""A FAKE `cupy` for tests on machines without an NVIDIA GPU. Not CuPy: no CUDA is touched.

Only what the soft caps call: `get_default_memory_pool().set_limit(size=..., fraction=...)`, with
`get_limit()` to read back what was set, as on cupy's MemoryPool. Load a fresh copy per test.
"""

from __future__ import annotations

__version__ = "0.0.0+fake"


class FakeMemoryPool:
    def __init__(self) -> None:
        self.limit = 0  # 0 = no limit, as in cupy
        self.calls: list[int] = []

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        if size is not None and fraction is not None:
            raise ValueError("size and fraction cannot be specified at one time")
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"size must be a non-negative integer: {size!r}")
            self.limit = size
        else:
            raise NotImplementedError("the fake pool knows no device total: give size")
        self.calls.append(self.limit)

    def get_limit(self) -> int:
        return self.limit


_pool = FakeMemoryPool()


def get_default_memory_pool() -> FakeMemoryPool:
    return _pool
