"""The embedded worker: one local remoting runtime for this user, found or started on demand.

Who starts it and how long it lives:
- `tf-jupyter lab` / the server extension with no workers configured starts it (or reuses one
  already running) and stops it at server shutdown if it started it.
- A kernel launcher run outside a Jupyter server (jupyter console, papermill, VS Code) with no
  workers configured reuses a running one, or starts one that stops by itself after
  `IDLE_EXIT` seconds without leases, so nothing lingers.

It listens on 127.0.0.1 only, with a token file in its state directory (mode 0600), and is
recorded in Jupyter's runtime directory (`tf-vgpu-worker.json`) so every process finds the same
one. The worker is a separate process reached through the protocol like any other worker.

The record also says which install started the worker (its Python, the tf_remoting it runs, their
version) and with which flags: a worker of another install or with other flags is never reused
silently (`IncompatibleWorker` says what runs and what to do), and a server stops only a worker it
started itself, once no other client holds a lease on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

IDLE_EXIT = 600.0
RUNTIME_NAME = "tf-vgpu-worker.json"


class LocalWorkerError(RuntimeError):
    """The local worker could not be started or reused; the text says why and what to do."""


class IncompatibleWorker(LocalWorkerError):
    """A local worker runs, but from another install or with other flags than this one asks for."""


@dataclass(frozen=True)
class LocalWorker:
    address: str
    token_file: str
    pid: int
    state_dir: str
    backend_log: str
    # Which install started it, and how: never reuse a worker of another venv or with other flags.
    python: str = ""
    package: str = ""
    version: str = ""
    args: tuple[str, ...] = ()
    idle_exit: float = 0.0

    def mismatch(self, extra_args: list[str]) -> str:
        """'' when this worker is the one this install would start with extra_args; else what differs."""
        wanted = install_identity()
        differences = []
        if (self.python, self.package, self.version) != (wanted["python"], wanted["package"], wanted["version"]):
            differences.append(f"it runs tf_remoting {self.version or '(unknown version)'} from "
                               f"{self.package or '(an older install)'} with {self.python or '(unknown Python)'}, "
                               f"this is tf_remoting {wanted['version']} from {wanted['package']}")
        if list(self.args) != list(extra_args):
            differences.append(f"it was started with the flags {list(self.args)}, embedded_worker_args asks for "
                               f"{list(extra_args)}")
        return "; ".join(differences)


def install_identity() -> dict[str, str]:
    """The Python and the tf_remoting package a worker started from here would run."""
    import tf_remoting

    return {"python": sys.executable, "package": str(Path(tf_remoting.__file__).parent),
            "version": tf_remoting.__version__}


def _runtime_file() -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    path = Path(jupyter_runtime_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path / RUNTIME_NAME


def default_state_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "tfw"  # short: unix socket paths live below it


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "tf_remoting" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def find_local_worker() -> LocalWorker | None:
    """The running local worker recorded in the runtime directory, if its process lives."""
    try:
        data = json.loads(_runtime_file().read_text())
        data["args"] = tuple(data.get("args") or ())
        known = {f.name for f in fields(LocalWorker)}
        worker = LocalWorker(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None
    return worker if _alive(worker.pid) else None


def _exit_reason(log_path: Path, start: int) -> str:
    """The worker's own words for why it exited: its error line (a usage error), else its last line."""
    with contextlib.suppress(OSError):
        with open(log_path, "rb") as log:
            log.seek(start)
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        if errors or lines:
            return (errors or lines)[-1]
    return ""


def start_local_worker(extra_args: list[str] | None = None, idle_exit: float = 0.0,
                       state_dir: Path | None = None, timeout: float = 60.0
                       ) -> tuple[LocalWorker, subprocess.Popen[bytes]]:
    """Start a local worker process (its own session, so it outlives a launcher that started it)."""
    state = state_dir or default_state_dir()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    address_file = state / "address"
    with contextlib.suppress(FileNotFoundError):
        address_file.unlink()
    log_path = state / "worker.log"
    args = [sys.executable, "-m", "tf_remoting", "--listen", "127.0.0.1:0", "--state-dir", str(state),
            "--address-file", str(address_file), "--idle-exit", str(idle_exit), *(extra_args or [])]
    with open(log_path, "ab") as log:
        log_start = log.tell()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if proc.poll() is not None:
            reason = _exit_reason(log_path, log_start)
            raise LocalWorkerError(f"the local vGPU worker exited at start with code {proc.returncode}"
                                   f"{': ' + reason if reason else ''} (flags {list(extra_args or [])}, "
                                   f"from c.TfVgpu.embedded_worker_args; log {log_path})")
        if time.monotonic() > deadline:
            proc.kill()
            raise LocalWorkerError(f"the local vGPU worker did not start within {timeout:.0f} s; see {log_path}")
        time.sleep(0.05)
    token_file = state / "tokens"
    for arg, value in zip(args, args[1:], strict=False):
        if arg == "--token-file":
            token_file = Path(value)
    worker = LocalWorker(address=address_file.read_text().strip(), token_file=str(token_file), pid=proc.pid,
                         state_dir=str(state), backend_log=str(log_path), args=tuple(extra_args or []),
                         idle_exit=idle_exit, **install_identity())
    tmp = _runtime_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(worker)))
    os.replace(tmp, _runtime_file())
    return worker, proc


def ensure_local_worker(extra_args: list[str] | None = None, idle_exit: float = IDLE_EXIT
                        ) -> tuple[LocalWorker, subprocess.Popen[bytes] | None]:
    """The running local worker, or a new one; a file lock keeps two callers from starting two.

    Raises IncompatibleWorker when the running one is of another install or has other flags (one
    worker per user owns the devices: a second one cannot start beside it), LocalWorkerError when a
    new one does not start.
    """
    lock_path = _runtime_file().with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = find_local_worker()
            if found is not None:
                differs = found.mismatch(list(extra_args or []))
                if differs:
                    raise IncompatibleWorker(
                        f"a local vGPU worker (pid {found.pid}, {found.address}) is already running, but {differs}; "
                        f"it is not used, so that kernels never run under other settings than configured. Stop it "
                        f"once its kernels are done (kill {found.pid}), or make embedded_worker_args match")
                return found, None
            return start_local_worker(extra_args, idle_exit=idle_exit)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_local_worker(worker: LocalWorker, proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the worker we started and forget it in the runtime directory."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(OSError, ValueError):
        if json.loads(_runtime_file().read_text()).get("pid") == worker.pid:
            _runtime_file().unlink()
