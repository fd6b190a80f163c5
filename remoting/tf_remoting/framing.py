"""Jupyter channels over the Channels stream: framing, chunking, sequence numbers, replay.

Plain logic shared by the kernel nanny (worker side) and the client. Messages stay opaque: a
message is the list of its ZMQ parts, never decoded and never re-signed.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from tf_remoting.proto import pb

CHUNK_SIZE = 1 << 20            # a message bigger than this travels in chunks
MAX_BATCH_BYTES = 4 << 20       # frames coalesced into one gRPC message up to this size
GRPC_MAX_MESSAGE = 16 << 20     # both ends allow this, so a full batch always fits

CHANNELS = (pb.CHANNEL_SHELL, pb.CHANNEL_CONTROL, pb.CHANNEL_STDIN, pb.CHANNEL_IOPUB, pb.CHANNEL_HB)
ROUTED = (pb.CHANNEL_SHELL, pb.CHANNEL_CONTROL, pb.CHANNEL_STDIN, pb.CHANNEL_HB)
CHANNEL_NAMES = {
    pb.CHANNEL_SHELL: "shell",
    pb.CHANNEL_CONTROL: "control",
    pb.CHANNEL_STDIN: "stdin",
    pb.CHANNEL_IOPUB: "iopub",
    pb.CHANNEL_HB: "hb",
}


def _channel(channel: int) -> pb.Channel:
    # Channels travel as plain ints in this module; the generated stubs type the field as the enum.
    return cast(pb.Channel, channel)


def message_size(parts: Iterable[bytes]) -> int:
    return sum(len(p) for p in parts)


def encode(channel: int, seq: int, parts: list[bytes], chunk_size: int = CHUNK_SIZE) -> list[pb.Frame]:
    """One message as one frame, or as several chunk frames when it is bigger than chunk_size."""
    if message_size(parts) <= chunk_size:
        return [pb.Frame(channel=_channel(channel), seq=seq, parts=parts)]
    blob = pb.Parts(parts=parts).SerializeToString()
    frames = []
    for start in range(0, len(blob), chunk_size):
        piece = blob[start:start + chunk_size]
        frames.append(pb.Frame(channel=_channel(channel), seq=seq, chunk=piece,
                               chunk_last=start + chunk_size >= len(blob)))
    return frames


class ChunkError(ValueError):
    """A chunked message arrived out of order or incomplete."""


class Reassembler:
    """Turns frames back into (channel, seq, parts), joining chunks."""

    def __init__(self, max_message: int = 1 << 31) -> None:
        self._pending: dict[int, tuple[int, list[bytes], int]] = {}
        self._max = max_message

    def feed(self, frame: pb.Frame) -> tuple[int, int, list[bytes]] | None:
        if not frame.chunk and not frame.chunk_last:
            if frame.channel in self._pending:
                raise ChunkError(f"channel {frame.channel}: whole frame inside a chunked message")
            return frame.channel, frame.seq, list(frame.parts)
        seq, pieces, size = self._pending.get(frame.channel, (frame.seq, [], 0))
        if seq != frame.seq:
            raise ChunkError(f"channel {frame.channel}: chunk of message {frame.seq} inside message {seq}")
        pieces.append(frame.chunk)
        size += len(frame.chunk)
        if size > self._max:
            del self._pending[frame.channel]
            raise ChunkError(f"message of more than {self._max} bytes refused")
        if not frame.chunk_last:
            self._pending[frame.channel] = (seq, pieces, size)
            return None
        self._pending.pop(frame.channel, None)
        return frame.channel, seq, list(pb.Parts.FromString(b"".join(pieces)).parts)


def batches(frames: Iterable[pb.Frame], max_bytes: int = MAX_BATCH_BYTES) -> Iterator[pb.FrameBatch]:
    """Coalesce frames into as few FrameBatch messages as the size limit allows."""
    batch: list[pb.Frame] = []
    size = 0
    for frame in frames:
        fsize = message_size(frame.parts) + len(frame.chunk) + 16
        if batch and size + fsize > max_bytes:
            yield pb.FrameBatch(frames=batch)
            batch, size = [], 0
        batch.append(frame)
        size += fsize
    if batch:
        yield pb.FrameBatch(frames=batch)


@dataclass
class _ChannelBuffer:
    frames: deque[tuple[int, list[pb.Frame], int]] = field(default_factory=deque)
    bytes: int = 0
    next_seq: int = 1
    dropped_upto: int = 0  # highest seq that overflowed out before it was acknowledged


class ReplayBuffer:
    """Outbound messages per channel, numbered from 1, kept until acknowledged.

    Bounded by message count and bytes per channel; what overflows is dropped oldest-first and
    counted, so a resuming client is told how many it missed instead of losing them silently.
    """

    def __init__(self, max_messages: int = 50_000, max_bytes: int = 256 << 20,
                 chunk_size: int = CHUNK_SIZE) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self._channels: dict[int, _ChannelBuffer] = {c: _ChannelBuffer() for c in CHANNELS}

    def append(self, channel: int, parts: list[bytes]) -> list[pb.Frame]:
        """Number a new message, keep it, and return its frames."""
        buf = self._channels[channel]
        seq = buf.next_seq
        buf.next_seq += 1
        frames = encode(channel, seq, parts, self.chunk_size)
        size = message_size(parts)
        buf.frames.append((seq, frames, size))
        buf.bytes += size
        while len(buf.frames) > self.max_messages or (buf.bytes > self.max_bytes and len(buf.frames) > 1):
            old_seq, _, old_size = buf.frames.popleft()
            buf.bytes -= old_size
            buf.dropped_upto = max(buf.dropped_upto, old_seq)
        return frames

    def ack(self, channel: int, seq: int) -> None:
        buf = self._channels.get(channel)
        if buf is None:
            return
        while buf.frames and buf.frames[0][0] <= seq:
            _, _, size = buf.frames.popleft()
            buf.bytes -= size

    def replay(self, positions: dict[int, int]) -> tuple[list[pb.Frame], dict[int, int]]:
        """Frames after each channel's last-received seq, and how many were lost per channel."""
        frames: list[pb.Frame] = []
        dropped: dict[int, int] = {}
        for channel, buf in self._channels.items():
            last = positions.get(channel, 0)
            self.ack(channel, last)
            if buf.dropped_upto > last:
                dropped[channel] = buf.dropped_upto - last
            for _seq, fs, _ in buf.frames:
                frames.extend(fs)
        return frames, dropped

    def pending(self, channel: int) -> int:
        return len(self._channels[channel].frames)

    def last_seq(self, channel: int) -> int:
        return self._channels[channel].next_seq - 1


class Deduplicator:
    """Inbound side: drops resent messages whose seq was already delivered (seq 0 = unnumbered)."""

    def __init__(self) -> None:
        self.received: dict[int, int] = {c: 0 for c in CHANNELS}

    def accept(self, channel: int, seq: int) -> bool:
        if seq == 0:
            return True
        if seq <= self.received.get(channel, 0):
            return False
        self.received[channel] = seq
        return True

    def positions(self) -> list[pb.ChannelPosition]:
        return [pb.ChannelPosition(channel=_channel(c), seq=s) for c, s in self.received.items() if s]


# Length-prefixed records on the worker <-> nanny unix socket.
_LEN = struct.Struct(">I")
MAX_RECORD = 64 << 20


def pack_record(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def unpack_records(buffer: bytearray) -> list[bytes]:
    """Pop every complete record from the front of buffer."""
    out = []
    offset = 0
    while len(buffer) - offset >= 4:
        (n,) = _LEN.unpack_from(buffer, offset)
        if n > MAX_RECORD:
            raise ValueError(f"record of {n} bytes is larger than {MAX_RECORD}")
        if len(buffer) - offset - 4 < n:
            break
        out.append(bytes(buffer[offset + 4: offset + 4 + n]))
        offset += 4 + n
    del buffer[:offset]
    return out
