"""Channels framing without a stream: batching, chunking, replay and de-duplication."""

from __future__ import annotations

import os

import pytest

from tf_remoting.framing import (
    CHUNK_SIZE,
    GRPC_MAX_MESSAGE,
    MAX_BATCH_BYTES,
    ChunkError,
    Deduplicator,
    Reassembler,
    ReplayBuffer,
    batches,
    encode,
    message_size,
    pack_record,
    unpack_records,
)
from tf_remoting.proto import pb

IOPUB, SHELL = pb.CHANNEL_IOPUB, pb.CHANNEL_SHELL
MiB = 1 << 20


def message(n: int, size: int = 200) -> list[bytes]:
    """A Jupyter-like message: identity, delimiter, then a body of `size` bytes numbered n."""
    return [b"<IDS|MSG>", f"{n}".encode(), os.urandom(size)]


def frame_bytes(frame: pb.Frame) -> int:
    return message_size(frame.parts) + len(frame.chunk)


# ---------------------------------------------------------------------------------- batches

def test_many_small_frames_travel_as_one_batch() -> None:
    frames = [pb.Frame(channel=IOPUB, seq=i, parts=message(i)) for i in range(1, 501)]
    out = list(batches(frames))
    assert len(out) == 1
    assert list(out[0].frames) == frames  # all of them, in order


def test_batches_are_cut_at_max_batch_bytes() -> None:
    frames = [pb.Frame(channel=IOPUB, seq=i, parts=[os.urandom(MiB - 100)]) for i in range(1, 11)]
    out = list(batches(frames))
    assert [f for b in out for f in b.frames] == frames  # nothing lost, nothing reordered
    assert len(out) > 1
    for b in out:
        assert sum(frame_bytes(f) for f in b.frames) <= MAX_BATCH_BYTES
        assert b.ByteSize() <= GRPC_MAX_MESSAGE  # a full batch always fits the gRPC limit
    # Each batch is as full as the limit allows: the next frame would not have fitted.
    for b, following in zip(out, out[1:], strict=False):
        assert sum(frame_bytes(f) for f in b.frames) + frame_bytes(following.frames[0]) > MAX_BATCH_BYTES


def test_a_frame_bigger_than_a_batch_goes_alone() -> None:
    small = pb.Frame(channel=SHELL, seq=1, parts=[b"a" * 100])
    big = pb.Frame(channel=IOPUB, seq=1, parts=[b"b" * 5000])
    out = list(batches([small, big, small], max_bytes=1000))
    assert [list(b.frames) for b in out] == [[small], [big], [small]]


def test_no_frames_no_batch() -> None:
    assert list(batches([])) == []


# ---------------------------------------------------------------------------------- chunks

def test_a_message_bigger_than_the_chunk_size_round_trips() -> None:
    parts = [b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", os.urandom(3 * CHUNK_SIZE + 12345)]
    frames = encode(IOPUB, 7, parts)
    assert len(frames) == 4
    assert all(not f.parts and f.seq == 7 and len(f.chunk) <= CHUNK_SIZE for f in frames)
    assert [f.chunk_last for f in frames] == [False, False, False, True]

    # Through gRPC-sized batches and their wire form, as the stream carries them.
    wire = [pb.FrameBatch.FromString(b.SerializeToString()) for b in batches(frames)]
    assert all(b.ByteSize() <= GRPC_MAX_MESSAGE for b in wire)
    r = Reassembler()
    results = [r.feed(f) for b in wire for f in b.frames]
    assert results[:-1] == [None, None, None]
    assert results[-1] == (IOPUB, 7, parts)


def test_a_message_of_exactly_the_chunk_size_is_one_frame() -> None:
    parts = [os.urandom(CHUNK_SIZE - 10), os.urandom(10)]
    frames = encode(SHELL, 1, parts)
    assert len(frames) == 1 and list(frames[0].parts) == parts and not frames[0].chunk
    assert Reassembler().feed(frames[0]) == (SHELL, 1, parts)


def test_chunks_of_one_channel_interleave_with_other_channels() -> None:
    big = [os.urandom(2500)]
    chunked = encode(IOPUB, 3, big, chunk_size=1000)
    whole = encode(SHELL, 9, [b"reply"], chunk_size=1000)
    assert len(chunked) == 3 and len(whole) == 1
    r = Reassembler()
    assert r.feed(chunked[0]) is None
    assert r.feed(whole[0]) == (SHELL, 9, [b"reply"])
    assert r.feed(chunked[1]) is None
    assert r.feed(chunked[2]) == (IOPUB, 3, big)


def test_reassembler_refuses_broken_chunk_sequences() -> None:
    first = encode(IOPUB, 1, [os.urandom(3000)], chunk_size=1000)
    second = encode(IOPUB, 2, [os.urandom(3000)], chunk_size=1000)
    r = Reassembler()
    r.feed(first[0])
    with pytest.raises(ChunkError, match="chunk of message 2 inside message 1"):
        r.feed(second[0])
    r = Reassembler()
    r.feed(first[0])
    with pytest.raises(ChunkError, match="whole frame inside a chunked message"):
        r.feed(pb.Frame(channel=IOPUB, seq=5, parts=[b"x"]))


def test_reassembler_refuses_a_message_over_its_limit_and_recovers() -> None:
    r = Reassembler(max_message=2500)
    frames = encode(IOPUB, 1, [os.urandom(4000)], chunk_size=1000)
    r.feed(frames[0])
    r.feed(frames[1])
    with pytest.raises(ChunkError, match="more than 2500 bytes"):
        r.feed(frames[2])
    # The refused message is forgotten: the next one on the channel is read normally.
    assert r.feed(pb.Frame(channel=IOPUB, seq=2, parts=[b"ok"])) == (IOPUB, 2, [b"ok"])


# ---------------------------------------------------------------------------------- replay

def seqs(frames: list[pb.Frame], channel: int = IOPUB) -> list[int]:
    return sorted({f.seq for f in frames if f.channel == channel})


def test_replay_returns_what_the_client_has_not_seen() -> None:
    buf = ReplayBuffer()
    for n in range(1, 6):
        buf.append(IOPUB, message(n))
    buf.append(SHELL, message(99))
    assert buf.last_seq(IOPUB) == 5 and buf.last_seq(SHELL) == 1
    frames, dropped = buf.replay({IOPUB: 3, SHELL: 0})
    assert seqs(frames) == [4, 5] and seqs(frames, SHELL) == [1]
    assert dropped == {}
    assert buf.pending(IOPUB) == 2  # what the client confirmed is gone


def test_replay_buffer_bounded_by_message_count_reports_drops() -> None:
    buf = ReplayBuffer(max_messages=5)
    for n in range(1, 9):
        buf.append(IOPUB, message(n))
    assert buf.pending(IOPUB) == 5
    frames, dropped = buf.replay({})
    assert seqs(frames) == [4, 5, 6, 7, 8]
    assert dropped == {IOPUB: 3}
    # A client that had already received some of the dropped ones is told only of the rest.
    frames, dropped = buf.replay({IOPUB: 2})
    assert dropped == {IOPUB: 1}
    frames, dropped = buf.replay({IOPUB: 3})
    assert dropped == {} and seqs(frames) == [4, 5, 6, 7, 8]


def test_replay_buffer_bounded_by_bytes_keeps_the_newest() -> None:
    buf = ReplayBuffer(max_bytes=1000)
    for _ in range(6):
        buf.append(IOPUB, [os.urandom(300)])
    assert buf.pending(IOPUB) == 3  # 3 x 300 fit in 1000, a 4th does not
    frames, dropped = buf.replay({})
    assert seqs(frames) == [4, 5, 6] and dropped == {IOPUB: 3}
    # One message bigger than the whole bound is still kept (the newest is never dropped).
    buf.append(IOPUB, [os.urandom(5000)])
    frames, dropped = buf.replay({IOPUB: 6})
    assert seqs(frames) == [7] and dropped == {}


def test_acknowledged_messages_are_not_counted_as_dropped() -> None:
    buf = ReplayBuffer(max_messages=3)
    for n in range(1, 4):
        buf.append(IOPUB, message(n))
    buf.ack(IOPUB, 3)
    for n in range(4, 7):
        buf.append(IOPUB, message(n))
    frames, dropped = buf.replay({IOPUB: 3})
    assert seqs(frames) == [4, 5, 6] and dropped == {}


def test_replay_buffer_channels_are_independent() -> None:
    buf = ReplayBuffer(max_messages=2)
    for n in range(1, 5):
        buf.append(SHELL, message(n))
    buf.append(IOPUB, message(1))
    frames, dropped = buf.replay({})
    assert dropped == {SHELL: 2}
    assert seqs(frames, SHELL) == [3, 4] and seqs(frames, IOPUB) == [1]


def test_replayed_big_messages_come_back_as_chunks() -> None:
    buf = ReplayBuffer(chunk_size=1000)
    parts = [os.urandom(2500)]
    assert len(buf.append(IOPUB, parts)) == 3
    frames, _ = buf.replay({})
    r = Reassembler()
    assert [r.feed(f) for f in frames] == [None, None, (IOPUB, 1, parts)]


# ---------------------------------------------------------------------------------- dedup

def test_deduplicator_drops_resent_messages() -> None:
    d = Deduplicator()
    assert [d.accept(IOPUB, s) for s in (1, 2, 3)] == [True, True, True]
    assert [d.accept(IOPUB, s) for s in (2, 3)] == [False, False]  # resent after a reconnect
    assert d.accept(IOPUB, 4) is True
    assert d.accept(SHELL, 1) is True  # channels count separately
    assert d.accept(SHELL, 0) and d.accept(SHELL, 0)  # unnumbered: always delivered
    positions = {p.channel: p.seq for p in d.positions()}
    assert positions == {IOPUB: 4, SHELL: 1}  # channels with nothing received are left out


def test_deduplicator_with_replay_buffer_delivers_each_message_once() -> None:
    buf = ReplayBuffer()
    d = Deduplicator()
    delivered: list[int] = []
    for n in range(1, 11):
        for f in buf.append(IOPUB, message(n)):
            if n <= 6 and d.accept(f.channel, f.seq):  # the connection drops after 6
                delivered.append(f.seq)
    stale = {IOPUB: 4}  # the client reconnects with an older position than it really has
    frames, dropped = buf.replay(stale)
    for f in frames:
        if d.accept(f.channel, f.seq):
            delivered.append(f.seq)
    assert delivered == list(range(1, 11)) and dropped == {}


# ---------------------------------------------------------------------------------- records

def test_records_split_at_any_byte() -> None:
    payloads = [b"", b"x", os.urandom(70_000)]
    stream = b"".join(pack_record(p) for p in payloads)
    buffer = bytearray()
    got: list[bytes] = []
    for i in range(0, len(stream), 997):
        buffer += stream[i:i + 997]
        got += unpack_records(buffer)
    assert got == payloads and buffer == bytearray()
