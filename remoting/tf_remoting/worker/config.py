"""Worker settings: one dataclass, filled from a TOML file and then from command-line flags.

Every field is a flag of `tf-jupyter worker` (underscores become dashes) and a key of the config
file (`tf-jupyter worker --config worker.toml`). Flags win over the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tf_remoting.quantities import QuantityError, parse_bytes

ISOLATION_MODES = ("soft", "mps", "exclusive")
BACKENDS = ("auto", "nvml", "host")
WATCHDOG_ACTIONS = ("warn", "interrupt", "kill")


@dataclass
class WorkerConfig:
    listen: str = field(default="127.0.0.1:50051", metadata={
        "help": "Address to serve on: HOST:PORT (TCP, port 0 picks one) or unix:/path/to.sock. "
                "Default is loopback only."})
    token_file: str = field(default="", metadata={
        "help": "File of tokens, one per line: 'TOKEN' (principal 'default') or 'PRINCIPAL TOKEN'. "
                "Re-read when it changes, so tokens rotate without a restart. Default: STATE_DIR/tokens, "
                "created with one random token (mode 0600) when it does not exist."})
    hub_api_url: str = field(default="", metadata={
        "help": "JupyterHub API URL (e.g. http://hub:8081/hub/api): a token the token file does not know is "
                "shown to the hub (GET /user), and its user is the principal 'hub:NAME', with the hub's groups."})
    hub_cache_seconds: float = field(default=60.0, metadata={
        "help": "Seconds a hub user confirmed by the hub keeps working while the hub cannot be reached "
                "(the hub is asked again after at most 10 s)."})
    hub_required_scope: str = field(default="custom:tf-vgpu:use", metadata={
        "help": "Scope a hub token must carry to use this worker (empty: any hub user's token)."})
    hub_ca: str = field(default="", metadata={"help": "PEM CA bundle for an https hub_api_url."})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain; with --tls-key turns TLS on."})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert."})
    tls_client_ca: str = field(default="", metadata={
        "help": "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."})
    backend: str = field(default="auto", metadata={
        "help": "Device backend: auto (NVML when a driver answers, else the host device), nvml, host."})
    state_dir: str = field(default="", metadata={
        "help": "Directory for the lease ledger and kernel directories "
                "(default: $XDG_STATE_HOME/tf-jupyter/worker or ~/.local/state/tf-jupyter/worker)."})
    sample_interval: float = field(default=1.0, metadata={"help": "Seconds between telemetry samples."})
    isolation: str = field(default="soft", metadata={
        "help": "Default isolation mode for GPU slices: soft, mps or exclusive (host device: always host)."})
    oversubscription: float = field(default=1.0, metadata={
        "help": "Compute oversubscription ratio: a device's leasable compute is 100 % times this. "
                "VRAM is never oversubscribed."})
    metrics_port: int = field(default=-1, metadata={
        "help": "Port for Prometheus /metrics on --metrics-addr; -1 turns it off, 0 picks one."})
    metrics_addr: str = field(default="127.0.0.1", metadata={"help": "Address for /metrics."})
    lease_ttl: int = field(default=60, metadata={
        "help": "Default lease TTL in seconds: a lease not renewed for this long is reclaimed."})
    watchdog_action: str = field(default="kill", metadata={
        "help": "How far the watchdog escalates over the VRAM limit: warn, interrupt or kill."})
    watchdog_grace: float = field(default=5.0, metadata={
        "help": "Seconds over the limit between warning, interrupt and kill."})
    watchdog_warn_ratio: float = field(default=0.9, metadata={
        "help": "Fraction of the VRAM limit at which a near-limit warning is sent."})
    host_vram: str = field(default="", metadata={
        "help": "Host device only: how much RAM to offer as 'VRAM' (e.g. 8Gi); default all of it."})
    shares_filesystem: bool = field(default=True, metadata={
        "help": "Kernels start in the cwd the client asks for (the client and worker share a "
                "filesystem). Off: each kernel starts in a per-lease directory on the worker."})
    kernel_environments: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "More kernel environments, name -> argv with {connection_file} (config file only)."})
    idle_exit: float = field(default=0.0, metadata={
        "help": "Stop the worker after this many seconds without leases (0: never). Used by the "
                "local worker that a kernel launcher starts on demand."})
    replay_messages: int = field(default=50_000, metadata={
        "help": "Messages kept per channel per kernel for resuming clients."})
    replay_bytes: str = field(default="256Mi", metadata={
        "help": "Bytes kept per channel per kernel for resuming clients."})
    tenant_uids: str = field(default="", metadata={
        "help": "FIRST-LAST: run each principal's kernels under a uid of its own from this range "
                "(remembered in the ledger), with a private 0700 home in STATE_DIR/homes. Needs root "
                "(or CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_KILL, CAP_SETGID, CAP_SETUID). Default: kernels run "
                "as the worker's user."})
    tenant_accounts: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Principals that run as an existing account of this host instead of a uid from "
                "tenant_uids: principal -> account name (config file only; needs tenant_uids)."})
    admin_principals: list[str] = field(default_factory=list, metadata={
        "help": "Principals that may see every principal's leases and kernels (GetInventory, ListLeases "
                "all_principals, Watch all_leases, /metrics per-lease series); everyone else sees their own "
                "and others' only as used capacity."})
    admin_groups: list[str] = field(default_factory=list, metadata={
        "help": "Groups (as the identity source reports them, e.g. JupyterHub groups) whose members are "
                "admins as with admin_principals."})
    qos_release_idle: float = field(default=60.0, metadata={
        "help": "QoS that holds: a lease idle this many seconds (no slice busy, no cell running) whose room "
                "a waiting request of a higher QoS needs is marked for release (any principal's; critical "
                "never); its owner's Jupyter server warns the kernel, then shuts it down (c.TfVgpu."
                "qos_release_grace). 0: never."})
    quotas: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "The most each principal may hold on this worker ([worker.quotas] in the config file): "
                "default, principals.NAME and groups.NAME entries of vram, compute, kernels, devices. "
                "See tf_remoting/worker/quotas.py and the admin guide for how a principal's quota is found."})

    def validate(self) -> None:
        """Raise ValueError with a sentence for the first bad setting."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_MODES)}, not {self.isolation!r}")
        if self.watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(f"watchdog_action must be one of {', '.join(WATCHDOG_ACTIONS)}")
        if not 0.05 <= self.sample_interval <= 60:
            raise ValueError("sample_interval must be between 0.05 and 60 seconds")
        if not 1.0 <= self.oversubscription <= 100:
            raise ValueError("oversubscription must be between 1 and 100")
        if not 0 <= self.qos_release_idle <= 86400:  # also refuses NaN
            raise ValueError("qos_release_idle must be between 0 (never) and 86400 seconds")
        if not 1 <= self.lease_ttl <= 86400:
            raise ValueError("lease_ttl must be between 1 and 86400 seconds")
        if self.hub_api_url and not self.hub_api_url.startswith(("http://", "https://")):
            raise ValueError(f"hub_api_url must be an http:// or https:// URL, not {self.hub_api_url!r}")
        if not 0 <= self.hub_cache_seconds <= 86400:
            raise ValueError("hub_cache_seconds must be between 0 and 86400")
        if self.hub_ca and not self.hub_api_url.startswith("https://"):
            raise ValueError("hub_ca is for an https:// hub_api_url")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        for name in ("admin_principals", "admin_groups"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"{name} must be a list of non-empty names, not {value!r}")
        from tf_remoting.worker.quotas import Quotas

        Quotas.parse(self.quotas)
        if self.tenant_uids:
            from tf_remoting.worker.tenants import parse_uid_range

            parse_uid_range(self.tenant_uids)
        if self.tenant_accounts and not self.tenant_uids:
            raise ValueError("tenant_accounts needs tenant_uids (the range for principals without an account)")
        if not isinstance(self.tenant_accounts, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.tenant_accounts.items()):
            raise ValueError("tenant_accounts maps principal names to account names, e.g. {alice = \"alice\"}")
        try:
            if self.host_vram:
                parse_bytes(self.host_vram)
            parse_bytes(self.replay_bytes)
        except QuantityError as exc:
            raise ValueError(str(exc)) from exc

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        import os

        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "tf-jupyter" / "worker"

    @property
    def token_path(self) -> Path:
        return Path(self.token_file).expanduser() if self.token_file else self.state_path / "tokens"

    @classmethod
    def from_file(cls, path: str | Path) -> WorkerConfig:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data.get("worker", data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(k.replace("-", "_") for k in data) - known)
        if unknown:
            raise ValueError(f"unknown worker setting(s): {', '.join(unknown)}")
        return cls(**{k.replace("-", "_"): v for k, v in data.items()})
