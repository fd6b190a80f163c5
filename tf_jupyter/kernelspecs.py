"""Profiles as Jupyter finds them: the metadata of kernelspec vgpu-<name>, else a built-in profile."""

from __future__ import annotations

from tf_jupyter.profiles import BUILTIN_PROFILES, Profile

__all__ = ["UnknownProfile", "find_profile"]


class UnknownProfile(LookupError):
    """No vgpu-<name> kernelspec and no built-in profile of that name."""


def find_profile(name: str) -> Profile:
    """The profile behind kernelspec vgpu-<name>, wherever Jupyter finds it; else a built-in one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(f"vgpu-{name}")
        if "tf_vgpu" in spec.metadata:
            return Profile.from_metadata(spec.metadata["tf_vgpu"])
    except (NoSuchKernel, ValueError, OSError):
        pass
    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    raise UnknownProfile(f"unknown vGPU profile {name!r}: no kernelspec vgpu-{name}, and the built-in ones are "
                         f"{', '.join(sorted(BUILTIN_PROFILES))} (see tf-jupyter profiles list)")
