"""The worker's end of a kernel nanny's unix socket.

Records from the nanny are serialized `ChannelsResponse` messages. Consecutive `frames` records
are merged by plain concatenation (protobuf merges a repeated field of the same oneof member),
so whatever is queued when the gRPC stream can take the next message leaves as one, without ever
being decoded here.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque

from tf_remoting.framing import MAX_BATCH_BYTES, unpack_records

FRAMES_BYTE = b"\x12"  # field 2 (frames), wire type 2: the first byte of a `frames` record
_LEN = struct.Struct(">I")


class NannyLink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._records: deque[bytes | None] = deque()  # None: the nanny closed the connection
        self._ready = asyncio.Event()
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            records = unpack_records(self._buffer)
        except ValueError:
            self.close()
            return
        self._records.extend(records)
        self._ready.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._records.append(None)
        self._ready.set()

    async def next(self) -> bytes | None:
        """The next message for the client: every `frames` record queued by now merged into one
        (up to MAX_BATCH_BYTES), so a burst leaves as few gRPC messages as it can. None at the end."""
        while not self._records:
            self._ready.clear()
            await self._ready.wait()
        records = self._records
        first = records[0]
        if first is None:
            return None  # stays queued: the end is reported again
        records.popleft()
        if first[:1] != FRAMES_BYTE:
            return first
        merged = bytearray(first)
        while records:
            nxt = records[0]
            if nxt is None or nxt[:1] != FRAMES_BYTE or len(merged) + len(nxt) > MAX_BATCH_BYTES:
                break
            merged += nxt
            records.popleft()
        return bytes(merged)

    def inject(self, response: bytes) -> None:
        """Queue a serialized ChannelsResponse of the worker's own (not from the nanny) for the client."""
        if self._records and self._records[-1] is None:
            return  # the stream is ending
        self._records.append(response)
        self._ready.set()

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LEN.pack(len(payload)) + payload)

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(path: str) -> NannyLink:
    loop = asyncio.get_running_loop()
    _, link = await loop.create_unix_connection(NannyLink, path)
    return link
