"""The nanny's relay loop: kernel ZMQ sockets <-> the worker's unix-socket connection.

Imported by `tf_remoting.worker.nanny` only after the kernel process is already starting, so that
these imports (zmq, protobuf) overlap with the kernel's own start-up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import zmq
from google.protobuf.message import DecodeError

from tf_remoting.framing import (
    MAX_BATCH_BYTES,
    ROUTED,
    ChunkError,
    Deduplicator,
    Reassembler,
    ReplayBuffer,
    batches,
    pack_record,
    unpack_records,
)
from tf_remoting.proto import pb
from tf_remoting.worker.nanny_state import LINGER_AFTER_EXIT, execution_state, write_activity, write_state
from tf_remoting.worker.proctree import kill_descendants, reap

log = logging.getLogger("tf_remoting.nanny")

PORT_NAMES = {
    pb.CHANNEL_SHELL: "shell_port",
    pb.CHANNEL_CONTROL: "control_port",
    pb.CHANNEL_STDIN: "stdin_port",
    pb.CHANNEL_IOPUB: "iopub_port",
    pb.CHANNEL_HB: "hb_port",
}
MAX_PEERS = 128          # routed peer sockets kept per channel (least recently used go)
DRAIN_LIMIT = 2000       # messages read from one socket per loop turn
REAP_INTERVAL = 0.05     # seconds between checks whether the kernel exited
# Client messages wait until our iopub subscription has reached the kernel (its first iopub message,
# ipykernel's `iopub_welcome`): a kernel that answers before that would publish into the void. A
# kernel that never greets (a plain PUB socket) gets them this long after our iopub connection's
# handshake, time for the subscription to arrive; or, if even that never comes, IOPUB_WAIT seconds
# after the nanny's start.
SUBSCRIPTION_GRACE = 0.5
IOPUB_WAIT = 10.0
# Output floods: when the last BURST_FRAMES frames for the worker all came within BURST_WINDOW
# seconds, iopub frames are held up to HOLD seconds and go out together (one gRPC message instead
# of one per print). A frame on any other channel (a reply) sends what is held at once, and a
# request's few messages never make a burst, so its round trip does not wait.
BURST_FRAMES = 16
BURST_WINDOW = 0.020
HOLD = 0.005
# A kernel told to stop (SIGTERM) that still runs this many seconds later is killed, with whatever it started.
STOP_GRACE = 5.0


class Nanny:
    def __init__(self, directory: Path, spec: dict[str, Any], proc: subprocess.Popen[bytes],
                 connection: dict[str, Any]) -> None:
        self.dir = directory
        self.spec = spec
        self.proc = proc
        self.ports: dict[int, int] = {ch: int(connection[name]) for ch, name in PORT_NAMES.items()}
        self.transport = connection.get("transport", "tcp")
        self.ip = connection.get("ip", "127.0.0.1")
        self.socket_path = spec["socket"]
        self.buffer = ReplayBuffer(max_messages=spec.get("replay_messages", 50_000),
                                   max_bytes=spec.get("replay_bytes", 256 << 20),
                                   chunk_size=spec.get("chunk_size", 1 << 20))
        self.dedup = Deduplicator()
        self.reassembler = Reassembler()
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.peers: dict[tuple[int, bytes], zmq.Socket] = {}
        self.socket_owner: dict[zmq.Socket, tuple[int, bytes]] = {}
        self.conn: socket.socket | None = None
        self.conn_opened = False
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.exit_code: int | None = None
        self.exited_at = 0.0
        self.stopping = False
        self._next_reap = 0.0
        self._want_pollout = False
        self.iopub_ready = False
        self._busy = False  # the kernel runs a cell (its last status about an execute_request)
        self._held: list[tuple[int, list[bytes]]] = []  # client messages waiting for iopub_ready
        self._iopub_connected = False
        self._outgoing: list[pb.Frame] = []  # frames held during a flood (see HOLD)
        self._hold_until = 0.0
        self._recent: deque[float] = deque(maxlen=BURST_FRAMES)  # when the last frames came
        self._started = time.monotonic()
        self._iopub_deadline = self._started + IOPUB_WAIT
        self._stop_deadline = float("inf")

    # ------------------------------------------------------------------ start

    def start(self, listener: socket.socket) -> None:
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.RCVHWM, 0)
        self.iopub.setsockopt(zmq.LINGER, 0)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub_monitor = self.iopub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.iopub.connect(self.endpoint(pb.CHANNEL_IOPUB))
        self.poller.register(self.iopub, zmq.POLLIN)
        self.poller.register(self.iopub_monitor, zmq.POLLIN)
        self.listener = listener
        self.poller.register(self.listener.fileno(), zmq.POLLIN)
        log.info("kernel pid %d started, nanny pid %d", self.proc.pid, os.getpid())

    def endpoint(self, channel: int) -> str:
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{self.ports[channel]}"
        return f"tcp://{self.ip}:{self.ports[channel]}"

    def write_state(self, status: str) -> None:
        write_state(self.dir, status, self.proc.pid, self.exit_code, self.socket_path)

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            timeout = 100 if self.exit_code is None else 20
            if self._outgoing:
                timeout = max(1, min(timeout, int((self._hold_until - time.monotonic()) * 1000) + 1))
            ready = self._poll(timeout)
            out: list[pb.Frame] = []
            for sock, _event in ready:
                if sock is self.iopub:
                    published = self._drain(self.iopub, pb.CHANNEL_IOPUB, None)
                    out.extend(published)
                    if published and not self.iopub_ready:
                        self._release_held()
                elif sock is self.iopub_monitor:
                    self._on_iopub_connected()
                elif isinstance(sock, zmq.Socket):
                    channel, peer = self.socket_owner[sock]
                    out.extend(self._drain(sock, channel, peer))
                elif sock == self.listener.fileno():
                    self._accept()
                elif self.conn is not None and sock == self.conn.fileno():
                    if _event & zmq.POLLIN:
                        self._read_conn()
                    if self.conn is not None and _event & zmq.POLLOUT:
                        self._flush()
            if out or self._outgoing:
                self._send_frames(out)
            if self.exit_code is None:
                now = time.monotonic()
                if not self.iopub_ready and now >= self._iopub_deadline:
                    why = ("its iopub connection is up" if self._iopub_connected
                           else "no iopub connection either (output may be lost)")
                    log.info("no greeting on iopub from the kernel, %s; forwarding client messages %.1f s after "
                             "the nanny started", why, now - self._started)
                    self._release_held()
                if now >= self._next_reap:
                    self._next_reap = now + REAP_INTERVAL
                    code = self._reap()
                    if code is not None:
                        self._on_kernel_exit(code)
                    elif now >= self._stop_deadline:
                        log.warning("kernel still runs %.0f s after SIGTERM: killing it", STOP_GRACE)
                        self._stop_deadline = float("inf")
                        kill_descendants(os.getpid(), timeout=0.5)
            else:
                self._reap()  # orphans of the kernel's processes, adopted by this subreaper
                if self._done():
                    self.write_state("exited")
                    return 0

    def _poll(self, timeout: int) -> list[tuple[Any, int]]:
        """One poll of the kernel's sockets and the worker's; a poll cut short by a signal (EINTR,
        which pyzmq normally retries itself) is an empty turn of the loop. Any other error is a bug
        in the nanny's sockets and is raised, as the ZMQError it is."""
        try:
            return self.poller.poll(timeout)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EINTR:
                raise
            return []

    def _reap(self) -> int | None:
        """Collect exited children (the kernel, and orphans adopted as subreaper); the kernel's
        exit code once it has exited. The loop reaps with waitpid(-1), so the kernel's Popen never
        waits itself: its returncode is set here."""
        code = reap(self.proc.pid)
        if code is not None and self.proc.returncode is None:
            self.proc.returncode = code
        return self.proc.returncode

    def _send_frames(self, frames: list[pb.Frame], force: bool = False) -> None:
        """Send frames to the worker, or hold iopub ones a few ms while the kernel floods output."""
        now = time.monotonic()
        self._recent.extend([now] * min(len(frames), BURST_FRAMES))
        only_iopub = all(f.channel == pb.CHANNEL_IOPUB for f in frames)
        if not force and only_iopub:
            if not self._outgoing:
                bursting = len(self._recent) == BURST_FRAMES and now - self._recent[0] < BURST_WINDOW
                if bursting and frames:
                    self._outgoing = frames
                    self._hold_until = now + HOLD
                    return
            elif now < self._hold_until:
                self._outgoing.extend(frames)
                return
        frames, self._outgoing = self._outgoing + frames, []
        if not frames:
            return
        for batch in batches(frames, MAX_BATCH_BYTES):
            self._send(pb.ChannelsResponse(frames=batch))

    def _on_sigterm(self, *_: object) -> None:
        self.stopping = True
        if self.proc.returncode is None:  # not poll(): see _reap
            self._stop_deadline = time.monotonic() + STOP_GRACE
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def _on_kernel_exit(self, code: int) -> None:
        self._send_frames([], force=True)  # what a flood held goes first
        # Collect what the kernel published just before it went.
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            frames = self._drain(self.iopub, pb.CHANNEL_IOPUB, None)
            if frames:
                for batch in batches(frames):
                    self._send(pb.ChannelsResponse(frames=batch))
            else:
                time.sleep(0.02)
        # The kernel's end is the end of everything it started (children it left, double-forked
        # ones: all reparented to this subreaper), so none outlives it in or out of its slice.
        left = kill_descendants(os.getpid(), reap_them=True)
        if left:
            log.warning("processes %s of the kernel survived SIGKILL", sorted(left))
        self.exit_code = code
        self.exited_at = time.monotonic()
        self.write_state("exited")
        log.info("kernel exited with %d", code)
        self._send(pb.ChannelsResponse(exited=pb.KernelExited(exit_code=code)))

    def _done(self) -> bool:
        if self.stopping:
            return not self.outbuf or time.monotonic() - self.exited_at > 2
        delivered = self.conn is not None and not self.outbuf and self.buffer.pending(pb.CHANNEL_IOPUB) == 0
        return delivered or time.monotonic() - self.exited_at > LINGER_AFTER_EXIT

    # ------------------------------------------------------------------ kernel side

    def _on_iopub_connected(self) -> None:
        # One event is all we wait for; later reconnects need no hold (the kernel is up).
        with contextlib.suppress(zmq.Again):
            self.iopub_monitor.recv_multipart(zmq.NOBLOCK)
        self.poller.unregister(self.iopub_monitor)
        self.iopub.disable_monitor()
        self.iopub_monitor.close()
        self._iopub_connected = True
        if not self.iopub_ready:
            self._iopub_deadline = min(self._iopub_deadline, time.monotonic() + SUBSCRIPTION_GRACE)

    def _release_held(self) -> None:
        self.iopub_ready = True
        held, self._held = self._held, []
        for channel, parts in held:
            self._peer_socket(channel, parts[0]).send_multipart(parts[1:])

    def _drain(self, sock: zmq.Socket, channel: int, peer: bytes | None) -> list[pb.Frame]:
        frames: list[pb.Frame] = []
        for _ in range(DRAIN_LIMIT):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if peer is not None:
                parts.insert(0, peer)
            elif channel == pb.CHANNEL_IOPUB:
                self._note_execution(parts)
            frames.extend(self.buffer.append(channel, parts))
        return frames

    def _note_execution(self, parts: list[bytes]) -> None:
        """DIR/activity.json follows the kernel's busy/idle status about cells (the worker's idle time)."""
        state = execution_state(parts)
        if state is not None and (state == "busy") != self._busy:
            self._busy = state == "busy"
            try:
                write_activity(self.dir, self._busy)
            except OSError:
                log.warning("cannot write %s/activity.json", self.dir, exc_info=True)

    def _peer_socket(self, channel: int, peer: bytes) -> zmq.Socket:
        key = (channel, peer)
        sock = self.peers.pop(key, None)
        if sock is None:
            if channel == pb.CHANNEL_SHELL and (pb.CHANNEL_STDIN, peer) not in self.peers:
                # input_request goes to the shell requester's identity: be there before it is sent.
                self._peer_socket(pb.CHANNEL_STDIN, peer)
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Identities starting with a zero byte are reserved by ZMQ; prefix ours.
            sock.setsockopt(zmq.ROUTING_ID, b"tf:" + peer[:200])
            sock.connect(self.endpoint(channel))
            self.poller.register(sock, zmq.POLLIN)
            self.socket_owner[sock] = key
            same_channel = [k for k in self.peers if k[0] == channel]
            if len(same_channel) >= MAX_PEERS:
                old = self.peers.pop(same_channel[0])
                self.poller.unregister(old)
                del self.socket_owner[old]
                old.close()
        self.peers[key] = sock  # re-insert: most recently used last
        return sock

    # ------------------------------------------------------------------ worker side

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            self._drop_conn()
        conn.setblocking(False)
        self.conn = conn
        self.conn_opened = False  # nothing goes out before this stream's `opened` (then replay)
        self._want_pollout = False
        self.inbuf.clear()
        self.poller.register(conn.fileno(), zmq.POLLIN)

    def _drop_conn(self) -> None:
        assert self.conn is not None
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self.outbuf.clear()

    def _read_conn(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn()
            return
        self.inbuf += data
        try:
            records = unpack_records(self.inbuf)
        except ValueError as exc:
            log.warning("dropping worker connection: %s", exc)
            self._drop_conn()
            return
        for record in records:
            try:
                self._on_request(pb.ChannelsRequest.FromString(record))
            except (DecodeError, ChunkError, ValueError) as exc:
                # Bad input from a client must never take the kernel down: drop that stream only.
                log.warning("dropping worker connection after a malformed message: %s", exc)
                self.reassembler = Reassembler()
                if self.conn is not None:
                    self._drop_conn()
                return

    def _on_request(self, req: pb.ChannelsRequest) -> None:
        kind = req.WhichOneof("kind")
        if kind == "open":
            self._outgoing.clear()  # held frames are in the replay buffer, which follows
            self.conn_opened = True
            positions = {int(p.channel): p.seq for p in req.open.last_received}
            frames, dropped = self.buffer.replay(positions)
            self._send(pb.ChannelsResponse(opened=pb.ChannelsOpened(
                kernel_id=self.spec["kernel_id"],
                received=self.dedup.positions(),
                dropped=[pb.ChannelPosition(channel=cast(pb.Channel, c), seq=n) for c, n in dropped.items()],
                chunk_size=self.buffer.chunk_size,
            )))
            for batch in batches(frames):
                self._send(pb.ChannelsResponse(frames=batch))
            if self.exit_code is not None:
                self._send(pb.ChannelsResponse(exited=pb.KernelExited(exit_code=self.exit_code)))
        elif kind == "frames":
            for frame in req.frames.frames:
                whole = self.reassembler.feed(frame)
                if whole is None:
                    continue
                channel, seq, parts = whole
                if channel not in ROUTED or not parts or not self.dedup.accept(channel, seq):
                    continue
                if self.exit_code is None:
                    if self.iopub_ready:
                        self._peer_socket(channel, parts[0]).send_multipart(parts[1:])
                    else:
                        self._held.append((channel, parts))
        elif kind == "ack":
            for pos in req.ack.received:
                self.buffer.ack(pos.channel, pos.seq)

    def _send(self, msg: pb.ChannelsResponse) -> None:
        # Before `open` is processed, new frames stay in the replay buffer; the replay sends them
        # in order after `opened`, so a client never sees a later seq before an earlier one.
        if self.conn is None or (not self.conn_opened and not msg.HasField("opened")):
            return
        was_empty = not self.outbuf
        self.outbuf += pack_record(msg.SerializeToString())
        if was_empty:
            self._flush()

    def _flush(self) -> None:
        assert self.conn is not None
        try:
            while self.outbuf:
                n = self.conn.send(self.outbuf)
                del self.outbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._drop_conn()
            return
        want = bool(self.outbuf)
        if want != self._want_pollout:
            self._want_pollout = want
            self.poller.modify(self.conn.fileno(), zmq.POLLIN | (zmq.POLLOUT if want else 0))


