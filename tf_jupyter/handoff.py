"""What a provisioner hands a kernel launcher: which lease to use and how to reach its worker.

The provisioner (tf_jupyter.provisioner) sets these variables, the launcher (tf_jupyter.launcher)
reads them. The principal's token itself never travels in the environment, where any process of the
same user could read it (`/proc/<pid>/environ`) for as long as the launcher lives: the launcher
gets the path of the client's token file (`TOKEN_FILE_ENV`, followed on every renewal, so tokens
rotate live) or, where the token comes from elsewhere (JupyterHub, `c.TfVgpu` settings), the path of
a one-use file (`TOKEN_HANDOFF_ENV`, mode 0600 in a 0700 directory of Jupyter's runtime directory)
that it reads and deletes as it starts.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["HANDOFF_ENV", "PARENT_ENV", "TOKEN_FILE_ENV", "TOKEN_HANDOFF_ENV", "take_token_handoff",
           "write_token_handoff"]

HANDOFF_ENV = "TF_VGPU_HANDOFF"  # JSON: worker, lease_id, kernel_id, ttl, release_on_exit, TLS settings
TOKEN_FILE_ENV = "TF_VGPU_CLIENT_TOKEN_FILE"  # the client's token file: followed on every renewal
TOKEN_HANDOFF_ENV = "TF_VGPU_CLIENT_TOKEN_HANDOFF"  # a one-use file with the token, deleted when read
PARENT_ENV = "TF_VGPU_PARENT_PID"


def handoff_directory() -> Path:
    """Where one-use token files wait for their launcher: a 0700 directory in Jupyter's runtime directory."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "tf-vgpu-handoff"


def write_token_handoff(token: str, directory: str | Path | None = None) -> str:
    """Write `token` to a new 0600 file for one launcher to take; returns its path."""
    where = Path(directory) if directory is not None else handoff_directory()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = where.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{where} is not a directory of this user (a link, or someone else's); remove it")
    if st.st_mode & 0o077:
        os.chmod(where, 0o700)
    fd, path = tempfile.mkstemp(prefix="token-", dir=where)  # O_EXCL, 0600
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def take_token_handoff(path: str) -> str:
    """The token in a one-use file, which is deleted first: nobody reads it after us.
    ValueError with a sentence when it is missing or empty."""
    if not path:
        raise ValueError(f"no token was handed to this launcher ({TOKEN_FILE_ENV} and {TOKEN_HANDOFF_ENV} "
                         "are unset); start vGPU kernels through the tf-vgpu provisioner")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"the token handed to this launcher ({path}) is gone ({exc.strerror}): it is read "
                         "once, by the launcher started with it; restart the kernel") from None
    try:
        os.unlink(path)
        with os.fdopen(fd, "r") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token handed to this launcher ({path}): {exc.strerror}") from None
    if not token:
        raise ValueError(f"the token file handed to this launcher ({path}) is empty; restart the kernel")
    return token
