"""The v1 protocol's generated messages and stubs under short names.

    from tf_remoting.proto import pb, pb_grpc
"""

from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2 as pb
from tf_remoting._proto.tensorfusion.remoting.v1 import runtime_pb2_grpc as pb_grpc

SERVICE_NAME = "tensorfusion.remoting.v1.Runtime"

__all__ = ["pb", "pb_grpc", "SERVICE_NAME"]
