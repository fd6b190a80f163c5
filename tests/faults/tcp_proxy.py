"""A small TCP proxy for fault tests: forwards 127.0.0.1:<port> to a target, and can cut the network.

    proxy = TcpProxy("127.0.0.1:50051")
    await proxy.start()            # proxy.address == "127.0.0.1:<port>"
    await proxy.cut()              # live connections are reset, new ones refused (or blackholed)
    proxy.restore()                # forwarding again

It runs on the test's event loop. `cut(mode="refuse")` accepts new connections and resets them at
once (what a peer that is gone but whose host answers looks like); `cut(mode="blackhole")` accepts
them and never forwards a byte (packets dropped on the way): those are reset on `restore()` so that
clients retry at once instead of waiting for their connect or keepalive timeout. The listening port
stays the same throughout, so a client can reconnect to the same address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class TcpProxy:
    def __init__(self, target: str, listen_host: str = "127.0.0.1") -> None:
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host.strip("[]"), int(port)
        self.listen_host = listen_host
        self.address = ""
        self.mode = "forward"  # forward | refuse | blackhole
        self.connections = 0  # accepted in total
        self.refused = 0  # accepted and reset (or held) while cut
        self.bytes_forwarded = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self.listen_host}:{port}"
        return self

    @property
    def is_cut(self) -> bool:
        return self.mode != "forward"

    async def cut(self, mode: str = "refuse") -> int:
        """Reset every live connection; refuse or blackhole new ones. Returns how many were reset."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self.mode = mode
        live = list(self._live)
        for writer in live:
            _reset(writer)
        self._live.clear()
        await asyncio.sleep(0)  # let the pipes see the reset
        return len(live)

    def restore(self) -> None:
        self.mode = "forward"
        for writer in list(self._held):
            _reset(writer)
        self._held.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._live) + list(self._held):
            _reset(writer)
        self._live.clear()
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            self.refused += 1
            _reset(writer)
            return
        if self.mode == "blackhole":
            self.refused += 1
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), 10)
        except (OSError, TimeoutError):
            _reset(writer)
            return
        if self.mode != "forward":  # cut while connecting
            _reset(writer)
            _reset(up_writer)
            return
        self._live.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data or self.mode != "forward":
                    break
                dst.write(data)
                self.bytes_forwarded += len(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            # One side gone: the other goes too (as a proxy that lost its peer would do).
            for w in pair:
                self._live.discard(w)
                _reset(w)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) so the peer sees the connection die at once, not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
