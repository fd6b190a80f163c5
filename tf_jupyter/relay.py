"""The relay: a kernel's ZMQ ports on 127.0.0.1, carried over one Channels stream to the worker.

It binds the ports of a Jupyter connection file exactly as a local kernel would (ROUTER for
shell, control, stdin and heartbeat; XPUB, a PUB that hears subscriptions, for iopub), so any
Jupyter client connects to it unchanged. Messages are relayed opaque: never decoded, never
re-signed. This is the one relay every path uses (the provisioner, `jupyter console`, papermill,
VS Code...).

Output published before the first client subscribed to iopub is held, then sent when it
subscribes. A PUB socket drops it, and a client whose iopub connected a moment after its shell
(the "slow joiner"; `jupyter console` does not check, unlike `wait_for_ready`) then waited forever
for the status of a cell whose output had gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, cast

import zmq
import zmq.asyncio

from tf_remoting.client import KernelChannels, KernelClosed
from tf_remoting.proto import pb

log = logging.getLogger("tf_jupyter.relay")

HOLD_MAX = 10_000  # iopub messages held until the first subscription; beyond it, the oldest go

ROUTED_PORTS = {
    pb.CHANNEL_SHELL: "shell_port",
    pb.CHANNEL_CONTROL: "control_port",
    pb.CHANNEL_STDIN: "stdin_port",
    pb.CHANNEL_HB: "hb_port",
}


def _send_now(sock: zmq.asyncio.Socket, parts: list[bytes]) -> None:
    """Send at once; errors raise here instead of hiding in a future.

    Through the asyncio socket's own send: a send makes ZMQ process the socket's pending commands,
    which can consume the edge of its file descriptor that would have woken a waiting recv (a
    request that arrived meanwhile then sat unread forever). pyzmq's send reschedules that recv;
    a send on the plain socket underneath did not (a lost first reply, seen in the load test).
    """
    # with NOBLOCK and no send waiting (we never wait on one) the future is already done
    cast("asyncio.Future[Any]", sock.send_multipart(parts, zmq.NOBLOCK)).result()


class Relay:
    """Bind the connection file's ports; pump frames between them and `channels`."""

    def __init__(self, connection: dict[str, Any]) -> None:
        if connection.get("transport", "tcp") != "tcp":
            raise ValueError("only the tcp transport is supported by the vGPU kernel relay")
        self.connection = connection
        self.ctx = zmq.asyncio.Context()
        self.sockets: dict[int, zmq.asyncio.Socket] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._held: collections.deque[list[bytes]] | None = collections.deque()  # None once subscribed
        self.held_dropped = 0

    def bind(self) -> None:
        ip = self.connection.get("ip") or "127.0.0.1"
        for channel, port_name in ROUTED_PORTS.items():
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its identity
            sock.bind(f"tcp://{ip}:{self.connection[port_name]}")
            self.sockets[channel] = sock
        pub = self.ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 0)  # never drop output: the worker side is already bounded
        pub.bind(f"tcp://{ip}:{self.connection['iopub_port']}")
        self.sockets[pb.CHANNEL_IOPUB] = pub

    async def run(self, channels: KernelChannels) -> int | None:
        """Relay until the kernel exits; returns its exit code."""
        for channel in ROUTED_PORTS:
            self._tasks.append(asyncio.create_task(self._upstream(channel, channels)))
        self._tasks.append(asyncio.create_task(self.serve_subscriptions()))
        try:
            await self._downstream(channels)
        except KernelClosed:
            pass
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return channels.exit_code

    async def _upstream(self, channel: int, channels: KernelChannels) -> None:
        sock = self.sockets[channel]
        while True:
            parts = await sock.recv_multipart()
            await channels.send(channel, parts)
            # Drain what else is already queued without yielding to the loop per message.
            while True:
                # with NOBLOCK the future is already done (zmq.asyncio returns a Future, typed Awaitable)
                pending = cast("asyncio.Future[list[bytes]]", sock.recv_multipart(zmq.NOBLOCK))
                try:
                    parts = pending.result()
                except zmq.Again:
                    break
                await channels.send(channel, parts)

    async def serve_subscriptions(self) -> None:
        """Read iopub subscriptions; at the first, send what was held."""
        pub = self.sockets[pb.CHANNEL_IOPUB]
        while True:
            event = await pub.recv()
            if event[:1] == b"\x01" and self._held is not None:
                held, self._held = self._held, None
                for parts in held:
                    self._deliver(pb.CHANNEL_IOPUB, parts)

    async def _downstream(self, channels: KernelChannels) -> None:
        channels.deliver_to(self._deliver)
        await channels.recv()  # returns only at the end, with KernelClosed

    def _deliver(self, channel: int, parts: list[bytes]) -> None:
        sock = self.sockets.get(channel)
        if sock is None:
            return
        if channel == pb.CHANNEL_IOPUB and self._held is not None:  # nobody subscribed yet
            if len(self._held) == HOLD_MAX:
                self._held.popleft()
                self.held_dropped += 1
                if self.held_dropped == 1:
                    log.warning("no client subscribed to iopub yet: dropping the oldest held output")
            self._held.append(parts)
            return
        try:
            _send_now(sock, parts)
        except zmq.Again:
            log.warning("dropping a message for a peer that is not reading (channel %d)", channel)
        except zmq.ZMQError as exc:  # e.g. unroutable identity after a client left
            log.debug("could not deliver on channel %d: %s", channel, exc)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.ctx.term()
