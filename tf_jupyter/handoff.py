"""The environment a provisioner hands a kernel launcher: which lease to use and how to reach its worker.

The provisioner (tf_jupyter.provisioner) writes these variables, the launcher (tf_jupyter.launcher) reads them.
"""

from __future__ import annotations

__all__ = ["HANDOFF_ENV", "PARENT_ENV", "TOKEN_ENV", "TOKEN_FILE_ENV"]

HANDOFF_ENV = "TF_VGPU_HANDOFF"  # JSON: worker, lease_id, ttl, release_on_exit, TLS settings
TOKEN_ENV = "TF_VGPU_CLIENT_TOKEN"
TOKEN_FILE_ENV = "TF_VGPU_CLIENT_TOKEN_FILE"  # followed on every renewal: tokens rotate live
PARENT_ENV = "TF_VGPU_PARENT_PID"
