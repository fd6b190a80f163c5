"""All settings of the Jupyter side, in one traitlets Configurable: `c.TfVgpu.<name>`.

Set them in any Jupyter config file (`jupyter_server_config.py` or `.json`), on the command line
(`jupyter lab --TfVgpu.placement_policy=spread`), and list them with `jupyter lab --help-all`.
The kernel launcher reads the same files when a client runs a vGPU kernelspec without a Jupyter
server (jupyter console, papermill, VS Code), so every path sees the same pool.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from traitlets import Dict, Enum, Float, Integer, List, Unicode, validate
from traitlets.config import Config, Configurable
from traitlets.config.application import Application

from tf_jupyter.kernel_env import DEFAULT_REMOTE_NAMES
from tf_jupyter.qos import QOS_NAMES

log = logging.getLogger("tf_jupyter.config")


class TfVgpu(Configurable):
    """vGPU kernels: which workers form the pool, and how kernels are placed on them."""

    workers = List(Unicode(), default_value=[], config=True, help=(
        "Worker addresses (HOST:PORT or unix:/path). Empty, with workers_dns empty too, means an "
        "embedded worker on this machine (see embedded_worker)."))
    workers_dns = Unicode("", config=True, help=(
        "A DNS name and port (NAME:PORT) resolved to all its addresses, each one a worker: e.g. a "
        "Kubernetes headless Service in front of a worker DaemonSet. Re-resolved on every refresh."))
    token_file = Unicode("", config=True, help=(
        "File whose first token authenticates this server to every worker (TOKEN or PRINCIPAL TOKEN "
        "per line). Default for the embedded worker: the token file it creates."))
    token_source = Enum(["file", "hub"], default_value="file", config=True, help=(
        "What this server sends to workers: 'file', the first token of token_file; 'hub', the user's "
        "JupyterHub token (JUPYTERHUB_API_TOKEN of a single-user server) for workers started with "
        "--hub-api-url, which then know each hub user as its own principal, 'hub:NAME'."))
    tls_ca = Unicode("", config=True, help="CA bundle that signed the workers' certificates; turns TLS on.")
    tls_cert = Unicode("", config=True, help="Client certificate for workers that require mTLS.")
    tls_key = Unicode("", config=True, help="Client key for tls_cert.")
    tls_server_name = Unicode("", config=True, help=(
        "Name to verify in the workers' certificates when it differs from the address dialled, e.g. "
        "when workers_dns resolves to pod IPs and the certificate names the Service."))
    placement_policy = Enum(["binpack", "spread"], default_value="binpack", config=True, help=(
        "binpack: best fit, fills devices before opening new ones (fewer GPUs busy); spread: most "
        "free device first (less contention)."))
    queue_timeout = Float(300.0, config=True, help=(
        "Seconds a kernel waits in the queue for a slice before its start fails with a message "
        "saying what was asked and what the pool had."))
    default_qos = Enum(list(QOS_NAMES), default_value="medium", config=True, help=(
        "QoS of kernels whose profile leaves it at 'medium' (the profile default): orders the queue "
        "(critical first) and exempts critical kernels from idle release."))
    idle_release = Float(0.0, config=True, help=(
        "Seconds idle (no utilization and no cell running) after which a vGPU kernel is warned, then "
        "shut down and its slice freed (0: never). QoS critical is never released this way."))
    idle_warning = Float(60.0, config=True, help="Seconds of warning before an idle kernel is shut down.")
    qos_release_grace = Float(30.0, config=True, help=(
        "QoS that holds: when a worker marks the lease of one of this server's kernels for release (the "
        "kernel idle past the worker's qos_release_idle while a request of a higher QoS waits there for "
        "its room), the kernel is warned and shut down this many seconds later unless it becomes active "
        "(critical kernels never)."))
    embedded_worker = Enum(["auto", "on", "off"], default_value="auto", config=True, help=(
        "auto: start a local worker (loopback, device auto) when no workers are configured; on: "
        "always (in addition to configured ones); off: never."))
    embedded_worker_args = List(Unicode(), default_value=[], config=True, help=(
        "Extra flags for the embedded worker, e.g. ['--host-vram', '8Gi'] (see tf-jupyter worker --help)."))
    kernelspec_profiles = Dict(key_trait=Unicode(), value_trait=Unicode(), default_value={}, config=True,
                               help=("Existing kernelspecs to run as vGPU kernels: {'python3': 'small'}. "
                                     "Old notebooks get a slice without edits."))
    refresh_interval = Float(5.0, config=True, help="Seconds between inventory refreshes of each worker.")
    lease_ttl = Integer(60, config=True, help=(
        "Lease TTL asked of workers, in seconds; the kernel launcher renews at a third of it."))
    kernel_env = List(Unicode(), default_value=list(DEFAULT_REMOTE_NAMES), config=True, help=(
        "Variables of the client's environment that a vGPU kernel on a remote worker gets: names, or "
        "patterns such as 'MY_*' (the kernelspec's own env always travels). A kernel on a worker on this "
        "machine (embedded or local) gets the client's whole environment, as a local kernel would, less the "
        "launcher's TF_VGPU_* secrets. Read from the config files by the kernel launcher."))
    profiles_dir = Unicode("", config=True, help=(
        "Kernelspec directory where `tf-jupyter profiles add` writes (default: this environment's "
        "share/jupyter/kernels)."))

    @validate("workers")
    def _check_workers(self, proposal: dict[str, Any]) -> list[str]:
        for address in proposal["value"]:
            if not address.startswith("unix:") and ":" not in address:
                raise ValueError(f"worker address {address!r} needs a port (HOST:PORT) or unix:/path")
        return list(proposal["value"])

    @validate("workers_dns")
    def _check_dns(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value and ":" not in value:
            raise ValueError(f"workers_dns {value!r} needs a port: NAME:PORT")
        return value


def config_file_paths() -> list[str]:
    """Where a Jupyter server looks for config files, most specific first (JupyterApp.config_file_paths)."""
    from jupyter_core.paths import jupyter_config_dir, jupyter_config_path

    paths = jupyter_config_path()
    if jupyter_config_dir() not in paths:
        paths.insert(0, jupyter_config_dir())
    return paths


def load_jupyter_config() -> Config:
    """The c.TfVgpu settings a Jupyter server started here would see, for clients without a server.

    The server's own files (`jupyter_config` then `jupyter_server_config`, `.py` then `.json` in each
    directory, so `.json` wins) are loaded by traitlets' own loader, as `jupyter server` loads them.
    `jupyter_server_config.d/*.json` (which the server reads only for jpserver_extensions) come first,
    so the main files win over them, as in the extension, which merges the server's config on top.
    """
    paths = config_file_paths()
    config = Config()
    for directory in reversed(paths):  # later (more specific) paths win
        confd = Path(directory) / "jupyter_server_config.d"
        if confd.is_dir():
            for path in sorted(confd.glob("*.json")):
                try:
                    config.merge(Config(json.loads(path.read_text())))
                except ValueError:
                    log.warning("tf-vgpu: %s is not valid JSON; its settings are ignored", path)
    for basename in ("jupyter_config", "jupyter_server_config"):
        for loaded, _filename in Application._load_config_files(basename, path=paths, log=log):
            config.merge(loaded)
    return config


def configured_kernel_env() -> list[str]:
    """`c.TfVgpu.kernel_env` as this machine's Jupyter configuration sets it: the variables that
    travel to a kernel on a remote worker (see tf_jupyter.kernel_env)."""
    return list(TfVgpu(config=load_jupyter_config()).kernel_env)
