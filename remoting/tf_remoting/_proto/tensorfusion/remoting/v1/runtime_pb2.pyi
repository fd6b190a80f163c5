from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_KIND_UNSPECIFIED: _ClassVar[DeviceKind]
    DEVICE_KIND_GPU: _ClassVar[DeviceKind]
    DEVICE_KIND_HOST: _ClassVar[DeviceKind]

class IsolationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISOLATION_MODE_UNSPECIFIED: _ClassVar[IsolationMode]
    ISOLATION_MODE_SOFT: _ClassVar[IsolationMode]
    ISOLATION_MODE_MPS: _ClassVar[IsolationMode]
    ISOLATION_MODE_EXCLUSIVE: _ClassVar[IsolationMode]
    ISOLATION_MODE_HOST: _ClassVar[IsolationMode]

class MemoryEnforcement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMORY_ENFORCEMENT_UNSPECIFIED: _ClassVar[MemoryEnforcement]
    MEMORY_ENFORCEMENT_WATCHDOG: _ClassVar[MemoryEnforcement]
    MEMORY_ENFORCEMENT_CGROUP: _ClassVar[MemoryEnforcement]
    MEMORY_ENFORCEMENT_FRAMEWORK: _ClassVar[MemoryEnforcement]
    MEMORY_ENFORCEMENT_MPS: _ClassVar[MemoryEnforcement]

class InventoryView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVENTORY_VIEW_UNSPECIFIED: _ClassVar[InventoryView]
    INVENTORY_VIEW_OWN: _ClassVar[InventoryView]
    INVENTORY_VIEW_ALL: _ClassVar[InventoryView]

class Qos(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QOS_UNSPECIFIED: _ClassVar[Qos]
    QOS_LOW: _ClassVar[Qos]
    QOS_MEDIUM: _ClassVar[Qos]
    QOS_HIGH: _ClassVar[Qos]
    QOS_CRITICAL: _ClassVar[Qos]

class KernelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KERNEL_STATUS_UNSPECIFIED: _ClassVar[KernelStatus]
    KERNEL_STATUS_STARTING: _ClassVar[KernelStatus]
    KERNEL_STATUS_RUNNING: _ClassVar[KernelStatus]
    KERNEL_STATUS_EXITED: _ClassVar[KernelStatus]

class Signal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_UNSPECIFIED: _ClassVar[Signal]
    SIGNAL_INTERRUPT: _ClassVar[Signal]
    SIGNAL_TERMINATE: _ClassVar[Signal]
    SIGNAL_KILL: _ClassVar[Signal]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_SHELL: _ClassVar[Channel]
    CHANNEL_CONTROL: _ClassVar[Channel]
    CHANNEL_STDIN: _ClassVar[Channel]
    CHANNEL_IOPUB: _ClassVar[Channel]
    CHANNEL_HB: _ClassVar[Channel]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_LIMIT_WARNING: _ClassVar[EventKind]
    EVENT_KIND_WATCHDOG_INTERRUPT: _ClassVar[EventKind]
    EVENT_KIND_WATCHDOG_KILL: _ClassVar[EventKind]
    EVENT_KIND_LEASE_EXPIRED: _ClassVar[EventKind]
    EVENT_KIND_KERNEL_EXITED: _ClassVar[EventKind]
    EVENT_KIND_WORKER_STARTED: _ClassVar[EventKind]
    EVENT_KIND_LEASE_CREATED: _ClassVar[EventKind]
    EVENT_KIND_LEASE_RELEASED: _ClassVar[EventKind]
    EVENT_KIND_LEASE_RESIZED: _ClassVar[EventKind]
    EVENT_KIND_KERNEL_STARTED: _ClassVar[EventKind]
    EVENT_KIND_REQUEST_QUEUED: _ClassVar[EventKind]
    EVENT_KIND_REQUEST_GRANTED: _ClassVar[EventKind]
    EVENT_KIND_REQUEST_DROPPED: _ClassVar[EventKind]

class TransferDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_DIRECTION_UNSPECIFIED: _ClassVar[TransferDirection]
    TRANSFER_TO_KERNEL: _ClassVar[TransferDirection]
    TRANSFER_FROM_KERNEL: _ClassVar[TransferDirection]
DEVICE_KIND_UNSPECIFIED: DeviceKind
DEVICE_KIND_GPU: DeviceKind
DEVICE_KIND_HOST: DeviceKind
ISOLATION_MODE_UNSPECIFIED: IsolationMode
ISOLATION_MODE_SOFT: IsolationMode
ISOLATION_MODE_MPS: IsolationMode
ISOLATION_MODE_EXCLUSIVE: IsolationMode
ISOLATION_MODE_HOST: IsolationMode
MEMORY_ENFORCEMENT_UNSPECIFIED: MemoryEnforcement
MEMORY_ENFORCEMENT_WATCHDOG: MemoryEnforcement
MEMORY_ENFORCEMENT_CGROUP: MemoryEnforcement
MEMORY_ENFORCEMENT_FRAMEWORK: MemoryEnforcement
MEMORY_ENFORCEMENT_MPS: MemoryEnforcement
INVENTORY_VIEW_UNSPECIFIED: InventoryView
INVENTORY_VIEW_OWN: InventoryView
INVENTORY_VIEW_ALL: InventoryView
QOS_UNSPECIFIED: Qos
QOS_LOW: Qos
QOS_MEDIUM: Qos
QOS_HIGH: Qos
QOS_CRITICAL: Qos
KERNEL_STATUS_UNSPECIFIED: KernelStatus
KERNEL_STATUS_STARTING: KernelStatus
KERNEL_STATUS_RUNNING: KernelStatus
KERNEL_STATUS_EXITED: KernelStatus
SIGNAL_UNSPECIFIED: Signal
SIGNAL_INTERRUPT: Signal
SIGNAL_TERMINATE: Signal
SIGNAL_KILL: Signal
CHANNEL_UNSPECIFIED: Channel
CHANNEL_SHELL: Channel
CHANNEL_CONTROL: Channel
CHANNEL_STDIN: Channel
CHANNEL_IOPUB: Channel
CHANNEL_HB: Channel
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_LIMIT_WARNING: EventKind
EVENT_KIND_WATCHDOG_INTERRUPT: EventKind
EVENT_KIND_WATCHDOG_KILL: EventKind
EVENT_KIND_LEASE_EXPIRED: EventKind
EVENT_KIND_KERNEL_EXITED: EventKind
EVENT_KIND_WORKER_STARTED: EventKind
EVENT_KIND_LEASE_CREATED: EventKind
EVENT_KIND_LEASE_RELEASED: EventKind
EVENT_KIND_LEASE_RESIZED: EventKind
EVENT_KIND_KERNEL_STARTED: EventKind
EVENT_KIND_REQUEST_QUEUED: EventKind
EVENT_KIND_REQUEST_GRANTED: EventKind
EVENT_KIND_REQUEST_DROPPED: EventKind
TRANSFER_DIRECTION_UNSPECIFIED: TransferDirection
TRANSFER_TO_KERNEL: TransferDirection
TRANSFER_FROM_KERNEL: TransferDirection

class Device(_message.Message):
    __slots__ = ("uuid", "name", "kind", "index", "vram_total", "multiprocessors", "compute_capacity", "modes", "memory_enforcement", "vram_leased", "compute_leased", "vram_used", "utilization")
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VRAM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MULTIPROCESSORS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    VRAM_LEASED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_LEASED_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    name: str
    kind: DeviceKind
    index: int
    vram_total: int
    multiprocessors: int
    compute_capacity: int
    modes: _containers.RepeatedScalarFieldContainer[IsolationMode]
    memory_enforcement: MemoryEnforcement
    vram_leased: int
    compute_leased: int
    vram_used: int
    utilization: float
    def __init__(self, uuid: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[DeviceKind, str]] = ..., index: _Optional[int] = ..., vram_total: _Optional[int] = ..., multiprocessors: _Optional[int] = ..., compute_capacity: _Optional[int] = ..., modes: _Optional[_Iterable[_Union[IsolationMode, str]]] = ..., memory_enforcement: _Optional[_Union[MemoryEnforcement, str]] = ..., vram_leased: _Optional[int] = ..., compute_leased: _Optional[int] = ..., vram_used: _Optional[int] = ..., utilization: _Optional[float] = ...) -> None: ...

class GetInventoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("worker_id", "version", "backend", "default_mode", "oversubscription", "devices", "leases", "sample_interval_ms", "shares_filesystem", "view", "viewer", "waiting", "quota")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    OVERSUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VIEWER_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    version: str
    backend: str
    default_mode: IsolationMode
    oversubscription: float
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    sample_interval_ms: int
    shares_filesystem: bool
    view: InventoryView
    viewer: str
    waiting: _containers.RepeatedCompositeFieldContainer[WaitingEntry]
    quota: QuotaStatus
    def __init__(self, worker_id: _Optional[str] = ..., version: _Optional[str] = ..., backend: _Optional[str] = ..., default_mode: _Optional[_Union[IsolationMode, str]] = ..., oversubscription: _Optional[float] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., sample_interval_ms: _Optional[int] = ..., shares_filesystem: _Optional[bool] = ..., view: _Optional[_Union[InventoryView, str]] = ..., viewer: _Optional[str] = ..., waiting: _Optional[_Iterable[_Union[WaitingEntry, _Mapping]]] = ..., quota: _Optional[_Union[QuotaStatus, _Mapping]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("vram", "compute", "kernels", "devices")
    VRAM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    vram: int
    compute: int
    kernels: int
    devices: int
    def __init__(self, vram: _Optional[int] = ..., compute: _Optional[int] = ..., kernels: _Optional[int] = ..., devices: _Optional[int] = ...) -> None: ...

class QuotaUse(_message.Message):
    __slots__ = ("vram", "compute", "kernels", "devices")
    VRAM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    vram: int
    compute: int
    kernels: int
    devices: int
    def __init__(self, vram: _Optional[int] = ..., compute: _Optional[int] = ..., kernels: _Optional[int] = ..., devices: _Optional[int] = ...) -> None: ...

class QuotaStatus(_message.Message):
    __slots__ = ("quota", "held", "source")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    quota: Quota
    held: QuotaUse
    source: str
    def __init__(self, quota: _Optional[_Union[Quota, _Mapping]] = ..., held: _Optional[_Union[QuotaUse, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class QuotaExceeded(_message.Message):
    __slots__ = ("principal", "quota", "held", "asked", "over", "source")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    ASKED_FIELD_NUMBER: _ClassVar[int]
    OVER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    quota: Quota
    held: QuotaUse
    asked: QuotaUse
    over: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, principal: _Optional[str] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ..., held: _Optional[_Union[QuotaUse, _Mapping]] = ..., asked: _Optional[_Union[QuotaUse, _Mapping]] = ..., over: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class SliceRequest(_message.Message):
    __slots__ = ("vram", "compute")
    VRAM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    vram: int
    compute: int
    def __init__(self, vram: _Optional[int] = ..., compute: _Optional[int] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("slice", "count", "qos", "model", "mode", "ttl_seconds", "profile", "labels", "wait", "wait_seconds", "request_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SLICE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    slice: SliceRequest
    count: int
    qos: Qos
    model: str
    mode: IsolationMode
    ttl_seconds: int
    profile: str
    labels: _containers.ScalarMap[str, str]
    wait: bool
    wait_seconds: float
    request_id: str
    def __init__(self, slice: _Optional[_Union[SliceRequest, _Mapping]] = ..., count: _Optional[int] = ..., qos: _Optional[_Union[Qos, str]] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[IsolationMode, str]] = ..., ttl_seconds: _Optional[int] = ..., profile: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., wait: _Optional[bool] = ..., wait_seconds: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class WaitingEntry(_message.Message):
    __slots__ = ("position", "qos", "slice", "count", "own", "request_id", "principal", "reason", "message", "since", "profile", "whole_device", "model")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OWN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WHOLE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    position: int
    qos: Qos
    slice: SliceRequest
    count: int
    own: bool
    request_id: str
    principal: str
    reason: str
    message: str
    since: float
    profile: str
    whole_device: bool
    model: str
    def __init__(self, position: _Optional[int] = ..., qos: _Optional[_Union[Qos, str]] = ..., slice: _Optional[_Union[SliceRequest, _Mapping]] = ..., count: _Optional[int] = ..., own: _Optional[bool] = ..., request_id: _Optional[str] = ..., principal: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., since: _Optional[float] = ..., profile: _Optional[str] = ..., whole_device: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class Slice(_message.Message):
    __slots__ = ("device_uuid", "device_index", "vram", "compute", "vram_used", "utilization")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    VRAM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    device_index: int
    vram: int
    compute: int
    vram_used: int
    utilization: float
    def __init__(self, device_uuid: _Optional[str] = ..., device_index: _Optional[int] = ..., vram: _Optional[int] = ..., compute: _Optional[int] = ..., vram_used: _Optional[int] = ..., utilization: _Optional[float] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("id", "principal", "slices", "qos", "mode", "memory_enforcement", "created_at", "expires_at", "ttl_seconds", "profile", "labels", "kernels", "last_active", "release_for")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    principal: str
    slices: _containers.RepeatedCompositeFieldContainer[Slice]
    qos: Qos
    mode: IsolationMode
    memory_enforcement: MemoryEnforcement
    created_at: float
    expires_at: float
    ttl_seconds: int
    profile: str
    labels: _containers.ScalarMap[str, str]
    kernels: _containers.RepeatedCompositeFieldContainer[Kernel]
    last_active: float
    release_for: Qos
    def __init__(self, id: _Optional[str] = ..., principal: _Optional[str] = ..., slices: _Optional[_Iterable[_Union[Slice, _Mapping]]] = ..., qos: _Optional[_Union[Qos, str]] = ..., mode: _Optional[_Union[IsolationMode, str]] = ..., memory_enforcement: _Optional[_Union[MemoryEnforcement, str]] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., ttl_seconds: _Optional[int] = ..., profile: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., kernels: _Optional[_Iterable[_Union[Kernel, _Mapping]]] = ..., last_active: _Optional[float] = ..., release_for: _Optional[_Union[Qos, str]] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("lease_id", "slice", "vram", "compute")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    VRAM_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    slice: SliceRequest
    vram: int
    compute: int
    def __init__(self, lease_id: _Optional[str] = ..., slice: _Optional[_Union[SliceRequest, _Mapping]] = ..., vram: _Optional[int] = ..., compute: _Optional[int] = ...) -> None: ...

class ListLeasesRequest(_message.Message):
    __slots__ = ("all_principals",)
    ALL_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    all_principals: bool
    def __init__(self, all_principals: _Optional[bool] = ...) -> None: ...

class ListLeasesResponse(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class StartKernelRequest(_message.Message):
    __slots__ = ("lease_id", "key", "signature_scheme", "environment", "argv", "env", "cwd", "labels", "kernel_args")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_SCHEME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    key: bytes
    signature_scheme: str
    environment: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    labels: _containers.ScalarMap[str, str]
    kernel_args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., key: _Optional[bytes] = ..., signature_scheme: _Optional[str] = ..., environment: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., kernel_args: _Optional[_Iterable[str]] = ...) -> None: ...

class Kernel(_message.Message):
    __slots__ = ("id", "lease_id", "status", "pid", "exit_code", "cwd", "shares_filesystem", "started_at", "environment")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    SHARES_FILESYSTEM_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_id: str
    status: KernelStatus
    pid: int
    exit_code: int
    cwd: str
    shares_filesystem: bool
    started_at: float
    environment: str
    def __init__(self, id: _Optional[str] = ..., lease_id: _Optional[str] = ..., status: _Optional[_Union[KernelStatus, str]] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., cwd: _Optional[str] = ..., shares_filesystem: _Optional[bool] = ..., started_at: _Optional[float] = ..., environment: _Optional[str] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("kernel_id", "signal")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    signal: Signal
    def __init__(self, kernel_id: _Optional[str] = ..., signal: _Optional[_Union[Signal, str]] = ...) -> None: ...

class KernelStateRequest(_message.Message):
    __slots__ = ("kernel_id",)
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    def __init__(self, kernel_id: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("channel", "seq", "parts", "chunk", "chunk_last")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LAST_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    seq: int
    parts: _containers.RepeatedScalarFieldContainer[bytes]
    chunk: bytes
    chunk_last: bool
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., seq: _Optional[int] = ..., parts: _Optional[_Iterable[bytes]] = ..., chunk: _Optional[bytes] = ..., chunk_last: _Optional[bool] = ...) -> None: ...

class Parts(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, parts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChannelPosition(_message.Message):
    __slots__ = ("channel", "seq")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    seq: int
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., seq: _Optional[int] = ...) -> None: ...

class OpenChannels(_message.Message):
    __slots__ = ("kernel_id", "last_received")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    last_received: _containers.RepeatedCompositeFieldContainer[ChannelPosition]
    def __init__(self, kernel_id: _Optional[str] = ..., last_received: _Optional[_Iterable[_Union[ChannelPosition, _Mapping]]] = ...) -> None: ...

class ChannelsRequest(_message.Message):
    __slots__ = ("open", "frames", "ack")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    open: OpenChannels
    frames: FrameBatch
    ack: Ack
    def __init__(self, open: _Optional[_Union[OpenChannels, _Mapping]] = ..., frames: _Optional[_Union[FrameBatch, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class FrameBatch(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: _containers.RepeatedCompositeFieldContainer[ChannelPosition]
    def __init__(self, received: _Optional[_Iterable[_Union[ChannelPosition, _Mapping]]] = ...) -> None: ...

class ChannelsOpened(_message.Message):
    __slots__ = ("kernel_id", "received", "dropped", "chunk_size")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    received: _containers.RepeatedCompositeFieldContainer[ChannelPosition]
    dropped: _containers.RepeatedCompositeFieldContainer[ChannelPosition]
    chunk_size: int
    def __init__(self, kernel_id: _Optional[str] = ..., received: _Optional[_Iterable[_Union[ChannelPosition, _Mapping]]] = ..., dropped: _Optional[_Iterable[_Union[ChannelPosition, _Mapping]]] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class KernelExited(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class ChannelsResponse(_message.Message):
    __slots__ = ("opened", "frames", "exited", "transfer")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    opened: ChannelsOpened
    frames: FrameBatch
    exited: KernelExited
    transfer: TransferAsk
    def __init__(self, opened: _Optional[_Union[ChannelsOpened, _Mapping]] = ..., frames: _Optional[_Union[FrameBatch, _Mapping]] = ..., exited: _Optional[_Union[KernelExited, _Mapping]] = ..., transfer: _Optional[_Union[TransferAsk, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("include_devices", "all_leases")
    INCLUDE_DEVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_LEASES_FIELD_NUMBER: _ClassVar[int]
    include_devices: bool
    all_leases: bool
    def __init__(self, include_devices: _Optional[bool] = ..., all_leases: _Optional[bool] = ...) -> None: ...

class DeviceSample(_message.Message):
    __slots__ = ("device_uuid", "vram_used", "vram_total", "utilization", "vram_leased", "compute_leased")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_FIELD_NUMBER: _ClassVar[int]
    VRAM_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    VRAM_LEASED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_LEASED_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    vram_used: int
    vram_total: int
    utilization: float
    vram_leased: int
    compute_leased: int
    def __init__(self, device_uuid: _Optional[str] = ..., vram_used: _Optional[int] = ..., vram_total: _Optional[int] = ..., utilization: _Optional[float] = ..., vram_leased: _Optional[int] = ..., compute_leased: _Optional[int] = ...) -> None: ...

class LeaseSample(_message.Message):
    __slots__ = ("lease_id", "principal", "device_uuid", "vram_used", "vram_limit", "utilization", "compute_limit", "mode", "kernel_ids")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    VRAM_USED_FIELD_NUMBER: _ClassVar[int]
    VRAM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_IDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    principal: str
    device_uuid: str
    vram_used: int
    vram_limit: int
    utilization: float
    compute_limit: int
    mode: IsolationMode
    kernel_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., principal: _Optional[str] = ..., device_uuid: _Optional[str] = ..., vram_used: _Optional[int] = ..., vram_limit: _Optional[int] = ..., utilization: _Optional[float] = ..., compute_limit: _Optional[int] = ..., mode: _Optional[_Union[IsolationMode, str]] = ..., kernel_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "time", "lease_id", "kernel_id", "principal", "message", "by")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    time: float
    lease_id: str
    kernel_id: str
    principal: str
    message: str
    by: str
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., time: _Optional[float] = ..., lease_id: _Optional[str] = ..., kernel_id: _Optional[str] = ..., principal: _Optional[str] = ..., message: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("time", "devices", "leases", "events")
    TIME_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    time: float
    devices: _containers.RepeatedCompositeFieldContainer[DeviceSample]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseSample]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, time: _Optional[float] = ..., devices: _Optional[_Iterable[_Union[DeviceSample, _Mapping]]] = ..., leases: _Optional[_Iterable[_Union[LeaseSample, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class PutFileRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutFileHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PutFileHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutFileHeader(_message.Message):
    __slots__ = ("kernel_id", "path", "mode")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    path: str
    mode: int
    def __init__(self, kernel_id: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("path", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("kernel_id", "path")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    path: str
    def __init__(self, kernel_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("kernel_id", "direction", "client_path", "kernel_path", "timeout_seconds", "overwrite")
    KERNEL_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    kernel_id: str
    direction: TransferDirection
    client_path: str
    kernel_path: str
    timeout_seconds: int
    overwrite: bool
    def __init__(self, kernel_id: _Optional[str] = ..., direction: _Optional[_Union[TransferDirection, str]] = ..., client_path: _Optional[str] = ..., kernel_path: _Optional[str] = ..., timeout_seconds: _Optional[int] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class TransferAsk(_message.Message):
    __slots__ = ("transfer_id", "direction", "client_path", "kernel_path", "overwrite")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    direction: TransferDirection
    client_path: str
    kernel_path: str
    overwrite: bool
    def __init__(self, transfer_id: _Optional[str] = ..., direction: _Optional[_Union[TransferDirection, str]] = ..., client_path: _Optional[str] = ..., kernel_path: _Optional[str] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class TransferResult(_message.Message):
    __slots__ = ("transfer_id", "ok", "message", "size")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    ok: bool
    message: str
    size: int
    def __init__(self, transfer_id: _Optional[str] = ..., ok: _Optional[bool] = ..., message: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CompleteTransferResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
