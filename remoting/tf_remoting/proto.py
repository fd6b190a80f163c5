"""The v1 protocol's generated messages and stubs under short names.

    from tf_remoting.proto import pb, pb_grpc

`pb_grpc` (which imports grpc) loads on first use, so processes that only need the messages,
like the kernel nanny, start faster.

Enum values have one home, the proto: `enum_name(pb.Qos, pb.QOS_HIGH) == "high"` and
`enum_value(pb.Qos, "high") == pb.QOS_HIGH` strip and add the `QOS_` prefix, so nobody keeps a
table of names.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar, cast

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2 as pb

if TYPE_CHECKING:
    from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2_grpc as pb_grpc  # noqa: F401

SERVICE_NAME = "tensorfusion.remoting.v1.Runtime"

# Trailing metadata of an over-quota refusal (FAILED_PRECONDITION): the kind, and the serialized
# `pb.QuotaExceeded` (runtime.proto).
ERROR_KIND_KEY = "tf-vgpu-error"
OVER_QUOTA = "over-quota"

# WaitingEntry.reason: why a request waits in a worker's line (the worker's waiting_line decides it).
WAIT_NO_ROOM = "no_room"  # no device has that much free now
WAIT_QUOTA = "quota"      # its principal's quota: freeing room elsewhere does not help it
WAIT_BEHIND = "behind"    # it would fit, but only on devices a request ahead of it waits for
QUOTA_EXCEEDED_KEY = "tf-vgpu-quota-exceeded-bin"

# A slice whose utilization (percent of the device) is above this counts as active: the worker's
# Lease.last_active and the Jupyter side's idle release read it the same way.
BUSY_UTILIZATION = 1.0

__all__ = ["pb", "SERVICE_NAME", "enum_name", "enum_value", "enum_names"]  # and pb_grpc, loaded lazily


E = TypeVar("E", bound=int)


def _wrapper(enum: type[int]) -> EnumTypeWrapper:
    return cast(EnumTypeWrapper, enum)  # the generated enum class's metaclass


def _prefix(enum: type[int]) -> str:
    """`QOS_` for Qos, `ISOLATION_MODE_` for IsolationMode: the proto style's value prefix."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", _wrapper(enum).DESCRIPTOR.name).upper() + "_"


def enum_name(enum: type[int], value: int) -> str:
    """The short lower-case name of an enum value (`"high"`); ValueError for an unknown number."""
    return _wrapper(enum).Name(value).removeprefix(_prefix(enum)).lower()


def enum_value(enum: type[E], name: str) -> E:
    """The value of a short name (`"high"` -> QOS_HIGH), typed as the enum; ValueError if unknown."""
    return cast(E, _wrapper(enum).Value(_prefix(enum) + name.upper()))


def enum_names(enum: type[int]) -> list[str]:
    """The short names of the values other than the UNSPECIFIED zero, in proto order."""
    return [enum_name(enum, v) for v in _wrapper(enum).values() if v != 0]


def __getattr__(name: str) -> ModuleType:
    if name == "pb_grpc":
        from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2_grpc

        return runtime_pb2_grpc
    raise AttributeError(name)
