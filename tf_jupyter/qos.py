"""QoS levels by name, from the proto's Qos enum (its one home): no table of names on the Jupyter side."""

from __future__ import annotations

from tf_remoting.proto import enum_name, enum_names, enum_value, pb

__all__ = ["DEFAULT_QOS", "HIGHEST_QOS", "QOS_NAMES", "QOS_RANK", "qos_name", "qos_value"]

QOS_NAMES: tuple[str, ...] = tuple(enum_names(pb.Qos))  # low, medium, high, critical: proto order
# Queue order: the highest level first (critical 0 ... low 3).
QOS_RANK: dict[str, int] = {name: rank for rank, name in enumerate(reversed(QOS_NAMES))}
DEFAULT_QOS = enum_name(pb.Qos, pb.QOS_MEDIUM)  # what QOS_UNSPECIFIED means to a worker
HIGHEST_QOS = QOS_NAMES[-1]  # critical: never released for idleness


def qos_value(name: str) -> int:
    """The proto number of a QoS name ("high" -> pb.QOS_HIGH); ValueError for an unknown name."""
    return enum_value(pb.Qos, name)


def qos_name(value: int) -> str:
    """The name of a proto QoS number; "medium" for QOS_UNSPECIFIED, as workers read it."""
    return enum_name(pb.Qos, value) if value else DEFAULT_QOS
