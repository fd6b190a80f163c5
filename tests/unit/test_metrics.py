"""The worker's Prometheus metrics: names, values, series removal, the HTTP endpoint."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tf_remoting.devices import DeviceInfo, DeviceSample
from tf_remoting.worker.metrics import METRIC_NAMES, Metrics

GiB = 1024**3
GPU = DeviceInfo(uuid="GPU-1", name="NVIDIA H100", kind="gpu", index=0, vram_total=80 * GiB,
                 multiprocessors=132, modes=("soft", "exclusive"), memory_enforcement="framework")
HOST = DeviceInfo(uuid="host-a", name="host device (CPU/RAM, 2 cores)", kind="host", index=0,
                  vram_total=8 * GiB, multiprocessors=2, modes=("host",), memory_enforcement="watchdog")


def lease(lease_id: str, principal: str = "alice", device: str = "GPU-1") -> dict[str, Any]:
    return {"lease": lease_id, "principal": principal, "device": device, "vram_used": 1 * GiB,
            "vram_limit": 4 * GiB, "utilization": 12.5, "compute_limit": 25}


def values(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names_in(m: Metrics) -> set[str]:
    return {name for name, _ in values(m)}


def test_render_has_every_metric_name_with_the_prefix() -> None:
    m = Metrics(version="0.1.0", backend="nvml")
    m.update([GPU], [DeviceSample("GPU-1", 10 * GiB, 55.0)], {"GPU-1": (4 * GiB, 25)}, [lease("l1")], 1)
    m.rpc_error("Allocate", "RESOURCE_EXHAUSTED")
    m.event("lease_created")
    m.tick_error("reclaim")
    rendered = names_in(m)
    assert METRIC_NAMES <= rendered, METRIC_NAMES - rendered
    assert all(name.startswith("tf_vgpu_") for name in METRIC_NAMES | rendered)


def test_values_and_labels() -> None:
    m = Metrics(version="0.1.0", backend="nvml")
    m.update([GPU], [DeviceSample("GPU-1", 10 * GiB, 55.0)], {"GPU-1": (4 * GiB, 25)}, [lease("l1")], 3)
    m.rpc_error("Allocate", "RESOURCE_EXHAUSTED")
    m.rpc_error("Allocate", "RESOURCE_EXHAUSTED")
    m.event("lease_created")
    v = values(m)
    dev = (("device", "GPU-1"), ("kind", "gpu"), ("name", "NVIDIA H100"))
    les = (("device", "GPU-1"), ("lease", "l1"), ("principal", "alice"))
    assert v[("tf_vgpu_device_vram_total_bytes", dev)] == 80 * GiB
    assert v[("tf_vgpu_device_vram_used_bytes", dev)] == 10 * GiB
    assert v[("tf_vgpu_device_vram_leased_bytes", dev)] == 4 * GiB
    assert v[("tf_vgpu_device_compute_leased_percent", dev)] == 25
    assert v[("tf_vgpu_device_utilization_percent", dev)] == 55.0
    assert v[("tf_vgpu_lease_vram_used_bytes", les)] == 1 * GiB
    assert v[("tf_vgpu_lease_vram_limit_bytes", les)] == 4 * GiB
    assert v[("tf_vgpu_lease_utilization_percent", les)] == 12.5
    assert v[("tf_vgpu_lease_compute_limit_percent", les)] == 25
    assert v[("tf_vgpu_leases", ())] == 1
    assert v[("tf_vgpu_kernels", ())] == 3
    assert v[("tf_vgpu_rpc_errors_total", (("code", "RESOURCE_EXHAUSTED"), ("method", "Allocate")))] == 2
    assert v[("tf_vgpu_events_total", (("kind", "lease_created"),))] == 1
    assert v[("tf_vgpu_worker_info", (("backend", "nvml"), ("version", "0.1.0")))] == 1


def test_series_of_gone_leases_and_devices_are_removed() -> None:
    m = Metrics(version="0.1.0", backend="host")
    m.update([GPU, HOST], [], {}, [lease("l1"), lease("l2", "bob", "host-a")], 2)
    assert sum(1 for name, _ in values(m) if name == "tf_vgpu_lease_vram_used_bytes") == 2
    m.update([HOST], [], {}, [lease("l2", "bob", "host-a")], 1)
    v = values(m)
    lease_series = {labels for name, labels in v if name.startswith("tf_vgpu_lease_")}
    assert lease_series == {(("device", "host-a"), ("lease", "l2"), ("principal", "bob"))}
    device_series = {dict(labels)["device"] for name, labels in v if name.startswith("tf_vgpu_device_")}
    assert device_series == {"host-a"}
    assert v[("tf_vgpu_leases", ())] == 1
    m.update([GPU, HOST], [], {}, [lease("l3"), lease("l3", device="host-a")], 2)  # two slices
    assert values(m)[("tf_vgpu_leases", ())] == 1
    m.update([HOST], [], {}, [], 0)
    assert not any(name.startswith("tf_vgpu_lease_") for name, _ in values(m))


def test_own_registry_not_the_global_one() -> None:
    a, b = Metrics("1", "host"), Metrics("2", "host")  # would collide on one registry
    a.event("x")
    assert "tf_vgpu_events_total" not in {s.name for f in REGISTRY.collect() for s in f.samples}
    assert values(b).get(("tf_vgpu_events_total", (("kind", "x"),))) is None


def test_worker_info_defaults_and_replacement() -> None:
    import tf_remoting

    m = Metrics()
    info = (("backend", "unknown"), ("version", tf_remoting.__version__))
    assert values(m)[("tf_vgpu_worker_info", info)] == 1
    m.set_worker_info("9.9", "nvml")
    assert [labels for name, labels in values(m) if name == "tf_vgpu_worker_info"] == [
        (("backend", "nvml"), ("version", "9.9"))]


def test_http_endpoint_on_a_free_port() -> None:
    m = Metrics(version="0.1.0", backend="host")
    m.update([HOST], [DeviceSample("host-a", 1 * GiB, 5.0)], {}, [], 0)
    port = m.start_http(0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert "tf_vgpu_device_vram_total_bytes" in body and "tf_vgpu_worker_info" in body
    finally:
        m.stop_http()
    m.stop_http()


def test_series_that_go_and_come_back_are_served_again() -> None:
    # update() keeps each series' handle between calls; a removed series must not linger in it.
    m = Metrics(version="0.1.0", backend="nvml")
    les = (("device", "GPU-1"), ("lease", "l1"), ("principal", "alice"))
    dev = (("device", "GPU-1"), ("kind", "gpu"), ("name", "NVIDIA H100"))
    m.update([GPU], [DeviceSample("GPU-1", 10 * GiB, 55.0)], {"GPU-1": (4 * GiB, 25)}, [lease("l1")], 1)
    m.update([], [], {}, [], 0)
    assert ("tf_vgpu_lease_vram_used_bytes", les) not in values(m)
    assert ("tf_vgpu_device_vram_used_bytes", dev) not in values(m)
    again = {**lease("l1"), "vram_used": 3 * GiB}
    m.update([GPU], [DeviceSample("GPU-1", 11 * GiB, 5.0)], {"GPU-1": (4 * GiB, 25)}, [again], 1)
    v = values(m)
    assert v[("tf_vgpu_lease_vram_used_bytes", les)] == 3 * GiB
    assert v[("tf_vgpu_device_vram_used_bytes", dev)] == 11 * GiB
    m.update([GPU], [DeviceSample("GPU-1", 12 * GiB, 5.0)], {"GPU-1": (4 * GiB, 25)}, [{**again, "vram_used": 2}], 1)
    v = values(m)
    assert v[("tf_vgpu_lease_vram_used_bytes", les)] == 2
    assert v[("tf_vgpu_device_vram_used_bytes", dev)] == 12 * GiB
