"""What the nanny and its relay loop share: DIR/state.json, DIR/activity.json and how long a nanny lingers.

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


# DIR/activity.json: whether the kernel runs a cell, and since when (written by the nanny on each
# change, read by the worker's telemetry tick for Lease.last_active: a kernel running a cell on the
# CPU is not idle although its GPU slice is).
ACTIVITY_FILE = "activity.json"
_DELIMITER = b"<IDS|MSG>"


def execution_state(parts: list[bytes]) -> str | None:
    """'busy' or 'idle' when an iopub message is the kernel's status about an execute_request, else None.

    Only the small header frames are looked at, and parsed only for status messages."""
    try:
        i = parts.index(_DELIMITER)
    except ValueError:
        return None
    if len(parts) < i + 6 or b'"status"' not in parts[i + 2] or b'"execute_request"' not in parts[i + 3]:
        return None
    try:
        header, parent, content = json.loads(parts[i + 2]), json.loads(parts[i + 3]), json.loads(parts[i + 5])
        if header.get("msg_type") != "status" or parent.get("msg_type") != "execute_request":
            return None
        state = content.get("execution_state")
    except (ValueError, AttributeError):
        return None
    return state if state in ("busy", "idle") else None


def write_activity(directory: Path, busy: bool) -> None:
    write_json_atomic(directory / ACTIVITY_FILE, {"busy": busy, "time": time.time()})


def read_activity(directory: Path) -> tuple[bool, float] | None:
    """(busy, unix time of the last change), or None when the kernel has not run a cell yet."""
    try:
        data = json.loads((directory / ACTIVITY_FILE).read_text())
        return bool(data["busy"]), float(data["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
