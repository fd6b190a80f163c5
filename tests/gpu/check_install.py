"""Install helper of scripts/gpu-check.sh (not a test): which carried wheels the machine needs, and
whether the GPU check can import what it runs.

    python3 tests/gpu/check_install.py select .whl   # paths of the wheels to install, one a line
    python3 tests/gpu/check_install.py verify        # import check; exit 1 with a sentence if not

A carried wheel is installed where the machine lacks its distribution or has an older version;
a newer one already there is kept (the device's image is built around its own versions).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

# What the worker, the nanny, the kernels and the gpu tests import.
MODULES = ("grpc", "grpc_health.v1.health", "google.protobuf", "zmq", "ipykernel", "jupyter_client", "IPython",
           "psutil", "prometheus_client", "pynvml", "pytest", "pytest_asyncio", "pytest_timeout",
           "tf_remoting.proto", "tf_remoting.worker.server", "tf_remoting.kernel.caps")


def installed_version(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def select(folder: Path) -> list[Path]:
    chosen = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        have = installed_version(name)
        if have is None or have < version:
            chosen.append(wheel)
            why = "missing" if have is None else f"has {have}"
            print(f"install {canonicalize_name(name)} {version} (this machine {why})", file=sys.stderr)
        else:
            print(f"keep    {canonicalize_name(name)} {have} (carried {version})", file=sys.stderr)
    return chosen


def verify() -> int:
    failed = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is a finding to print, not a traceback
            failed.append(f"{module}: {type(exc).__name__}: {exc}")
    versions = {n: installed_version(n) for n in ("grpcio", "protobuf", "pyzmq", "ipykernel", "pytest",
                                                    "pytest-asyncio", "nvidia-ml-py", "torch", "jax", "cupy-cuda13x")}
    print("versions: " + ", ".join(f"{n} {v or 'absent'}" for n, v in versions.items()))
    if failed:
        print("the GPU check cannot import what it runs; carry the missing wheels (scripts/gpu-wheels.sh):\n  "
              + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["select"] and len(argv) == 2:
        print("\n".join(str(p) for p in select(Path(argv[1]))))
        return 0
    if argv == ["verify"]:
        return verify()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
