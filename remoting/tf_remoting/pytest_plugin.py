"""Pytest fixtures that start a real worker process on 127.0.0.1 (host device).

Use with `pytest_plugins = ["tf_remoting.pytest_plugin"]`:

    async def test_something(tf_worker):
        async with tf_worker.client() as client:
            ...

`tf_worker` has two principals, `alice` (`tf_worker.token`) and `bob` (`tf_worker.other_token`).
Teardown stops the worker and kills every nanny and kernel it started, since those deliberately
outlive the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

import tf_remoting
from tf_remoting.client import RuntimeClient, pb
from tf_remoting.client.session import RemoteKernel
from tf_remoting.proto import SERVICE_NAME
from tf_remoting.worker.proctree import kill_descendants
from tf_remoting.worker.tenants import unreachable_for_others


class WorkerProcess:
    """A `python -m tf_remoting` subprocess with its own state directory and tokens."""

    def __init__(self, extra_args: list[str] | None = None, root: Path | None = None) -> None:
        # Short paths: unix socket paths are limited to 107 characters.
        self.root = root or Path(tempfile.mkdtemp(prefix="tfw-", dir="/tmp"))
        self.state_dir = self.root / "state"
        self.token = secrets.token_urlsafe(24)
        self.other_token = secrets.token_urlsafe(24)
        self.token_file = self.root / "tokens"
        self.token_file.write_text(f"alice {self.token}\nbob {self.other_token}\n")
        self.address_file = self.root / "address"
        self.log_path = self.root / "worker.log"
        self.extra_args = list(extra_args or [])
        self.listen = "127.0.0.1:0"
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        return [sys.executable, "-m", "tf_remoting", "--listen", self.listen, "--token-file",
                str(self.token_file), "--state-dir", str(self.state_dir), "--backend", "host",
                "--sample-interval", "0.25", "--address-file", str(self.address_file), *self.extra_args]

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        with contextlib.suppress(FileNotFoundError):
            self.address_file.unlink()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.address_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not start within {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        self.address = self.address_file.read_text().strip()
        # A restart listens on the same port, so clients resume where they were.
        self.listen = self.address
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> RuntimeClient:
        return RuntimeClient(self.address, token or self.token)

    def kill(self) -> None:
        """SIGKILL the worker (its kernels live on)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def kernel_states(self) -> dict[str, dict[str, object]]:
        out = {}
        for path in (self.state_dir / "kernels").glob("*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                out[path.parent.name] = json.loads(path.read_text())
        return out

    def cleanup(self) -> None:
        self.stop()
        for state in self.kernel_states().values():
            with contextlib.suppress(KeyError, TypeError, ValueError):  # what the kernel started, too
                kill_descendants(int(state["nanny_pid"]), timeout=2.0)  # type: ignore[call-overload]
            for key in ("kernel_pid", "nanny_pid"):
                with contextlib.suppress(ProcessLookupError, TypeError, ValueError):
                    os.kill(int(state[key]), signal.SIGKILL)  # type: ignore[call-overload]
        shutil.rmtree(self.root, ignore_errors=True)


async def unauthenticated_flood(worker: WorkerProcess, calls: int = 120,
                                body_size: int = 15 << 20) -> tuple[list[grpc.StatusCode], int]:
    """What a stranger who can reach the port can make the worker hold: `calls` parallel Allocate
    and StartKernel calls of about `body_size` bytes on one connection, half without a token and
    half with one the worker does not know. Returns their status codes and how far the worker's RSS
    rose meanwhile (its peak, in bytes)."""
    assert worker.proc is not None
    proc = psutil.Process(worker.proc.pid)
    big = "x" * body_size
    # Valid messages, sent as bytes: this process holds one copy of each.
    bodies = {"Allocate": pb.AllocateRequest(profile=big).SerializeToString(),
              "StartKernel": pb.StartKernelRequest(cwd=big).SerializeToString()}
    before = peak = proc.memory_info().rss
    done = asyncio.Event()

    async def watch_rss() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.02)

    codes: list[grpc.StatusCode] = []
    options = [("grpc.max_send_message_length", body_size + (1 << 20))]
    async with grpc.aio.insecure_channel(worker.address, options=options) as channel:
        stubs: dict[str, Any] = {name: channel.unary_unary(f"/{SERVICE_NAME}/{name}") for name in bodies}
        watcher = asyncio.create_task(watch_rss())

        async def one(i: int) -> None:
            metadata = (("authorization", "Bearer not-a-token-of-this-worker"),) if i % 2 else ()
            name = "Allocate" if i % 3 else "StartKernel"
            try:
                await stubs[name](bodies[name], metadata=metadata, timeout=60)
            except grpc.RpcError as exc:
                codes.append(exc.code())

        await asyncio.gather(*(one(i) for i in range(calls)))
        done.set()
        await watcher
    return codes, max(peak, proc.memory_info().rss) - before


@contextlib.asynccontextmanager
async def ready_kernel(client: RuntimeClient, lease_id: str, timeout: float = 60.0) -> AsyncIterator[RemoteKernel]:
    """Start a kernel in the lease and yield it connected and answering; its channels close after."""
    key = secrets.token_hex(16).encode()
    kernel = await client.start_kernel(lease_id, key=key)
    remote = RemoteKernel(client, kernel.id, key)
    await remote.connect()
    try:
        await remote.wait_ready(timeout=timeout)
        yield remote
    finally:
        await remote.close()


@contextlib.contextmanager
def python_open_to_tenants() -> Iterator[None]:
    """Let tenant uids run this Python: search permission (o+x, never listing) on the directories of
    the interpreter and of tf_remoting that others cannot enter (here: /root, 0700), for the duration,
    as an administrator installing for tenant uids would. Modes are restored after."""
    blocked = unreachable_for_others([sys.executable, sys.prefix, sys.base_prefix,
                                      os.path.dirname(tf_remoting.__file__)])
    modes = {path: os.stat(path).st_mode for path in blocked}
    try:
        for path, mode in modes.items():
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
        yield
    finally:
        for path, mode in modes.items():
            os.chmod(path, stat.S_IMODE(mode))


def tenant_worker(extra_args: list[str]) -> WorkerProcess:
    """A worker (not started) whose directory tenant kernels may pass (0711) and whose token file
    only the worker reads (0600): what `--tenant-uids` requires. Start it as root."""
    worker = WorkerProcess(["--host-vram", "4Gi", *extra_args])
    os.chmod(worker.root, 0o711)
    os.chmod(worker.token_file, 0o600)
    return worker


@pytest.fixture
def tf_worker_factory() -> Iterator[type[WorkerProcess]]:
    """Start more workers (or with other flags): `tf_worker_factory(["--oversubscription", "2"]).start()`."""
    started: list[WorkerProcess] = []

    class Factory(WorkerProcess):
        def __init__(self, extra_args: list[str] | None = None, root: Path | None = None) -> None:
            super().__init__(extra_args, root)
            started.append(self)

    yield Factory
    for worker in started:
        worker.cleanup()


@pytest.fixture
def tf_worker(tf_worker_factory: type[WorkerProcess]) -> WorkerProcess:
    """A running worker on 127.0.0.1 with the host device, 4 GiB offered as 'VRAM'."""
    return tf_worker_factory(["--host-vram", "4Gi"]).start()
