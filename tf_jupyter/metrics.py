"""Prometheus metrics of the Jupyter side, served by jupyter_server's own /metrics endpoint.

jupyter_server exposes prometheus_client's default registry at /metrics (token-authenticated
unless `c.ServerApp.authenticate_prometheus = False`); these gauges join it. The workers export
the device and lease metrics; the queue lives here, so its metrics do too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import Gauge

if TYPE_CHECKING:
    from tf_jupyter.pool import Pool

QUEUE_LENGTH = Gauge("tf_vgpu_queue_length", "vGPU kernels waiting for a slice in this Jupyter server's queue")
QUEUE_OLDEST_WAIT = Gauge("tf_vgpu_queue_oldest_wait_seconds",
                          "Seconds the longest-waiting queued vGPU kernel has waited (0 when none waits)")
WORKERS_UP = Gauge("tf_vgpu_pool_workers_up", "Workers of this Jupyter server's pool that answer")
WORKERS = Gauge("tf_vgpu_pool_workers", "Workers configured (or discovered) for this Jupyter server's pool")

JUPYTER_METRIC_NAMES = frozenset({"tf_vgpu_queue_length", "tf_vgpu_queue_oldest_wait_seconds",
                                  "tf_vgpu_pool_workers_up", "tf_vgpu_pool_workers"})


def update(pool: Pool) -> None:
    queue = pool.queue_json()
    QUEUE_LENGTH.set(len(queue))
    QUEUE_OLDEST_WAIT.set(max((time.time() - q["since"] for q in queue if q.get("since")), default=0.0))
    WORKERS.set(len(pool.workers))
    WORKERS_UP.set(sum(1 for w in pool.workers.values() if w.up))
