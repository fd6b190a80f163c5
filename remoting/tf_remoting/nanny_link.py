"""The worker's end of a kernel nanny's unix socket.

Records from the nanny are serialized `ChannelsResponse` messages. Consecutive `frames` records
are merged by plain concatenation (protobuf merges a repeated field of the same oneof member),
so whatever arrived together leaves as one gRPC message, without ever being decoded here.
"""

from __future__ import annotations

import asyncio
import struct

from tf_remoting.channels import MAX_BATCH_BYTES, unpack_records

FRAMES_TAG = 0x12  # field 2 (frames), wire type 2: the first byte of a `frames` record
_LEN = struct.Struct(">I")


class NannyLink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
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
        merged: list[bytes] = []
        size = 0
        for record in records:
            if record[:1] == bytes([FRAMES_TAG]) and merged and merged[-1][:1] == bytes([FRAMES_TAG]) \
                    and size + len(record) <= MAX_BATCH_BYTES:
                merged[-1] += record
                size += len(record)
            else:
                merged.append(record)
                size = len(record)
        for message in merged:
            self.inbox.put_nowait(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.put_nowait(None)

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
