"""Regenerate the committed gRPC stubs from the .proto (never edit the output by hand).

    python remoting/tools/generate_proto.py            # writes remoting/tf_remoting/_proto/
    python remoting/tools/generate_proto.py OUT_DIR    # writes OUT_DIR/tf_remoting/_proto/ (drift test)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REMOTING = Path(__file__).resolve().parents[1]
PROTO_ROOT = REMOTING / "proto"
PROTO = PROTO_ROOT / "tensorfusion" / "remoting" / "v1" / "runtime.proto"
PACKAGE_DIRS = ("tf_remoting/_proto", "tf_remoting/_proto/tensorfusion",
                "tf_remoting/_proto/tensorfusion/remoting", "tf_remoting/_proto/tensorfusion/remoting/v1")


def generate(out_root: Path) -> None:
    """Write the stubs under out_root/tf_remoting/_proto, importable as tf_remoting._proto.…"""
    out_root.mkdir(parents=True, exist_ok=True)
    # The virtual include path makes the generated imports absolute inside tf_remoting._proto.
    args = [
        "grpc_tools.protoc",
        f"-Itf_remoting/_proto={PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for d in PACKAGE_DIRS:
        init = out_root / d / "__init__.py"
        init.write_text('"""Generated from remoting/proto by remoting/tools/generate_proto.py."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REMOTING)
