"""Protobuf messages built from the worker's plain records (ledger rows, device info, samples)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import grpc

from tf_remoting.devices.base import DeviceInfo
from tf_remoting.proto import ERROR_KIND_KEY, OVER_QUOTA, QUOTA_EXCEEDED_KEY, enum_value, pb
from tf_remoting.worker import isolation
from tf_remoting.worker.errors import RpcError
from tf_remoting.worker.leases import KernelRecord, LeaseRecord
from tf_remoting.worker.line_store import Served
from tf_remoting.worker.quotas import DIMENSIONS, OverQuota, Quota, Use
from tf_remoting.worker.waiting_line import describe_wait

if TYPE_CHECKING:
    from tf_remoting.worker.state import Worker


def lease_message(w: Worker, rec: LeaseRecord, with_kernels: bool = True) -> pb.Lease:
    """A lease with its slices' latest usage (and its kernels). Reads the ledger: call off the loop."""
    slices = []
    for s in rec.slices:
        usage = w.usage.get(f"{rec.id}/{s.device_uuid}")
        slices.append(pb.Slice(device_uuid=s.device_uuid, device_index=s.device_index, vram=s.vram,
                               compute=s.compute, vram_used=usage.vram_used if usage else 0,
                               utilization=usage.utilization if usage else 0.0))
    device = w.device_by_uuid.get(rec.slices[0].device_uuid) if rec.slices else None
    kernels = [kernel_message(w, k) for k in w.ledger.kernels(rec.id)] if with_kernels else []
    return pb.Lease(id=rec.id, principal=rec.principal, slices=slices, qos=cast(pb.Qos, rec.qos),
                    mode=cast(pb.IsolationMode, rec.mode),
                    memory_enforcement=isolation.enforcement(rec.mode, device), created_at=rec.created_at,
                    expires_at=rec.expires_at, ttl_seconds=rec.ttl_seconds, profile=rec.profile,
                    labels=rec.labels, kernels=kernels, last_active=w.last_active.get(rec.id, rec.created_at),
                    release_for=cast(pb.Qos, w.release_for.get(rec.id, pb.QOS_UNSPECIFIED)))


def kernel_message(w: Worker, rec: KernelRecord) -> pb.Kernel:
    try:
        status = enum_value(pb.KernelStatus, rec.status)
    except ValueError:
        status = pb.KERNEL_STATUS_UNSPECIFIED  # a status this version does not know
    return pb.Kernel(id=rec.id, lease_id=rec.lease_id, status=status,
                     pid=rec.pid, exit_code=rec.exit_code or 0, cwd=rec.cwd,
                     shares_filesystem=w.config.shares_filesystem, started_at=rec.started_at,
                     environment=rec.environment)


def device_message(w: Worker, d: DeviceInfo, leased: dict[str, tuple[int, int]]) -> pb.Device:
    sample = w.device_samples.get(d.uuid)
    vram_leased, compute_leased = leased.get(d.uuid, (0, 0))
    return pb.Device(
        uuid=d.uuid, name=d.name, kind=enum_value(pb.DeviceKind, d.kind),
        index=d.index, vram_total=d.vram_total, multiprocessors=d.multiprocessors,
        compute_capacity=int(round(100 * w.config.oversubscription)),
        modes=[m.value for m in isolation.MODES.values() if m.name in d.modes],
        memory_enforcement=isolation.device_enforcement(d),
        vram_leased=vram_leased, compute_leased=compute_leased,
        vram_used=sample.vram_used if sample else 0, utilization=sample.utilization if sample else 0.0)


def waiting_messages(served: Served, principal: str, everyone: bool) -> list[pb.WaitingEntry]:
    """The waiting line in order: the caller's own entries in full, other principals' only as
    position, QoS, size (whole device, model) and reason (no_room / quota / behind: whether freeing
    room can help it, which QoS release needs; ``everyone``: an admin sees all), as worker/visibility.py says."""
    out = []
    ordered = sorted(served.decision.waiting.items(), key=lambda item: item[1][0])
    for key, (position, reason, sentence) in ordered:
        req = served.requests[key]
        entry = pb.WaitingEntry(position=position, qos=cast(pb.Qos, req.qos),
                                slice=pb.SliceRequest(vram=req.vram, compute=req.compute), count=req.count,
                                own=req.principal == principal, reason=reason, whole_device=req.whole,
                                model=req.model)
        if entry.own or everyone:
            entry.request_id, entry.principal = req.request_id, req.principal
            entry.message, entry.since, entry.profile = describe_wait(reason, sentence), req.arrival, req.profile
        out.append(entry)
    return out


def quota_message(quota: Quota) -> pb.Quota:
    """A quota; a dimension without a limit is left unset."""
    return pb.Quota(**{d: v for d in DIMENSIONS if (v := getattr(quota, d)) is not None})


def use_message(use: Use) -> pb.QuotaUse:
    return pb.QuotaUse(**{d: getattr(use, d) for d in DIMENSIONS})


def quota_status_message(quota: Quota, held: Use) -> pb.QuotaStatus:
    return pb.QuotaStatus(quota=quota_message(quota), held=use_message(held), source=quota.source)


def quota_exceeded_message(over: OverQuota) -> pb.QuotaExceeded:
    return pb.QuotaExceeded(principal=over.principal, quota=quota_message(over.quota), held=use_message(over.held),
                            asked=use_message(over.asked), over=list(over.over), source=over.quota.source)


def over_quota(over: OverQuota) -> RpcError:
    """FAILED_PRECONDITION (not RESOURCE_EXHAUSTED, which means "no room") with the quota, what is
    held and what was asked, as a sentence and as a serialized `QuotaExceeded` in the trailers."""
    detail = quota_exceeded_message(over).SerializeToString()
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, over.sentence(),
                    ((ERROR_KIND_KEY, OVER_QUOTA), (QUOTA_EXCEEDED_KEY, detail)))
