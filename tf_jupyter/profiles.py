"""Profiles: named vGPU requests, shown to users as kernelspecs named ``vgpu-<profile>``.

A profile is what a kernel asks for (VRAM per device, compute percent of one device, how many
devices, QoS). Each one is a kernelspec whose argv runs the kernel launcher and whose metadata
names the ``tf-vgpu`` provisioner and carries the slice for the UI (``metadata.tf_vgpu``).

Plain Python: no tornado, no grpc, no asyncio, so the CLI, the server and tests share it.
Quantities are parsed and printed only by :mod:`tf_remoting.quantities`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tf_jupyter.kernelspec_logo import write_logos
from tf_jupyter.qos import QOS_NAMES
from tf_remoting.quantities import QuantityError, format_bytes, format_percent, parse_bytes, parse_percent

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_ARGV_PREFIX",
    "KERNELSPEC_PREFIX",
    "MAX_COUNT",
    "PROVISIONER_NAME",
    "QOS_LEVELS",
    "Profile",
    "ProfileError",
    "ProfileStore",
    "QuantityError",
    "env_kernels_dir",
    "kernelspec",
    "parse_profile_spec",
    "write_builtin_kernelspecs",
]

KERNELSPEC_PREFIX = "vgpu-"
PROVISIONER_NAME = "tf-vgpu"
METADATA_KEY = "tf_vgpu"
QOS_LEVELS = QOS_NAMES  # from the proto, via tf_jupyter.qos
MAX_COUNT = 8
GiB = 1 << 30

# "python", not sys.executable: these kernelspecs are generated at build time and shipped in the
# wheel, so no absolute interpreter path can be known. jupyter_client's
# KernelManager.format_kernel_cmd (called by LocalProvisioner.pre_launch, so by jupyter_server,
# jupyter console, nbclient and papermill) replaces an argv[0] of "python", "python3" or
# "python3.X" with its own sys.executable -- the same trick ipykernel's shipped python3 kernelspec
# relies on. The tf-vgpu provisioner builds on LocalProvisioner and inherits it.
DEFAULT_ARGV_PREFIX: tuple[str, ...] = ("python", "-m", "tf_jupyter.launcher")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


class ProfileError(ValueError):
    """A profile that cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class Profile:
    """A named vGPU request: ``vram`` bytes and ``compute`` percent on each of ``count`` devices.

    ``whole_device`` asks for entire devices (nothing else leased on them); its ``vram`` is 0 and
    its ``compute`` 100 by convention.
    """

    name: str
    vram: int
    compute: int
    count: int = 1
    qos: str = "medium"
    whole_device: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ProfileError(
                f"invalid profile name {self.name!r}: use 1 to 41 lowercase letters, digits and dashes, "
                "starting with a letter or digit (e.g. 'small' or 'train-2x')"
            )
        if self.qos not in QOS_LEVELS:
            raise ProfileError(
                f"invalid QoS {self.qos!r} for profile {self.name!r}: use one of {', '.join(QOS_LEVELS)}"
            )
        for field_name in ("vram", "compute", "count"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProfileError(f"profile {self.name!r}: {field_name} must be an integer, not {value!r}")
        if not 1 <= self.count <= MAX_COUNT:
            raise ProfileError(
                f"profile {self.name!r}: count {self.count} is out of range; ask for 1 to {MAX_COUNT} devices"
            )
        if not isinstance(self.whole_device, bool):
            raise ProfileError(f"profile {self.name!r}: whole_device must be true or false, not {self.whole_device!r}")
        if not isinstance(self.description, str):
            raise ProfileError(f"profile {self.name!r}: description must be a string")
        if self.whole_device:
            if self.vram != 0 or self.compute != 100:
                raise ProfileError(
                    f"profile {self.name!r} asks for whole devices, so its vram must be 0 and its compute 100 "
                    f"(got {self.vram} bytes and {self.compute} %)"
                )
            return
        if self.vram <= 0:
            raise ProfileError(f"profile {self.name!r}: vram must be more than 0 bytes (e.g. 4Gi)")
        if not 1 <= self.compute <= 100:
            raise ProfileError(
                f"profile {self.name!r}: compute must be a whole percent from 1 to 100, not {self.compute}"
            )

    @property
    def kernelspec_name(self) -> str:
        return KERNELSPEC_PREFIX + self.name

    @property
    def slice_text(self) -> str:
        """The slice in words: ``"vGPU 4 GiB · 10 %"``, ``"2 × vGPU 8 GiB · 25 %"``, ``"whole GPU"``."""
        if self.whole_device:
            return "whole GPU" if self.count == 1 else f"{self.count} whole GPUs"
        text = f"vGPU {format_bytes(self.vram)} · {format_percent(self.compute)}"
        return text if self.count == 1 else f"{self.count} × {text}"

    @property
    def display_name(self) -> str:
        """What the launcher and kernel picker show, e.g. ``"Python 3 · vGPU 4 GiB · 10 %"``."""
        text = f"Python 3 · {self.slice_text}"
        if self.qos != "medium":
            text += f" · {self.qos} QoS"
        # Two profiles can share a slice; the name keeps them apart in the picker.
        if BUILTIN_PROFILES.get(self.name) != self:
            text += f" ({self.name})"
        return text

    def to_metadata(self) -> dict[str, Any]:
        """The ``metadata.tf_vgpu`` dict of the kernelspec (read by the provisioner and the UI)."""
        return {
            "name": self.name,
            "vram": self.vram,
            "compute": self.compute,
            "count": self.count,
            "qos": self.qos,
            "whole_device": self.whole_device,
            "description": self.description,
        }

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of :meth:`to_metadata`; raises ProfileError for missing or bad fields."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"vGPU profile metadata must be an object, not {type(data).__name__}")
        missing = [k for k in ("name", "vram", "compute") if k not in data]
        if missing:
            raise ProfileError(f"vGPU profile metadata lacks {', '.join(missing)}: {dict(data)!r}")
        return cls(
            name=data["name"],
            vram=data["vram"],
            compute=data["compute"],
            count=data.get("count", 1),
            qos=data.get("qos", "medium"),
            whole_device=data.get("whole_device", False),
            description=data.get("description", ""),
        )


BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("small", 4 * GiB, 10, description="Small slice: notebooks, inference, small models."),
        Profile("medium", 8 * GiB, 25, description="Medium slice: fine-tuning small models."),
        Profile("large", 16 * GiB, 50, description="Large slice: training mid-sized models."),
        Profile("whole", 0, 100, whole_device=True, description="A whole device, nothing else leased on it."),
    )
}


def parse_profile_spec(
    name: str,
    vram: str | int | None = None,
    compute: str | int | None = None,
    count: int | str = 1,
    qos: str = "medium",
    *,
    whole_device: bool = False,
    description: str = "",
) -> Profile:
    """Build a profile from what a person typed: ``("train", "8Gi", "25%", count=2, qos="high")``.

    Raises QuantityError for a bad size or percentage, ProfileError for anything else.
    """
    if isinstance(count, str):
        if not count.strip().isdigit():
            raise ProfileError(f"invalid count {count!r}: use a whole number of devices from 1 to {MAX_COUNT}")
        count = int(count)
    qos = qos.strip().lower() if isinstance(qos, str) else qos
    if whole_device:
        if vram is not None or compute is not None:
            raise ProfileError(f"profile {name!r} asks for whole devices; leave out vram and compute")
        return Profile(name, 0, 100, count=count, qos=qos, whole_device=True, description=description)
    if vram is None or compute is None:
        raise ProfileError(f"profile {name!r} needs both vram (e.g. 8Gi) and compute (e.g. 25%), or whole devices")
    return Profile(name, parse_bytes(vram), parse_percent(compute), count=count, qos=qos, description=description)


def kernelspec(profile: Profile, argv_prefix: Sequence[str] | None = None) -> dict[str, Any]:
    """The kernel.json content for ``profile``: launcher argv, provisioner ``tf-vgpu``, slice metadata."""
    prefix = list(DEFAULT_ARGV_PREFIX if argv_prefix is None else argv_prefix)
    return {
        "argv": [*prefix, "--profile", profile.name, "-f", "{connection_file}"],
        "display_name": profile.display_name,
        "language": "python",
        # The launcher is a local process that forwards SIGINT to the remote kernel.
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": {"profile": profile.name}},
            METADATA_KEY: profile.to_metadata(),
            "debugger": False,
        },
    }


def _dump(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def write_builtin_kernelspecs(target_dir: str | Path) -> list[Path]:
    """Write ``vgpu-<name>/kernel.json`` and the logos for every built-in profile (the repository's ``kernels/``)."""
    target = Path(target_dir)
    written = []
    for profile in BUILTIN_PROFILES.values():
        path = target / profile.kernelspec_name / "kernel.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump(kernelspec(profile)), encoding="utf-8")
        written.append(path)
        written.extend(write_logos(path.parent))
    return written


def env_kernels_dir() -> Path:
    """The kernels directory of this Python environment, where the wheel installs the built-ins."""
    return Path(sys.prefix) / "share" / "jupyter" / "kernels"


class ProfileStore:
    """The vGPU profiles in one kernels directory: each is a ``vgpu-<name>/kernel.json``."""

    def __init__(self, kernels_dir: str | Path, argv_prefix: Sequence[str] | None = None) -> None:
        self.kernels_dir = Path(kernels_dir)
        self.argv_prefix = argv_prefix

    def _path(self, name: str) -> Path:
        return self.kernels_dir / (KERNELSPEC_PREFIX + name) / "kernel.json"

    def _read(self, path: Path) -> Profile | None:
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read kernelspec {path}: {exc}") from None
        meta = spec.get("metadata", {}).get(METADATA_KEY) if isinstance(spec, dict) else None
        if meta is None:
            return None  # a kernelspec named vgpu-* that is not ours
        try:
            return Profile.from_metadata(meta)
        except ProfileError as exc:
            raise ProfileError(f"{path}: {exc}") from None

    def list(self) -> list[Profile]:
        """The profiles found, sorted by name; a broken kernel.json raises ProfileError naming it."""
        if not self.kernels_dir.is_dir():
            return []
        found = []
        for spec_dir in sorted(self.kernels_dir.glob(KERNELSPEC_PREFIX + "*")):
            path = spec_dir / "kernel.json"
            if path.is_file() and (profile := self._read(path)) is not None:
                found.append(profile)
        return sorted(found, key=lambda p: p.name)

    def get(self, name: str) -> Profile:
        path = self._path(name)
        profile = self._read(path) if path.is_file() else None
        if profile is None:
            raise ProfileError(self._unknown(name))
        return profile

    def add(self, profile: Profile, *, replace: bool = False) -> Path:
        """Write the profile's kernelspec; an existing one is kept unless ``replace``."""
        path = self._path(profile.name)
        if path.exists() and not replace:
            raise ProfileError(
                f"profile {profile.name!r} already exists ({path}); remove it first or replace it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump(kernelspec(profile, self.argv_prefix)), encoding="utf-8")
        write_logos(path.parent)
        return path

    def remove(self, name: str) -> Path:
        """Delete the profile's kernelspec directory (built-ins too; reinstalling restores them)."""
        path = self._path(name)
        if not path.is_file() or self._read(path) is None:
            raise ProfileError(self._unknown(name))
        shutil.rmtree(path.parent)
        return path.parent

    def _unknown(self, name: str) -> str:
        names = ", ".join(p.name for p in self.list()) or "none"
        return f"no vGPU profile named {name!r} in {self.kernels_dir} (profiles there: {names})"
