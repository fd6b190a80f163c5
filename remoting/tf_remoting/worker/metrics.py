"""Prometheus metrics of one worker, on their own registry (never the process-global one).

The per-lease series (`tf_vgpu_lease_*`, labelled with lease id and principal) tell who runs what,
so the HTTP endpoint serves them only as the caller may see them (`visibility.py`): a scrape with no
`Authorization` header gets the device-level, count and counter series and no lease series; a
bearer token of the worker's token file gets its own principal's leases (a kernel token: its lease),
an admin's every lease. Kernels can reach the endpoint (it is on the host they run on), so what a
token-less scrape shows is what every notebook user may see. Prometheus scrapes with an admin token.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from tf_remoting import __version__
from tf_remoting.devices.base import DeviceInfo, DeviceSample

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
    "tf_vgpu_sampling_cpu_seconds_total",
    "tf_vgpu_tick_errors_total",
})


# The per-tick gauges: (name, help). Their samples are built when /metrics is scraped.
_DEVICE_GAUGES = (
    ("tf_vgpu_device_vram_total_bytes", "Device memory (host device: RAM), bytes"),
    ("tf_vgpu_device_vram_used_bytes", "Device memory in use, all processes, bytes"),
    ("tf_vgpu_device_vram_leased_bytes", "Device memory promised to leases, bytes"),
    ("tf_vgpu_device_compute_leased_percent", "Compute promised to leases, percent of the device"),
    ("tf_vgpu_device_utilization_percent", "Device utilization, percent"),
)
_LEASE_GAUGES = (
    ("tf_vgpu_lease_vram_used_bytes", "Memory used by a lease's kernels, bytes"),
    ("tf_vgpu_lease_vram_limit_bytes", "A lease's memory limit, bytes"),
    ("tf_vgpu_lease_utilization_percent", "A lease's utilization, percent of its device"),
    ("tf_vgpu_lease_compute_limit_percent", "A lease's compute share, percent of its device"),
)
_LEASE_KEYS = ("vram_used", "vram_limit", "utilization", "compute_limit")
LEASE_METRIC_NAMES = frozenset(n for n, _ in _LEASE_GAUGES)  # the series that name a lease and principal

# (principal, lease id) -> shown to this scrape; see visibility.py.
LeaseFilter = Callable[[str, str], bool]
# Authorization header (None: none sent) -> the scrape's lease filter; raises PermissionError with
# a sentence for a token the worker does not know.
ScrapeAuthorizer = Callable[[str | None], LeaseFilter]


class _Snapshot:
    """What the last update() said, kept as given: turned into samples only when scraped."""

    def __init__(self) -> None:
        self.devices: list[DeviceInfo] = []
        self.samples: dict[str, DeviceSample] = {}  # newest sample of each listed device
        self.leased: Mapping[str, tuple[int, int]] = {}
        self.leases: list[dict[str, Any]] = []
        self.kernels = 0


class _TickCollector:
    """The device, lease, lease-count and kernel-count gauges, from the newest snapshot.

    update() runs every second for every lease, while /metrics is scraped every 15 s or so (or
    never): building the labelled samples at scrape time instead of setting gauges at each update
    keeps the telemetry tick's share of the worker's CPU small.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        families = [GaugeMetricFamily(n, h, labels=_DEVICE) for n, h in _DEVICE_GAUGES]
        families += [GaugeMetricFamily(n, h, labels=_LEASE) for n, h in _LEASE_GAUGES]
        families.append(GaugeMetricFamily("tf_vgpu_leases", "Live leases"))
        families.append(GaugeMetricFamily("tf_vgpu_kernels", "Running kernels"))
        return families

    def collect(self) -> list[GaugeMetricFamily]:
        snap = self._metrics._snapshot  # replaced whole by update(), never changed in place
        total, used, leased_vram, leased_compute, utilization = (
            GaugeMetricFamily(n, h, labels=_DEVICE) for n, h in _DEVICE_GAUGES)
        for d in snap.devices:
            labels = [d.uuid, d.name, d.kind]
            vram_leased, compute_leased = snap.leased.get(d.uuid, (0, 0))
            total.add_metric(labels, d.vram_total)
            leased_vram.add_metric(labels, vram_leased)
            leased_compute.add_metric(labels, compute_leased)
            sample = snap.samples.get(d.uuid)
            if sample is not None:
                used.add_metric(labels, sample.vram_used)
                utilization.add_metric(labels, sample.utilization)
        lease_families = [GaugeMetricFamily(n, h, labels=_LEASE) for n, h in _LEASE_GAUGES]
        by_labels: dict[tuple[str, str, str], dict[str, Any]] = {}
        for lease in snap.leases:  # one row per lease and device; a repeated row: the last counts
            by_labels[(str(lease["lease"]), str(lease["principal"]), str(lease["device"]))] = lease
        for row, lease in by_labels.items():
            for family, key in zip(lease_families, _LEASE_KEYS, strict=True):
                family.add_metric(list(row), lease[key])
        leases = GaugeMetricFamily("tf_vgpu_leases", "Live leases",
                                   value=len({str(lease["lease"]) for lease in snap.leases}))
        kernels = GaugeMetricFamily("tf_vgpu_kernels", "Running kernels", value=snap.kernels)
        return [total, used, leased_vram, leased_compute, utilization, *lease_families, leases, kernels]


class Metrics:
    """The worker's gauges and counters; update() once per telemetry tick."""

    def __init__(self, version: str | None = None, backend: str = "unknown") -> None:
        """version defaults to tf_remoting.__version__; backend is the device backend's name."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        r.register(_TickCollector(self))
        self.rpc_errors = Counter("tf_vgpu_rpc_errors", "RPCs answered with an error status",
                                  ("method", "code"), registry=r)
        self.events = Counter("tf_vgpu_events", "Events published, by kind", ("kind",), registry=r)
        self.tick_errors = Counter("tf_vgpu_tick_errors", "Steps of a telemetry tick that failed and are "
                                   "retried at the next tick (reclaim, kernel_exit, sample, watchdog, ...)",
                                   ("step",), registry=r)
        self.sampling_cpu = Counter("tf_vgpu_sampling_cpu_seconds",
                                    "CPU time the worker spent on telemetry ticks (process and device sampling, "
                                    "ledger checks, watchdog, building Watch samples)", registry=r)
        self.worker_info = Gauge("tf_vgpu_worker_info", "Worker version and device backend (always 1)",
                                 ("version", "backend"), registry=r)
        self.set_worker_info(__version__ if version is None else version, backend)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def update(self, devices: list[DeviceInfo], samples: list[DeviceSample],
               leased: Mapping[str, tuple[int, int]], leases: list[dict[str, Any]], kernels: int) -> None:
        """Replace the figures; series of devices and leases no longer listed are no longer served.

        leased: device uuid -> (vram bytes leased, compute percent leased).
        leases: one dict per lease and device (a multi-device lease has several), with keys
        lease, principal, device, vram_used, vram_limit, utilization, compute_limit.
        ``leased`` and ``leases`` are kept, not copied: pass new ones each time.
        """
        with self._lock:
            old = self._snapshot
            snap = _Snapshot()
            snap.devices = list(devices)
            listed = {d.uuid for d in devices}
            # A device keeps its last usage sample while it is listed (one sample may miss it).
            snap.samples = {uuid: s for uuid, s in old.samples.items() if uuid in listed}
            for s in samples:
                if s.uuid in listed:
                    snap.samples[s.uuid] = s
            snap.leased = leased
            snap.leases = leases
            snap.kernels = kernels
            self._snapshot = snap

    def set_worker_info(self, version: str, backend: str) -> None:
        """Replace the single tf_vgpu_worker_info series."""
        self.worker_info.clear()
        self.worker_info.labels(version=version, backend=backend).set(1)

    def rpc_error(self, method: str, code: str) -> None:
        self.rpc_errors.labels(method=method, code=code).inc()

    def tick_error(self, step: str) -> None:
        self.tick_errors.labels(step=step).inc()

    def event(self, kind: str) -> None:
        self.events.labels(kind=kind).inc()

    def start_http(self, port: int, addr: str = "127.0.0.1", authorize: ScrapeAuthorizer | None = None) -> int:
        """Serve /metrics on a daemon thread; port 0 picks a free port. Returns the bound port.

        authorize decides which lease series each scrape gets (see the module's docstring); None
        serves every series to everyone (tests, a registry without callers)."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already being served")
        server_class = _Server6 if ":" in addr else _Server
        server = make_server(addr, port, self._wsgi_app(authorize), server_class, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def _wsgi_app(self, authorize: ScrapeAuthorizer | None) -> Callable[..., Iterable[bytes]]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"not found: the worker serves /metrics\n"]
            try:
                shown = authorize(environ.get("HTTP_AUTHORIZATION")) if authorize else None
            except PermissionError as exc:
                start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                    ("WWW-Authenticate", "Bearer")])
                return [f"{exc}\n".encode()]
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [self.render(shown)]
        return app

    def stop_http(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def render(self, shown: LeaseFilter | None = None) -> bytes:
        """The registry in the Prometheus text format; with `shown`, only the lease series it keeps."""
        if shown is None:
            return generate_latest(self.registry)
        return generate_latest(_Filtered(self.registry, shown))


class _Filtered:
    """A registry's families with the lease series a scrape may not see left out."""

    def __init__(self, registry: CollectorRegistry, shown: LeaseFilter) -> None:
        self._registry, self._shown = registry, shown

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():  # fresh family objects at every collect
            if family.name in LEASE_METRIC_NAMES:
                family.samples = [s for s in family.samples if self._shown(s.labels["principal"], s.labels["lease"])]
            yield family


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s would flood the log
        pass
