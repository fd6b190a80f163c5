"""Prometheus metrics of one worker, on their own registry (never the process-global one)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from . import __version__
from .devices.base import DeviceInfo, DeviceSample

_DEVICE = ("device", "name", "kind")
_LEASE = ("lease", "principal", "device")

# Family names as they appear in the Prometheus text format (counters with their _total).
METRIC_NAMES: frozenset[str] = frozenset({
    "tf_vgpu_device_vram_total_bytes",
    "tf_vgpu_device_vram_used_bytes",
    "tf_vgpu_device_vram_leased_bytes",
    "tf_vgpu_device_compute_leased_percent",
    "tf_vgpu_device_utilization_percent",
    "tf_vgpu_lease_vram_used_bytes",
    "tf_vgpu_lease_vram_limit_bytes",
    "tf_vgpu_lease_utilization_percent",
    "tf_vgpu_lease_compute_limit_percent",
    "tf_vgpu_leases",
    "tf_vgpu_kernels",
    "tf_vgpu_rpc_errors_total",
    "tf_vgpu_events_total",
    "tf_vgpu_worker_info",
})


class Metrics:
    """The worker's gauges and counters; update() once per telemetry tick."""

    def __init__(self, version: str | None = None, backend: str = "unknown") -> None:
        """version defaults to tf_remoting.__version__; backend is the device backend's name."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.device_vram_total = Gauge("tf_vgpu_device_vram_total_bytes",
                                       "Device memory (host device: RAM), bytes", _DEVICE, registry=r)
        self.device_vram_used = Gauge("tf_vgpu_device_vram_used_bytes",
                                      "Device memory in use, all processes, bytes", _DEVICE, registry=r)
        self.device_vram_leased = Gauge("tf_vgpu_device_vram_leased_bytes",
                                        "Device memory promised to leases, bytes", _DEVICE, registry=r)
        self.device_compute_leased = Gauge("tf_vgpu_device_compute_leased_percent",
                                           "Compute promised to leases, percent of the device",
                                           _DEVICE, registry=r)
        self.device_utilization = Gauge("tf_vgpu_device_utilization_percent",
                                        "Device utilization, percent", _DEVICE, registry=r)
        self.lease_vram_used = Gauge("tf_vgpu_lease_vram_used_bytes",
                                     "Memory used by a lease's kernels, bytes", _LEASE, registry=r)
        self.lease_vram_limit = Gauge("tf_vgpu_lease_vram_limit_bytes",
                                      "A lease's memory limit, bytes", _LEASE, registry=r)
        self.lease_utilization = Gauge("tf_vgpu_lease_utilization_percent",
                                       "A lease's utilization, percent of its device", _LEASE, registry=r)
        self.lease_compute_limit = Gauge("tf_vgpu_lease_compute_limit_percent",
                                         "A lease's compute share, percent of its device", _LEASE, registry=r)
        self.leases = Gauge("tf_vgpu_leases", "Live leases", registry=r)
        self.kernels = Gauge("tf_vgpu_kernels", "Running kernels", registry=r)
        self.rpc_errors = Counter("tf_vgpu_rpc_errors", "RPCs answered with an error status",
                                  ("method", "code"), registry=r)
        self.events = Counter("tf_vgpu_events", "Events published, by kind", ("kind",), registry=r)
        self.worker_info = Gauge("tf_vgpu_worker_info", "Worker version and device backend (always 1)",
                                 ("version", "backend"), registry=r)
        self.set_worker_info(__version__ if version is None else version, backend)
        self._lock = threading.Lock()
        self._device_labels: set[tuple[str, str, str]] = set()
        self._lease_labels: set[tuple[str, str, str]] = set()
        # The labelled series of each device and lease, looked up once: Gauge.labels() costs more
        # than set() and update() runs every second for every lease.
        self._device_series: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._lease_series: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def update(self, devices: list[DeviceInfo], samples: list[DeviceSample],
               leased: dict[str, tuple[int, int]], leases: list[dict[str, Any]], kernels: int) -> None:
        """Set every gauge; series of devices and leases that are gone are removed.

        leased: device uuid -> (vram bytes leased, compute percent leased).
        leases: one dict per lease and device (a multi-device lease has several), with keys
        lease, principal, device, vram_used, vram_limit, utilization, compute_limit.
        """
        by_uuid = {s.uuid: s for s in samples}
        device_gauges = (self.device_vram_total, self.device_vram_used, self.device_vram_leased,
                         self.device_compute_leased, self.device_utilization)
        lease_gauges = (self.lease_vram_used, self.lease_vram_limit, self.lease_utilization,
                        self.lease_compute_limit)
        with self._lock:
            device_labels = set()
            for d in devices:
                labels = (d.uuid, d.name, d.kind)
                device_labels.add(labels)
                vram_leased, compute_leased = leased.get(d.uuid, (0, 0))
                total, leased_vram, leased_compute = self._series(
                    self._device_series, labels,
                    (self.device_vram_total, self.device_vram_leased, self.device_compute_leased))
                total.set(d.vram_total)
                leased_vram.set(vram_leased)
                leased_compute.set(compute_leased)
                sample = by_uuid.get(d.uuid)
                if sample is not None:
                    # Created only once sampled: a device without a sample has no usage series.
                    used, utilization = self._series(
                        self._device_series, (*labels, "sampled"), (self.device_vram_used, self.device_utilization))
                    used.set(sample.vram_used)
                    utilization.set(sample.utilization)
            gone = self._device_labels - device_labels
            self._remove(device_gauges, gone)
            for labels in gone:
                self._device_series.pop(labels, None)
                self._device_series.pop((*labels, "sampled"), None)
            self._device_labels = device_labels

            lease_labels = set()
            for lease in leases:
                labels = (str(lease["lease"]), str(lease["principal"]), str(lease["device"]))
                lease_labels.add(labels)
                used, limit, utilization, compute = self._series(self._lease_series, labels, lease_gauges)
                used.set(lease["vram_used"])
                limit.set(lease["vram_limit"])
                utilization.set(lease["utilization"])
                compute.set(lease["compute_limit"])
            gone = self._lease_labels - lease_labels
            self._remove(lease_gauges, gone)
            for labels in gone:
                self._lease_series.pop(labels, None)
            self._lease_labels = lease_labels

            self.leases.set(len({str(lease["lease"]) for lease in leases}))  # one row per slice
            self.kernels.set(kernels)

    @staticmethod
    def _series(cache: dict[tuple[str, ...], tuple[Any, ...]], key: tuple[str, ...],
                gauges: tuple[Gauge, ...]) -> tuple[Any, ...]:
        series = cache.get(key)
        if series is None:
            labels = key[:3]
            series = cache[key] = tuple(g.labels(*labels) for g in gauges)
        return series

    @staticmethod
    def _remove(gauges: tuple[Gauge, ...], gone: set[tuple[str, str, str]]) -> None:
        for labels in gone:
            for gauge in gauges:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass  # never set (e.g. a device that had no sample yet)

    def set_worker_info(self, version: str, backend: str) -> None:
        """Replace the single tf_vgpu_worker_info series."""
        self.worker_info.clear()
        self.worker_info.labels(version=version, backend=backend).set(1)

    def rpc_error(self, method: str, code: str) -> None:
        self.rpc_errors.labels(method=method, code=code).inc()

    def event(self, kind: str) -> None:
        self.events.labels(kind=kind).inc()

    def start_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on a daemon thread; port 0 picks a free port. Returns the bound port."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already being served")
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def stop_http(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
