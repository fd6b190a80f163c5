"""The relay's ZMQ side, on real sockets on 127.0.0.1: a reply sent to a client must never leave
that client's next request unread.

A send makes ZMQ process the socket's pending commands, which can use up the edge of its file
descriptor that should wake the relay's waiting recv. The relay once sent on the plain socket under
the asyncio one, so a request that arrived just before a reply went out sat unread for good: in the
load test, one kernel of fifty never answered its websocket's first kernel_info_request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
import zmq

from tf_jupyter.pytest_plugin import free_port
from tf_jupyter.relay import ROUTED_PORTS, Relay
from tf_remoting.proto import pb


@pytest.fixture
def relay() -> Iterator[Relay]:
    ports = {name: free_port() for name in (*ROUTED_PORTS.values(), "iopub_port")}
    r = Relay({"ip": "127.0.0.1", "transport": "tcp", "key": "", **ports})
    r.bind()
    yield r
    r.close()


@pytest.fixture
def dealer(relay: Relay) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"client-1")
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"tcp://127.0.0.1:{relay.connection['shell_port']}")
    yield sock
    sock.close()
    ctx.term()


async def test_a_request_arriving_while_a_reply_goes_out_is_still_read(relay: Relay, dealer: zmq.Socket) -> None:
    shell = relay.sockets[pb.CHANNEL_SHELL]
    dealer.send_multipart([b"request 1"])
    assert await asyncio.wait_for(shell.recv_multipart(), 5) == [b"client-1", b"request 1"]

    waiting = asyncio.ensure_future(shell.recv_multipart())  # as the relay's upstream pump waits
    try:
        await asyncio.sleep(0.05)  # the recv now waits on the socket's file descriptor
        dealer.send_multipart([b"request 2"])
        time.sleep(0.2)  # request 2 reaches the relay's socket while its event loop is busy...
        relay._deliver(pb.CHANNEL_SHELL, [b"client-1", b"reply 1"])  # ...which then sends a reply
        assert dealer.recv_multipart() == [b"reply 1"]
        assert await asyncio.wait_for(asyncio.shield(waiting), 5) == [b"client-1", b"request 2"]
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


async def test_a_reply_for_a_client_that_left_is_dropped_quietly(relay: Relay) -> None:
    # ROUTER drops what it cannot route; the relay must not raise into the Channels stream for it.
    relay._deliver(pb.CHANNEL_SHELL, [b"nobody", b"reply"])
    relay._deliver(pb.CHANNEL_IOPUB, [b"status"])


async def test_output_before_the_first_subscription_is_held_not_lost(relay: Relay) -> None:
    """A client whose iopub connects a moment after its shell (jupyter console checks nothing) must
    still get the output of its first cell: the relay holds iopub until the first subscription."""
    serving = asyncio.ensure_future(relay.serve_subscriptions())
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        relay._deliver(pb.CHANNEL_IOPUB, [b"status busy"])  # published before anyone listens
        relay._deliver(pb.CHANNEL_IOPUB, [b"stream 42"])
        sub.connect(f"tcp://127.0.0.1:{relay.connection['iopub_port']}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        received = []
        for _ in range(100):  # the subscription reaches the relay's loop (bounded: 5 s)
            await asyncio.sleep(0.05)
            with contextlib.suppress(zmq.Again):
                received.append(sub.recv_multipart(zmq.NOBLOCK))
                break
        relay._deliver(pb.CHANNEL_IOPUB, [b"status idle"])  # once subscribed: sent straight on
        received.append(sub.recv_multipart())
        received.append(sub.recv_multipart())
        assert received == [[b"status busy"], [b"stream 42"], [b"status idle"]]
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        sub.close()
        ctx.term()
