"""The jupyter_server extension: the pool, the embedded worker, the API, idle release.

Installed with the wheel and enabled by `etc/jupyter/jupyter_server_config.d/tf_jupyter.json`,
so plain `jupyter lab` loads it. Settings are `c.TfVgpu.*` (tf_jupyter.config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp

from tf_jupyter.config import TfVgpu, load_jupyter_config
from tf_jupyter.idle import IdleRelease, QosRelease, qos_wanted
from tf_jupyter.kernelspecs import UnknownProfile, find_profile
from tf_jupyter.local_worker import LocalWorker, LocalWorkerError, ensure_local_worker, stop_local_worker
from tf_jupyter.pool import Pool, Tls
from tf_jupyter.profiles import BUILTIN_PROFILES, Profile
from tf_jupyter.provisioner import forget_pending_kernel
from tf_jupyter.tokens import client_token
from tf_remoting.client import RemotingError

log = logging.getLogger("tf_jupyter")


class TfVgpuApp(ExtensionApp):
    name = "tf_jupyter"
    description = "vGPU kernels: fractional GPUs from a pool of workers"
    classes = [TfVgpu]
    load_other_extensions = True

    settings_obj: TfVgpu
    pool: Pool | None = None
    pool_ready: asyncio.Event  # set once the pool is up, or failed to come up
    pool_error: str = ""  # why there is no pool: vGPU kernel starts fail with this sentence
    local_worker: LocalWorker | None = None
    _local_proc: Any = None
    _idle_task: asyncio.Task[None] | None = None
    _qos_task: asyncio.Task[None] | None = None
    _metrics_task: asyncio.Task[None] | None = None
    _released: set[asyncio.Task[None]]  # shutdowns of kernels an admin released (kept referenced)

    @property
    def server(self) -> ServerApp:
        """The Jupyter server this extension runs in (jupyter_server sets it before initialize_settings)."""
        assert self.serverapp is not None, "the extension is not loaded by a Jupyter server yet"
        return self.serverapp

    def initialize_settings(self) -> None:
        # The same files the kernel launcher reads (jupyter_server_config.d/*.json included, which
        # traitlets does not load for us), then the server's own config on top.
        config = load_jupyter_config()
        config.merge(self.server.config)
        self.settings_obj = TfVgpu(parent=self.server, config=config)
        self.settings["tf_vgpu"] = self
        self.pool_ready = asyncio.Event()  # set once the pool is up, or failed (then pool_error says why)
        self._map_kernelspecs()

    def initialize_handlers(self) -> None:
        from tf_jupyter.handlers import routes

        self.handlers.extend(routes())

    def profiles(self) -> list[Profile]:
        """Every vGPU profile Jupyter can see: vgpu-* kernelspecs in any kernel directory."""
        found = []
        ksm: Any = self.server.kernel_spec_manager
        for spec in ksm.get_all_specs().values():
            metadata = spec.get("spec", {}).get("metadata", {})
            if "tf_vgpu" in metadata and metadata.get("kernel_provisioner", {}).get("provisioner_name") == "tf-vgpu":
                try:
                    found.append(Profile.from_metadata(metadata["tf_vgpu"]))
                except ValueError:
                    continue
        unique = {p.name: p for p in found}
        return sorted(unique.values(), key=lambda p: (p.vram, p.name)) or list(BUILTIN_PROFILES.values())

    def _map_kernelspecs(self) -> None:
        """Seamless onboarding: run mapped existing kernelspecs (python3 -> small) as vGPU kernels."""
        mapping: dict[str, Profile] = {}
        for kernel_name, profile_name in self.settings_obj.kernelspec_profiles.items():
            try:
                mapping[kernel_name] = find_profile(profile_name)
            except UnknownProfile as exc:
                self.log.error("tf-vgpu: kernelspec_profiles[%r]: %s; that kernelspec stays as it is", kernel_name, exc)
        if not mapping:
            return
        ksm: Any = self.server.kernel_spec_manager
        original = ksm._get_kernel_spec_by_name  # what both get_kernel_spec and get_all_specs call

        def get_kernel_spec_by_name(kernel_name: str, resource_dir: str) -> Any:
            spec = original(kernel_name, resource_dir)
            profile = mapping.get(kernel_name)
            if profile is not None:
                spec.argv = ["python", "-m", "tf_jupyter.launcher", "--profile", profile.name,
                             "-f", "{connection_file}"]
                spec.display_name = f"{spec.display_name} · vGPU {profile.slice_text}"
                spec.metadata = {**spec.metadata, "kernel_provisioner": {
                    "provisioner_name": "tf-vgpu", "config": {"profile": profile.name}},
                    "tf_vgpu": profile.to_metadata()}
                spec.interrupt_mode = "signal"
            return spec

        ksm._get_kernel_spec_by_name = get_kernel_spec_by_name
        log.info("tf-vgpu: kernelspecs run as vGPU kernels: %s", {k: p.name for k, p in mapping.items()})

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        try:
            await self._start_pool()
        finally:
            self.pool_ready.set()

    async def _start_pool(self) -> None:
        s = self.settings_obj
        addresses = list(s.workers)
        token_file = s.token_file
        if s.embedded_worker == "on" or (s.embedded_worker == "auto" and not addresses and not s.workers_dns):
            try:
                self.local_worker, self._local_proc = await asyncio.to_thread(
                    ensure_local_worker, list(s.embedded_worker_args), 0.0)
            except LocalWorkerError as exc:
                # One line, the worker's own words; vGPU kernels then fail saying this, rather than
                # run on some other worker under other settings than configured.
                message = f"the embedded vGPU worker is not available: {exc}"
                self.log.error("tf-vgpu: %s", message)
                self.pool_error = message
                if not addresses and not s.workers_dns:
                    return
        local = self.local_worker
        if local is not None:
            addresses.append(local.address)
            token_file = token_file or local.token_file
            how = ("started by this server, stopped with it unless other clients still use it" if self._local_proc
                   else f"already running as pid {local.pid}, same install and flags: reused, and left running "
                   "when this server stops")
            with contextlib.suppress(OSError):
                backend_line = next((line for line in open(local.backend_log)
                                     if "backend " in line and "worker " in line), "")
                self.log.info("tf-vgpu: embedded worker at %s (%s); %s", local.address, how, backend_line.strip())
        if s.token_source == "file" and not token_file:
            self.pool_error = f"c.TfVgpu.token_file is not set; the workers {addresses} cannot be reached"
            self.log.error("tf-vgpu: %s", self.pool_error)
            return
        try:
            token, follow = client_token(s.token_source, token_file)
        except ValueError as exc:
            self.pool_error = f"{exc}; the workers {addresses} cannot be reached"
            self.log.error("tf-vgpu: %s", self.pool_error)
            return
        self.pool = Pool(addresses, token, dns=s.workers_dns,
                         tls=Tls(s.tls_ca, s.tls_cert, s.tls_key, s.tls_server_name), policy=s.placement_policy,
                         refresh_interval=s.refresh_interval, queue_timeout=s.queue_timeout, lease_ttl=s.lease_ttl)
        self.pool.default_qos = s.default_qos
        self._released = set()
        self.pool.on_released_by_admin = self._on_released_by_admin
        if follow:
            self.pool.follow_token_file(follow)
        await self.pool.start()
        for w in self.pool.workers.values():
            if w.up and w.inventory is not None:
                devices = ", ".join(f"{d.name} ({d.uuid})" for d in w.inventory.devices)
                self.log.info("tf-vgpu: worker %s up, backend %s: %s", w.address, w.inventory.backend, devices)
            else:
                self.log.warning("tf-vgpu: worker %s is down: %s", w.address, w.error)
        if s.idle_release > 0:
            self._idle_task = asyncio.create_task(self._idle_loop())
        self._qos_task = asyncio.create_task(self._qos_loop())
        self._metrics_task = asyncio.create_task(self._metrics_loop())

    async def _metrics_loop(self) -> None:
        from tf_jupyter import metrics

        while True:
            if self.pool is not None:
                metrics.update(self.pool)
            await asyncio.sleep(1.0)

    async def _idle_loop(self) -> None:
        """Warn, then shut down kernels whose slice showed no utilization for idle_release seconds."""
        assert self.pool is not None
        km: Any = self.server.kernel_manager

        async def shutdown(kernel_id: str) -> None:
            await km.shutdown_kernel(kernel_id)

        idle = IdleRelease(self.pool.kernels, self.pool.events, shutdown, self.settings_obj.idle_release,
                           self.settings_obj.idle_warning)
        while True:
            await asyncio.sleep(idle.interval)
            try:
                await idle.check()
            except Exception:
                self.log.exception("tf-vgpu: idle release check failed")

    def _on_released_by_admin(self, kernel_id: str, by: str) -> None:
        task = asyncio.create_task(self._shut_down_released(kernel_id, by))
        self._released.add(task)
        task.add_done_callback(self._released.discard)

    async def _shut_down_released(self, kernel_id: str, by: str) -> None:
        """An admin released this kernel's lease at its worker, which ended the kernel there: shut it
        down here too, as idle release does, so that Jupyter's restarter does not start it again on
        a new lease (taking back the slice the admin freed)."""
        assert self.pool is not None
        self.pool.events.emit("admin_release", f"{by}, an admin of this GPU pool, released this kernel's slice: "
                              "the kernel is shut down (its variables are gone); start it again when you need it",
                              kernel_id=kernel_id, by=by)
        km: Any = self.server.kernel_manager
        if kernel_id not in km:
            return
        try:
            await km.shutdown_kernel(kernel_id, now=True)
        except Exception:  # whatever the kernel manager raised: the worker ended the kernel already
            self.log.exception("tf-vgpu: kernel %s, released by %s: shutdown failed", kernel_id, by)

    async def _qos_loop(self) -> None:
        """QoS that holds: every few seconds, from the workers' last inventories, warn and then shut
        down our kernels whose lease their worker marked for release (idle, and a waiting
        higher-QoS request needs the room: tf_jupyter.idle.QosRelease)."""
        assert self.pool is not None
        pool = self.pool
        km: Any = self.server.kernel_manager

        async def shutdown(kernel_id: str) -> None:
            await km.shutdown_kernel(kernel_id)

        qos = QosRelease(pool.kernels, pool.events, shutdown, self.settings_obj.qos_release_grace)
        interval = min(5.0, max(0.5, self.settings_obj.refresh_interval))
        while True:
            await asyncio.sleep(interval)
            try:
                inventories = {a: w.inventory for a, w in pool.workers.items() if w.up and w.inventory is not None}
                await qos.check(qos_wanted(pool.kernels, inventories))
            except Exception:
                self.log.exception("tf-vgpu: QoS release check failed")

    async def stop_extension(self) -> None:
        for task in (self._idle_task, self._qos_task, self._metrics_task):
            if task is not None:
                task.cancel()
        km: Any = getattr(self.serverapp, "kernel_manager", None)
        for kernel_id in list(getattr(km, "_pending_kernels", {})):
            forget_pending_kernel(km, kernel_id)  # failed starts: nothing for cleanup_kernels to trip on
        others: list[str] = []
        if self.pool is not None:
            # Extensions stop before the server shuts its kernels down: shut our vGPU kernels down
            # now, through the kernel manager (launcher, kernel, lease), while the worker still runs.
            await self._shut_down_vgpu_kernels()
            for k in list(self.pool.kernels.values()):
                await self.pool.release(k.worker, k.lease_id)
            if self.local_worker is not None and self._local_proc is not None:
                others = await self._other_leases(self.local_worker.address)
            await self.pool.stop()
        if self.local_worker is not None and self._local_proc is not None:
            if others:
                self.log.warning("tf-vgpu: the embedded worker (pid %s) is left running: other clients still hold "
                                 "%d lease(s) on it (%s); stop it with kill %s once they are done",
                                 self.local_worker.pid, len(others), ", ".join(others), self.local_worker.pid)
            else:
                await asyncio.to_thread(stop_local_worker, self.local_worker, self._local_proc)

    async def _shut_down_vgpu_kernels(self, timeout: float = 30.0) -> None:
        from jupyter_core.utils import ensure_async

        assert self.pool is not None
        km: Any = getattr(self.serverapp, "kernel_manager", None)
        if km is None:
            return
        ids = [kernel_id for kernel_id in self.pool.kernels if kernel_id in km]
        if not ids:
            return
        self.log.info("tf-vgpu: shutting down %d vGPU kernel(s) before the workers are left", len(ids))
        shutdowns = asyncio.gather(*(ensure_async(km.shutdown_kernel(kernel_id)) for kernel_id in ids),
                                   return_exceptions=True)
        try:
            results = await asyncio.wait_for(shutdowns, timeout)
        except TimeoutError:
            self.log.warning("tf-vgpu: vGPU kernels still shutting down after %.0f s; their leases are released",
                             timeout)
            return
        for kernel_id, result in zip(ids, results, strict=True):
            if isinstance(result, Exception):
                self.log.warning("tf-vgpu: kernel %s: shutdown failed (%s); its lease is released", kernel_id, result)

    async def _other_leases(self, address: str) -> list[str]:
        """Leases on the embedded worker that are not this server's (standalone clients')."""
        assert self.pool is not None
        state = self.pool.workers.get(address)
        if state is None:
            return []
        mine = {k.lease_id for k in self.pool.kernels.values()}
        try:
            return [lease.id for lease in await state.client.list_leases() if lease.id not in mine]
        except RemotingError as exc:
            self.log.warning("tf-vgpu: cannot ask the embedded worker for its leases (%s); it is left running",
                             exc.message)
            return ["(unknown)"]

