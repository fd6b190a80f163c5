"""The worker's gRPC server: `serve()` wires the generated Runtime service, its interceptor and the
health service to a `Worker`, listens, and runs until SIGTERM/SIGINT.

Where things live: `state.Worker` (devices, ledger, kernels, telemetry tick, events),
`servicer.RuntimeServicer` and `transfers` (the RPCs), `interceptor` (authentication, request
limits, error mapping), `isolation` (the isolation modes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import tf_remoting
from tf_remoting.framing import GRPC_MAX_MESSAGE
from tf_remoting.proto import SERVICE_NAME, pb, pb_grpc
from tf_remoting.quantities import format_bytes
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.hub_auth import HubAuth
from tf_remoting.worker.interceptor import RuntimeInterceptor
from tf_remoting.worker.servicer import RuntimeServicer
from tf_remoting.worker.state import Worker
from tf_remoting.worker.visibility import scrape_authorizer

__all__ = ["serve", "Worker"]

log = logging.getLogger("tf_remoting.worker")

# What a caller may send before the worker reads it: a fixed HTTP/2 receive window, without gRPC's
# bandwidth-delay probing. The probing grows the windows of every stream, the streams of callers the
# interceptor is about to refuse included, so 120 unauthenticated 15 MiB calls on one connection
# made the worker buffer up to 548 MiB of bodies it never read (12 to 548 MiB, depending on how busy
# it was). With a fixed 4 MiB window they make it buffer about 5 to 20 MiB, and an upload (PutFile)
# over a 10 ms round trip keeps about 0.9x the throughput of the probing windows
# (benchmarks/upload.py).
RECEIVE_WINDOW = 4 << 20
RECEIVE_WINDOW_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW)]


def _credentials(config: WorkerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = Path(config.tls_key).read_bytes()
    chain = Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def hub_auth(config: WorkerConfig) -> HubAuth | None:
    """The JupyterHub identity source of `--hub-api-url`, if one is set."""
    if not config.hub_api_url:
        return None
    return HubAuth(config.hub_api_url, config.hub_cache_seconds, config.hub_required_scope, config.hub_ca)


def build_server(worker: Worker) -> grpc.aio.Server:
    """The gRPC server of a worker: the generated Runtime service behind its interceptor.

    `grpc.max_receive_message_length` is one limit for all methods: GRPC_MAX_MESSAGE, what a
    Channels batch needs. The interceptor keeps unary requests to their own, smaller limits and
    never reads the body of an unauthenticated call; RECEIVE_WINDOW_OPTIONS bound what such a call
    can send before it is refused.
    """
    server = grpc.aio.server(
        interceptors=[RuntimeInterceptor(worker.tokens, worker.metrics, hub_auth(worker.config))],
        options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
            *RECEIVE_WINDOW_OPTIONS,
        ])
    pb_grpc.add_RuntimeServicer_to_server(RuntimeServicer(worker), server)
    return server


async def serve(config: WorkerConfig, address_file: str = "", stop: asyncio.Event | None = None) -> None:
    """Run the worker until SIGTERM/SIGINT (or `stop` is set). Kernels keep running after it."""
    worker = Worker(config)
    server = build_server(worker)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    creds = _credentials(config)
    listen = config.listen
    port = server.add_secure_port(listen, creds) if creds else server.add_insecure_port(listen)
    # Kernels reach their own worker over a unix socket in the (0700) state directory: it works
    # whatever TLS/mTLS the network address demands, and never leaves the host.
    worker.kernel_address = f"unix:{worker.state_dir / 'kernels.sock'}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(worker.state_dir / "kernels.sock")
    server.add_insecure_port(worker.kernel_address)
    worker.open_kernel_socket()
    if listen.startswith("unix:"):
        worker.address = listen
    else:
        host = listen.rsplit(":", 1)[0]
        worker.address = f"{host}:{port}"
    adopted = worker.adopt()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = None
    if config.metrics_port >= 0:
        metrics_port = worker.metrics.start_http(config.metrics_port, config.metrics_addr,
                                                 scrape_authorizer(worker.tokens.authenticate, worker.visibility))
    worker.start_background()
    for d in worker.devices:
        log.info("device %d: %s (%s, %s, modes %s, memory enforced by %s)", d.index, d.name, d.uuid,
                 format_bytes(d.vram_total), ",".join(d.modes), d.memory_enforcement)
    log.info("worker %s %s: backend %s, isolation %s, oversubscription %.2f, state %s",
             worker.worker_id, tf_remoting.__version__, worker.backend.name,
             "host" if worker.backend.name == "host" else config.isolation, config.oversubscription,
             worker.state_dir)
    log.info("listening on %s (%s)%s; re-adopted %d kernel(s)", worker.address,
             "TLS" + (" + client certificates" if config.tls_client_ca else "") if creds else "plaintext",
             f"; metrics on http://{config.metrics_addr}:{metrics_port}/metrics" if metrics_port else "",
             adopted)
    worker.started_event = worker.emit(pb.EVENT_KIND_WORKER_STARTED,
                                       f"worker {worker.worker_id} started; re-adopted {adopted} kernel(s)")
    if address_file:
        tmp = address_file + ".tmp"
        Path(tmp).write_text(worker.address)
        os.replace(tmp, address_file)

    stop = stop or worker.stop_event
    worker.stop_event = stop
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: kernels keep running and are re-adopted at the next start")
    await health_servicer.enter_graceful_shutdown()
    await worker.stop_background()
    await server.stop(grace=1.0)
    worker.close()
    worker.backend.close()
