"""Fan-out of pool messages (samples, events, worker up/down, queue changes) to WebSocket subscribers.

Each subscriber gets a bounded queue; a slow one loses its oldest messages, never blocks the pool.
Plain asyncio: the WebSocket handler (tf_jupyter.handlers.EventsHandler) drains a queue into its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

__all__ = ["Events"]

Message = dict[str, Any]


class Events:
    """Subscribers and the messages broadcast to them (the shapes are in openapi.yaml)."""

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self.subscribers: list[asyncio.Queue[Message]] = []

    def subscribe(self) -> asyncio.Queue[Message]:
        queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=self.maxsize)
        self.subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message]) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(queue)

    def broadcast(self, message: Message) -> None:
        for queue in self.subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    def emit(self, kind: str, message: str, kernel_id: str = "", **extra: Any) -> None:
        """An event of the Jupyter side (queued, idle release...) on the same stream as workers'."""
        self.broadcast({"type": "event", "kind": kind, "message": message, "kernel_id": kernel_id,
                        "time": time.time(), "source": "server", **extra})
