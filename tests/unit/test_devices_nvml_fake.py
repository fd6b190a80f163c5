"""The NVML backend against tests/fakes/fake_pynvml.py (this machine has no NVIDIA driver).

The same paths against a real driver: tests/gpu/test_nvml_real.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))

from fake_pynvml import FakeNvml, GiB  # noqa: E402

from tf_remoting.devices import DeviceError, open_backend  # noqa: E402
from tf_remoting.devices.nvml import NvmlBackend  # noqa: E402
from tf_remoting.worker.telemetry import Sampler  # noqa: E402

GPU0, GPU1 = "GPU-fake-0000-0000", "GPU-fake-0000-0001"


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
def backend(fake: FakeNvml) -> Iterator[NvmlBackend]:
    b = NvmlBackend(fake, mps_probe=lambda: False, util_reuse_s=0.0)
    yield b
    b.close()


def test_inventory(backend: NvmlBackend) -> None:
    devices = backend.devices()
    assert [d.uuid for d in devices] == [GPU0, GPU1]
    assert [d.index for d in devices] == [0, 1]
    for d in devices:
        assert d.kind == "gpu"
        assert d.name == "FAKE NVIDIA A100-SXM4-40GB"
        assert d.vram_total == 40 * GiB
        assert d.multiprocessors == 108
        assert d.modes == ("soft", "exclusive")
        assert d.memory_enforcement == "framework"


def test_mps_mode_appears_when_the_daemon_runs(fake: FakeNvml) -> None:
    running = [False]
    b = NvmlBackend(fake, mps_probe=lambda: running[0])
    try:
        assert b.devices()[0].modes == ("soft", "exclusive")
        running[0] = True
        assert b.devices()[0].modes == ("soft", "mps", "exclusive")
    finally:
        b.close()


def test_sm_count_is_zero_where_attributes_are_unsupported(fake: FakeNvml) -> None:
    fake.gpus[1].attributes_supported = False
    b = NvmlBackend(fake, mps_probe=lambda: False)
    try:
        assert [d.multiprocessors for d in b.devices()] == [108, 0]
    finally:
        b.close()


def test_sample_devices(fake: FakeNvml, backend: NvmlBackend) -> None:
    fake.gpus[0].used, fake.gpus[0].util = 3 * GiB, 42
    samples = {s.uuid: s for s in backend.sample_devices()}
    assert samples[GPU0].vram_used == 3 * GiB and samples[GPU0].utilization == 42.0
    assert samples[GPU1].vram_used == 0 and samples[GPU1].utilization == 0.0


def test_memory_usage_counts_only_these_pids_on_this_device(fake: FakeNvml, backend: NvmlBackend) -> None:
    fake.set_process(0, 100, 1 * GiB)
    fake.set_process(0, 101, 2 * GiB)
    fake.set_process(0, 200, 5 * GiB)  # someone else's
    fake.set_process(0, 102, None)  # NVML could not tell (e.g. no permission)
    fake.set_process(1, 100, 7 * GiB)  # same pid, other GPU
    assert backend.usage(GPU0, {100, 101, 102}).vram_used == 3 * GiB
    assert backend.usage(GPU1, {100}).vram_used == 7 * GiB
    assert backend.usage(GPU0, {999}).vram_used == 0
    assert backend.usage(GPU0, set()).vram_used == 0


def test_utilization_reads_only_new_samples(fake: FakeNvml, backend: NvmlBackend) -> None:
    assert backend.usage(GPU0, {100}).utilization == 0.0  # NVML: not found (no samples yet)
    fake.add_util_sample(0, 100, 30, timestamp=1_000)
    fake.add_util_sample(0, 100, 50, timestamp=2_000)  # newer sample of the same pid wins
    fake.add_util_sample(0, 101, 20, timestamp=1_500)
    fake.add_util_sample(0, 300, 25, timestamp=1_500)  # not ours
    assert backend.usage(GPU0, {100, 101}).utilization == 70.0
    assert fake.util_queries[-1] == (0, 0)
    # The next query asks only for samples after the newest one seen.
    assert backend.usage(GPU0, {100, 101}).utilization == 0.0
    assert fake.util_queries[-1] == (0, 2_000)
    fake.add_util_sample(0, 101, 60, timestamp=3_000)
    assert backend.usage(GPU0, {100, 101}).utilization == 60.0
    assert fake.util_queries[-1] == (0, 2_000)
    # Timestamps are kept per device.
    assert backend.usage(GPU1, {100}).utilization == 0.0
    assert fake.util_queries[-1] == (1, 0)


def test_leases_sharing_a_device_in_one_tick_see_the_same_samples(fake: FakeNvml) -> None:
    b = NvmlBackend(fake, mps_probe=lambda: False, util_reuse_s=60.0)
    try:
        fake.add_util_sample(0, 100, 30, timestamp=1_000)
        fake.add_util_sample(0, 200, 40, timestamp=1_000)
        assert b.usage(GPU0, {100}).utilization == 30.0
        assert b.usage(GPU0, {200}).utilization == 40.0
        assert len(fake.util_queries) == 1
    finally:
        b.close()


def test_utilization_is_capped_at_the_whole_device(fake: FakeNvml, backend: NvmlBackend) -> None:
    for pid in range(100, 103):
        fake.add_util_sample(0, pid, 50, timestamp=1_000)
    assert backend.usage(GPU0, {100, 101, 102}).utilization == 100.0


def test_unknown_device_is_an_error(backend: NvmlBackend) -> None:
    with pytest.raises(DeviceError, match="no GPU 'GPU-nope'"):
        backend.usage("GPU-nope", {1})


def test_close_shuts_nvml_down_once(fake: FakeNvml) -> None:
    b = NvmlBackend(fake)
    assert fake.initialized == 1
    b.close()
    b.close()
    assert fake.initialized == 0


def test_open_backend_auto_prefers_nvml_when_a_driver_answers(fake: FakeNvml) -> None:
    b = open_backend("auto", nvml=fake)
    try:
        assert b.name == "nvml" and len(b.devices()) == 2
    finally:
        b.close()


@pytest.mark.parametrize("fake_driver", [FakeNvml(driver=False), FakeNvml(gpus=0)],
                         ids=["no-driver", "no-gpu"])
def test_open_backend_auto_falls_back_to_the_host(
    fake_driver: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tf_remoting.devices")
    b = open_backend("auto", nvml=fake_driver)
    try:
        assert b.name == "host"
    finally:
        b.close()
    assert "device backend: host, because NVML is not usable" in caplog.text
    assert fake_driver.initialized == 0  # a driver with no GPU was shut down again


def test_open_backend_nvml_without_a_driver_says_what_to_do() -> None:
    with pytest.raises(DeviceError, match=r"no NVIDIA driver answered .*use the host device"):
        open_backend("nvml", nvml=FakeNvml(driver=False))
    with pytest.raises(DeviceError, match="reports no GPU"):
        open_backend("nvml", nvml=FakeNvml(gpus=0))


def test_sampler_sums_a_lease_over_its_process_tree(fake: FakeNvml, backend: NvmlBackend) -> None:
    me = os.getpid()
    fake.set_process(1, me, 2 * GiB)
    fake.set_process(1, 1, 9 * GiB)  # init: not in anyone's lease
    fake.add_util_sample(1, me, 35, timestamp=10)
    devices, usage = Sampler(backend).sample([("lease-1", GPU1, {me}), ("lease-2", GPU0, set())])
    assert [d.uuid for d in devices] == [GPU0, GPU1]
    assert usage["lease-1"].vram_used == 2 * GiB and usage["lease-1"].utilization == 35.0
    assert usage["lease-2"].vram_used == 0
