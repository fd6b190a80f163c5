"""The v1 protocol's generated messages and stubs under short names.

    from tf_remoting.proto import pb, pb_grpc

`pb_grpc` (which imports grpc) loads on first use, so processes that only need the messages,
like the kernel nanny, start faster.
"""

from types import ModuleType

from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2 as pb

SERVICE_NAME = "tensorfusion.remoting.v1.Runtime"

__all__ = ["pb", "SERVICE_NAME"]  # and pb_grpc, loaded lazily


def __getattr__(name: str) -> ModuleType:
    if name == "pb_grpc":
        from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2_grpc

        return runtime_pb2_grpc
    raise AttributeError(name)
