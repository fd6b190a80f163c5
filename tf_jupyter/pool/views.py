"""The JSON the REST API and the event stream send (its shapes are tf_jupyter/openapi.yaml's).

Functions of the pool's pieces to plain dicts; nothing here changes state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tf_jupyter.placement import Request
from tf_jupyter.pool.kernels import KERNEL_LABEL, Kernels, KernelSlice
from tf_jupyter.pool.scheduling import Waiting
from tf_jupyter.pool.workers import WorkerState
from tf_jupyter.qos import qos_name
from tf_remoting.proto import WAIT_BEHIND, WAIT_QUOTA, enum_name, pb
from tf_remoting.quantities import format_bytes

__all__ = ["admin_json", "device_sample_json", "event_json", "is_admin", "kernel_json", "lease_sample_json",
           "pool_json", "queue_json", "quota_json", "wait_hint"]


def _mode(value: int, unknown: str = "unknown") -> str:
    return enum_name(pb.IsolationMode, value) if value in pb.IsolationMode.values() and value else unknown


def _enforcement(value: int) -> str:
    return enum_name(pb.MemoryEnforcement, value)


# What a worker shows this server's principal of the leases on it (Inventory.view).
VIEWS = {pb.INVENTORY_VIEW_OWN: "own", pb.INVENTORY_VIEW_ALL: "all"}


def _kind(device: pb.Device) -> str:
    return "host" if device.kind == pb.DEVICE_KIND_HOST else "gpu"


def is_admin(w: WorkerState) -> bool:
    """Whether the worker shows this server's principal every principal's leases (an admin there)."""
    return w.up and w.inventory is not None and w.inventory.view == pb.INVENTORY_VIEW_ALL


def lease_label(lease: pb.Lease, kernel_id: str = "") -> str:
    """A name for a lease a person recognises: its notebook, else its profile and kernel."""
    if lease.labels.get("notebook"):
        return lease.labels["notebook"]
    kernel = kernel_id or lease.labels.get(KERNEL_LABEL, "") or (lease.kernels[0].id if lease.kernels else "")
    what = f"{lease.profile} kernel" if lease.profile else "kernel"
    return f"{what} {kernel[:8]}" if kernel else f"lease {lease.id[:8]}"


def device_slices(w: WorkerState, d: pb.Device, kernels: Kernels) -> list[dict[str, Any]]:
    """The slices of one device for the GPU map: this server's principal's leases one each (named);
    as an admin every lease with its principal; else all other principals' leased share as one
    anonymous slice (the worker shows no more of them)."""
    inv = w.inventory
    if inv is None:
        return []
    everyone = inv.view == pb.INVENTORY_VIEW_ALL
    out: list[dict[str, Any]] = []
    own_vram = own_compute = 0
    for lease in inv.leases:
        own = lease.principal == inv.viewer or not everyone
        for s in lease.slices:
            if s.device_uuid != d.uuid:
                continue
            k = kernels.holding(w.address, lease.id) if own else None
            out.append({"vram": s.vram, "compute": s.compute, "own": own, "kernel_id": k.kernel_id if k else "",
                        "label": lease_label(lease, k.kernel_id if k else "") if own or everyone else "",
                        "principal": lease.principal if everyone else ""})
            if own:
                own_vram, own_compute = own_vram + s.vram, own_compute + s.compute
    if not everyone and d.vram_leased > own_vram:
        out.append({"vram": d.vram_leased - own_vram, "compute": max(0, d.compute_leased - own_compute),
                    "own": False, "kernel_id": "", "label": "", "principal": ""})
    return out


def device_json(w: WorkerState, d: pb.Device, kernels: Kernels) -> dict[str, Any]:
    sample = w.device_usage.get(d.uuid)
    return {
        "uuid": d.uuid, "name": d.name, "index": d.index, "kind": _kind(d),
        "vram_total": d.vram_total, "vram_leased": d.vram_leased,
        "vram_used": sample.vram_used if sample else d.vram_used,
        "compute_capacity": d.compute_capacity, "compute_leased": d.compute_leased,
        "utilization": sample.utilization if sample else d.utilization,
        "modes": [_mode(m, "?") for m in d.modes],
        "memory_enforcement": _enforcement(d.memory_enforcement),
        "slices": device_slices(w, d, kernels)}


def pool_json(workers: Mapping[str, WorkerState], policy: str, kernels: Kernels | None = None) -> dict[str, Any]:
    """The workers as this server's principal sees them; queue_length: the entries (everyone's) in
    the lines of the workers up, what a new kernel that cannot start now would wait behind; admin:
    whether some worker up shows this principal everyone's leases."""
    kernels = kernels if kernels is not None else Kernels()
    queue_length = sum(len(w.inventory.waiting) for w in workers.values() if w.up and w.inventory is not None)
    out = []
    for w in workers.values():
        inv = w.inventory
        devices = [device_json(w, d, kernels) for d in (inv.devices if inv else [])]
        out.append({"address": w.address, "up": w.up, "error": w.error,
                    "worker_id": inv.worker_id if inv else "", "version": inv.version if inv else "",
                    "backend": inv.backend if inv else "", "devices": devices,
                    "leases": len(inv.leases) if inv else 0,
                    "view": VIEWS.get(inv.view, "unknown") if inv else "unknown", "viewer": inv.viewer if inv else "",
                    "quota": quota_json(inv.quota) if inv else None})
    return {"workers": out, "policy": policy, "queue_length": queue_length,
            "admin": any(is_admin(w) for w in workers.values())}


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


def wait_hint(reason: str, request: Request, position: int, quota: pb.QuotaStatus | None = None) -> str:
    """What would let a waiting request start, one sentence for its owner."""
    ahead = position - 1
    if reason == WAIT_QUOTA:
        held = _quota_held(request, quota) if quota is not None else ""
        return (f"Ending one of your kernels on this GPU host{held} lets it start; or ask the administrator for "
                "a larger quota.")
    if reason == WAIT_BEHIND:
        return ("It fits, but only where a request ahead of it waits; it starts when that one is served or room "
                "frees on another GPU.")
    room = "a GPU has no slice on it" if request.whole_device else \
        f"{format_bytes(request.vram)} and {request.compute} % are free on one GPU"
    queue = f"; {ahead} request{'' if ahead == 1 else 's'} ahead of it" if ahead > 0 else ""
    return f"It starts when {room}{queue}."


def _quota_held(request: Request, quota: pb.QuotaStatus) -> str:
    """' (you hold X of your X <dimension> quota there)' for the dimension the request would pass
    (else the first one that is full); '' when the worker said no limit that explains the wait."""
    asked = {"vram": request.vram * request.count, "compute": request.compute * request.count, "kernels": 1,
             "devices": request.count if request.whole_device else 0}
    limited = [d for d in ("vram", "compute", "kernels", "devices") if quota.quota.HasField(d)]
    over = [d for d in limited if getattr(quota.held, d) + asked[d] > getattr(quota.quota, d)]
    full = [d for d in limited if getattr(quota.held, d) >= getattr(quota.quota, d)]
    if not over and not full:
        return ""
    d = (over or full)[0]
    held, limit = getattr(quota.held, d), getattr(quota.quota, d)

    def text(v: int) -> str:
        return format_bytes(v) if d == "vram" else f"{v} %" if d == "compute" else str(v)

    noun = {"vram": "VRAM", "compute": "compute", "kernels": "kernel", "devices": "whole-device"}[d]
    return f" (you hold {text(held)} of your {text(limit)} {noun} quota there)"


def queue_json(workers: Mapping[str, WorkerState], waiting: Mapping[str, Waiting]) -> list[dict[str, Any]]:
    """This server's principal's requests in the workers' lines (Inventory.waiting, own entries), as
    the workers last said: one row per line a request waits in, with its place there, why, and what
    would let it start. ``waiting`` (this server's requests) adds their labels and whole-device flag."""
    out = []
    for w in workers.values():
        inv = w.inventory
        for e in inv.waiting if w.up and inv is not None else []:
            if not e.own:
                continue
            mine = waiting.get(e.request_id)
            request = mine.request if mine is not None else Request(e.slice.vram, e.slice.compute, max(e.count, 1),
                                                                    whole_device=e.whole_device)
            labels = dict(mine.labels) if mine else {}
            out.append({"id": e.request_id, "worker": w.address, "position": e.position,
                        "reason": e.reason, "message": e.message,
                        "qos": qos_name(e.qos),
                        "profile": e.profile, "since": e.since, "labels": labels,
                        "request": {"vram": request.vram, "compute": request.compute,
                                    "count": request.count, "whole_device": request.whole_device},
                        "description": request.describe(),
                        "notebook": labels.get("notebook", ""),
                        "hint": wait_hint(e.reason, request, e.position, inv.quota if inv is not None else None)})
    return sorted(out, key=lambda row: (row["since"], row["worker"]))


IDLE_SHOWN_S = 60.0  # the admin view lists leases idle at least this long


def admin_json(workers: Mapping[str, WorkerState], kernels: Kernels, now: float) -> dict[str, Any]:
    """The pool as an admin sees it, from the workers that show this server's principal everyone's
    leases: every device with every slice, per-user use (summed over those workers), leases idle for
    a minute or more (most idle first), and every principal's waiting requests."""
    admin_workers = [w for w in workers.values() if is_admin(w)]
    users: dict[str, dict[str, Any]] = {}
    idle: list[dict[str, Any]] = []
    queue: list[dict[str, Any]] = []
    for w in admin_workers:
        inv = w.inventory
        assert inv is not None
        for lease in inv.leases:
            vram = sum(s.vram for s in lease.slices)
            compute = sum(s.compute for s in lease.slices)
            use = users.setdefault(lease.principal, {"principal": lease.principal, "vram": 0, "compute": 0,
                                                     "kernels": 0, "devices": 0})
            use["vram"] += vram
            use["compute"] += compute
            use["kernels"] += sum(1 for k in lease.kernels if k.status != pb.KERNEL_STATUS_EXITED)
            if lease.mode == pb.ISOLATION_MODE_EXCLUSIVE:
                use["devices"] += len(lease.slices)
            idle_s = max(0.0, now - (lease.last_active or lease.created_at))
            if idle_s >= IDLE_SHOWN_S:
                k = kernels.holding(w.address, lease.id)
                item = {"worker": w.address, "lease_id": lease.id, "principal": lease.principal,
                        "label": lease_label(lease, k.kernel_id if k else ""), "vram": vram,
                        "compute": compute, "idle_s": idle_s, "qos": qos_name(lease.qos)}
                if lease.release_for != pb.QOS_UNSPECIFIED:  # QoS release: a waiting request needs its room
                    item["release_for"] = qos_name(lease.release_for)
                idle.append(item)
        for e in inv.waiting:
            queue.append({"worker": w.address, "id": e.request_id, "principal": e.principal,
                          "position": e.position, "reason": e.reason, "message": e.message,
                          "qos": qos_name(e.qos), "since": e.since, "profile": e.profile,
                          "request": {"vram": e.slice.vram, "compute": e.slice.compute, "count": max(1, e.count),
                                      "whole_device": e.whole_device}})
    return {
        "workers": [{"address": w.address, "up": w.up, "error": w.error,
                     "devices": [device_json(w, d, kernels) for d in (w.inventory.devices if w.inventory else [])]}
                    for w in admin_workers],
        "users": sorted(users.values(), key=lambda u: (-u["vram"], u["principal"])),
        "idle": sorted(idle, key=lambda i: (-i["idle_s"], i["lease_id"])),
        "queue": sorted(queue, key=lambda q: (q["worker"], q["position"])),
    }


def device_sample_json(d: pb.DeviceSample) -> dict[str, Any]:
    return {"uuid": d.device_uuid, "vram_used": d.vram_used, "vram_total": d.vram_total,
            "vram_leased": d.vram_leased, "compute_leased": d.compute_leased, "utilization": d.utilization}


def lease_sample_json(s: pb.LeaseSample, kernel_id: str) -> dict[str, Any]:
    return {"lease_id": s.lease_id, "kernel_id": kernel_id, "device_uuid": s.device_uuid,
            "vram_used": s.vram_used, "vram_limit": s.vram_limit, "utilization": s.utilization,
            "compute_limit": s.compute_limit, "mode": _mode(s.mode)}


def event_json(worker: str, e: pb.Event, kernel_id: str) -> dict[str, Any]:
    out = {"type": "event", "kind": enum_name(pb.EventKind, e.kind), "message": e.message,
           "lease_id": e.lease_id, "worker": worker, "time": e.time, "kernel_id": kernel_id, "source": "worker"}
    if e.by:
        out["by"] = e.by
    return out
