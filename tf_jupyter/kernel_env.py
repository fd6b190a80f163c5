"""The environment a vGPU kernel gets from its client (the kernel launcher's environment).

A local kernel gets its client's whole environment (jupyter_client passes the server's or the
client's environment, the kernelspec's `env` and what was given to `start_kernel(env=...)`). A
vGPU kernel does too when its worker runs on this machine (the embedded or a local worker), less
the launcher's own secrets. A remote worker's kernel gets only the variables named in
`c.TfVgpu.kernel_env` (the defaults below, and the kernelspec's own `env`): this machine's paths
and credentials mean nothing there, or must not travel. Either way the worker adds its own
minimal base and the slice's variables (tf_remoting.slice_env), never another client's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping

# Never sent to a kernel: how the launcher itself reaches the worker.
LAUNCHER_SECRETS = frozenset({"TF_VGPU_HANDOFF", "TF_VGPU_CLIENT_TOKEN", "TF_VGPU_CLIENT_TOKEN_FILE",
                              "TF_VGPU_PARENT_PID"})

# What travels to a remote worker when c.TfVgpu.kernel_env is left as it is.
DEFAULT_REMOTE_NAMES = ("JPY_SESSION_NAME", "JPY_PARENT_PID", "PYDEVD_DISABLE_FILE_VALIDATION", "MPLBACKEND",
                        "LANG", "LC_*", "TZ")


def worker_is_local(address: str) -> bool:
    """True when the worker runs on this machine: a unix socket, or a loopback address."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def kernel_env(environ: Mapping[str, str], worker_address: str, remote_names: Iterable[str] = DEFAULT_REMOTE_NAMES,
               spec_env: Iterable[str] = ()) -> dict[str, str]:
    """The variables a kernel started from this environment gets on the worker at worker_address.

    remote_names: names or fnmatch patterns (`LC_*`) sent to a remote worker; spec_env: the names of
    the kernelspec's own `env`, which always travel (the kernelspec asked for them).
    """
    if worker_is_local(worker_address):
        return {k: v for k, v in environ.items() if k not in LAUNCHER_SECRETS}
    patterns = [*remote_names, *spec_env]
    return {k: v for k, v in environ.items()
            if k not in LAUNCHER_SECRETS and any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def client_kernel_env(environ: Mapping[str, str], worker_address: str, profile_name: str,
                      remote_names: Callable[[], Iterable[str]]) -> dict[str, str]:
    """What a vGPU kernel of profile `profile_name` gets from a client whose environment is `environ`:
    all of it for a local worker; for a remote one what `remote_names()` (c.TfVgpu.kernel_env, read
    only then) and the kernelspec's own `env` name. The launcher and the provisioner (which starts the
    kernel early) both use this, so the kernel gets the same either way."""
    if worker_is_local(worker_address):
        return kernel_env(environ, worker_address)
    import contextlib

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    spec_env: list[str] = []
    with contextlib.suppress(NoSuchKernel, ValueError, OSError):
        spec_env = list(KernelSpecManager().get_kernel_spec(f"vgpu-{profile_name}").env)
    return kernel_env(environ, worker_address, remote_names(), spec_env)
