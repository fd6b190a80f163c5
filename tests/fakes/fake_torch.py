"""A FAKE `torch` for tests on machines without an NVIDIA GPU. Not PyTorch: no CUDA is touched.

Only the `torch.cuda` calls the soft caps make (remoting/tf_remoting/kernel/caps.py), with the
behaviour they rely on: `_lazy_call` queues a callable until CUDA initialises (`init()`, which the
first CUDA allocation does in real torch) and runs it at once afterwards, and
`set_per_process_memory_fraction` checks its arguments as torch does. What was set is kept in
`cuda.fractions` (device index -> fraction). The real path: tests/gpu/test_soft_cap_torch.py.

Load a fresh copy per test (it is also copied in as `torch.py` to go through the import hook).
"""

from __future__ import annotations

from collections.abc import Callable

__version__ = "0.0.0+fake"


class _FakeCuda:
    def __init__(self, devices: int = 2) -> None:
        self.devices = devices
        self.initialized = False
        self.queued: list[Callable[[], None]] = []
        self.fractions: dict[int, float] = {}
        self.calls: list[tuple[float, int]] = []  # every set_per_process_memory_fraction, in order

    def is_available(self) -> bool:
        return self.devices > 0

    def device_count(self) -> int:
        return self.devices

    def is_initialized(self) -> bool:
        return self.initialized

    def _lazy_call(self, callable: Callable[[], None]) -> None:
        if self.initialized:
            callable()
        else:
            self.queued.append(callable)

    def init(self) -> None:
        if self.initialized:
            return
        self.initialized = True
        queued, self.queued = self.queued, []
        for callable in queued:
            callable()

    def set_per_process_memory_fraction(self, fraction: float, device: int | None = None) -> None:
        self.init()  # as in torch: setting a fraction initialises CUDA
        index = 0 if device is None else device
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if not 0 <= fraction <= 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        if not 0 <= index < self.devices:
            raise RuntimeError(f"Invalid device ordinal {index} (fake torch has {self.devices} devices)")
        self.fractions[index] = fraction
        self.calls.append((fraction, index))


cuda = _FakeCuda()
