"""What the nanny and its relay loop share: DIR/state.json and how long a nanny lingers.

Its own module so that `nanny` (which must start the kernel before anything heavy loads) and
`nanny_loop` (zmq, protobuf) both import it without importing each other. Standard library only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

LINGER_AFTER_EXIT = 30.0  # seconds the nanny waits for a client to collect the last messages


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_state(directory: Path, status: str, kernel_pid: int, exit_code: int | None, socket_path: str) -> None:
    """DIR/state.json: how the worker (and a restarted one) learns the kernel's fate."""
    write_json_atomic(directory / "state.json", {
        "status": status, "nanny_pid": os.getpid(), "kernel_pid": kernel_pid,
        "exit_code": exit_code, "socket": socket_path, "time": time.time(),
    })
