"""The JSON the REST API and the event stream send (its shapes are tf_jupyter/openapi.yaml's).

Functions of the pool's pieces to plain dicts; nothing here changes state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tf_jupyter.placement import Request
from tf_jupyter.pool.kernels import KernelSlice
from tf_jupyter.pool.scheduling import Waiting
from tf_jupyter.pool.workers import WorkerState
from tf_jupyter.qos import qos_name
from tf_remoting.proto import enum_name, pb

__all__ = ["device_sample_json", "event_json", "kernel_json", "lease_sample_json", "pool_json", "queue_json",
           "quota_json"]


def _mode(value: int, unknown: str = "unknown") -> str:
    return enum_name(pb.IsolationMode, value) if value in pb.IsolationMode.values() and value else unknown


def _enforcement(value: int) -> str:
    return enum_name(pb.MemoryEnforcement, value)


# What a worker shows this server's principal of the leases on it (Inventory.view).
VIEWS = {pb.INVENTORY_VIEW_OWN: "own", pb.INVENTORY_VIEW_ALL: "all"}


def _kind(device: pb.Device) -> str:
    return "host" if device.kind == pb.DEVICE_KIND_HOST else "gpu"


def pool_json(workers: Mapping[str, WorkerState], policy: str) -> dict[str, Any]:
    """The workers as this server's principal sees them; queue_length: the entries (everyone's) in
    the lines of the workers up, what a new kernel that cannot start now would wait behind."""
    queue_length = sum(len(w.inventory.waiting) for w in workers.values() if w.up and w.inventory is not None)
    out = []
    for w in workers.values():
        inv = w.inventory
        devices = []
        for d in inv.devices if inv else []:
            sample = w.device_usage.get(d.uuid)
            devices.append({
                "uuid": d.uuid, "name": d.name, "index": d.index, "kind": _kind(d),
                "vram_total": d.vram_total, "vram_leased": d.vram_leased,
                "vram_used": sample.vram_used if sample else d.vram_used,
                "compute_capacity": d.compute_capacity, "compute_leased": d.compute_leased,
                "utilization": sample.utilization if sample else d.utilization,
                "modes": [_mode(m, "?") for m in d.modes],
                "memory_enforcement": _enforcement(d.memory_enforcement)})
        out.append({"address": w.address, "up": w.up, "error": w.error,
                    "worker_id": inv.worker_id if inv else "", "version": inv.version if inv else "",
                    "backend": inv.backend if inv else "", "devices": devices,
                    "leases": len(inv.leases) if inv else 0,
                    "view": VIEWS.get(inv.view, "unknown") if inv else "unknown", "viewer": inv.viewer if inv else "",
                    "quota": quota_json(inv.quota) if inv else None})
    return {"workers": out, "policy": policy, "queue_length": queue_length}


def quota_json(status: pb.QuotaStatus) -> dict[str, Any]:
    """The caller's quota on one worker and what it holds: per dimension {held, limit (None: no limit)}."""
    out: dict[str, Any] = {
        name: {"held": getattr(status.held, name),
               "limit": getattr(status.quota, name) if status.quota.HasField(name) else None}
        for name in ("vram", "compute", "kernels", "devices")}
    out["source"] = status.source
    return out


def kernel_json(k: KernelSlice, workers: Mapping[str, WorkerState]) -> dict[str, Any]:
    w = workers.get(k.worker)
    lease = None
    if w is not None and w.inventory is not None:
        lease = next((item for item in w.inventory.leases if item.id == k.lease_id), None)
    out: dict[str, Any] = {"kernel_id": k.kernel_id, "worker": k.worker, "lease_id": k.lease_id,
                           "profile": k.profile, "qos": k.qos, "started": k.started,
                           "worker_up": bool(w and w.up)}
    if w is not None and lease is not None and lease.slices:
        s = lease.slices[0]
        device = next((d for d in (w.inventory.devices if w.inventory else []) if d.uuid == s.device_uuid), None)
        sample = w.lease_usage.get(f"{lease.id}/{s.device_uuid}")
        out.update({
            "device": {"uuid": s.device_uuid, "name": device.name if device else "",
                       "kind": _kind(device) if device is not None else "gpu"},
            "slice": {"vram": s.vram, "compute": s.compute, "count": len(lease.slices)},
            "mode": _mode(lease.mode),
            "memory_enforcement": _enforcement(lease.memory_enforcement),
            "usage": {"vram_used": sample.vram_used if sample else s.vram_used,
                      "utilization": sample.utilization if sample else s.utilization},
            "shares_filesystem": w.inventory.shares_filesystem if w.inventory else False,
        })
    return out


def queue_json(workers: Mapping[str, WorkerState], waiting: Mapping[str, Waiting]) -> list[dict[str, Any]]:
    """This server's principal's requests in the workers' lines (Inventory.waiting, own entries), as
    the workers last said: one row per line a request waits in, with its place there and why.
    ``waiting`` (this server's requests) adds their labels and whole-device flag."""
    out = []
    for w in workers.values():
        for e in w.inventory.waiting if w.up and w.inventory is not None else []:
            if not e.own:
                continue
            mine = waiting.get(e.request_id)
            request = mine.request if mine is not None else Request(e.slice.vram, e.slice.compute, max(e.count, 1))
            out.append({"id": e.request_id, "worker": w.address, "position": e.position,
                        "reason": e.reason, "message": e.message,
                        "qos": qos_name(e.qos),
                        "profile": e.profile, "since": e.since, "labels": dict(mine.labels) if mine else {},
                        "request": {"vram": request.vram, "compute": request.compute,
                                    "count": request.count, "whole_device": request.whole_device},
                        "description": request.describe()})
    return sorted(out, key=lambda row: (row["since"], row["worker"]))


def device_sample_json(d: pb.DeviceSample) -> dict[str, Any]:
    return {"uuid": d.device_uuid, "vram_used": d.vram_used, "vram_total": d.vram_total,
            "vram_leased": d.vram_leased, "compute_leased": d.compute_leased, "utilization": d.utilization}


def lease_sample_json(s: pb.LeaseSample, kernel_id: str) -> dict[str, Any]:
    return {"lease_id": s.lease_id, "kernel_id": kernel_id, "device_uuid": s.device_uuid,
            "vram_used": s.vram_used, "vram_limit": s.vram_limit, "utilization": s.utilization,
            "compute_limit": s.compute_limit, "mode": _mode(s.mode)}


def event_json(worker: str, e: pb.Event, kernel_id: str) -> dict[str, Any]:
    return {"type": "event", "kind": enum_name(pb.EventKind, e.kind), "message": e.message,
            "lease_id": e.lease_id, "worker": worker, "time": e.time, "kernel_id": kernel_id, "source": "worker"}
