"""Speak the Jupyter protocol over a kernel's Channels stream, for Python programs and tests.

    kernel = RemoteKernel(client, kernel_id, key)
    await kernel.connect()
    await kernel.wait_ready()
    result = await kernel.execute("1+1")
    result.reply["content"]["status"], result.data("text/plain")   # 'ok', '2'

This is the client side only: the worker relays frames without decoding them. Messages are
signed with the kernel's HMAC key by jupyter_client's Session, as any Jupyter client does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.session import Session

from tf_remoting.client import KernelChannels, RuntimeClient
from tf_remoting.proto import pb

CHANNEL_OF = {"shell": pb.CHANNEL_SHELL, "control": pb.CHANNEL_CONTROL, "stdin": pb.CHANNEL_STDIN}


@dataclass
class ExecuteResult:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)  # iopub messages of this request

    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    def data(self, mime: str = "text/plain") -> str | None:
        for m in self.outputs:
            if m["msg_type"] in ("execute_result", "display_data"):
                return m["content"]["data"].get(mime)
        return None

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])


class RemoteKernel:
    def __init__(self, client: RuntimeClient, kernel_id: str, key: bytes,
                 signature_scheme: str = "hmac-sha256", reconnect_timeout: float = 60.0) -> None:
        self.session = Session(key=key, signature_scheme=signature_scheme, username="tf-remoting")
        self.identity = f"tf-{uuid.uuid4().hex[:12]}".encode()
        self.channels: KernelChannels = client.channels(kernel_id, reconnect_timeout=reconnect_timeout,
                                                        on_state=self._on_state)
        self.states: list[tuple[str, str]] = []
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outputs: dict[str, list[dict[str, Any]]] = {}
        self._idle: dict[str, asyncio.Event] = {}
        self.iopub: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stdin_requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    def _on_state(self, state: str, detail: str) -> None:
        self.states.append((state, detail))

    async def connect(self, timeout: float = 30.0) -> None:
        await self.channels.open(timeout)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        await self.channels.close()

    async def _read(self) -> None:
        while True:
            channel, parts = await self.channels.recv()
            if channel == pb.CHANNEL_HB:
                continue
            _idents, msg_parts = self.session.feed_identities(parts)
            msg = self.session.deserialize(msg_parts)
            parent = msg["parent_header"].get("msg_id", "")
            if channel == pb.CHANNEL_IOPUB:
                self.iopub.put_nowait(msg)
                if parent in self._outputs:
                    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        self._idle[parent].set()
                    elif msg["msg_type"] != "status":
                        self._outputs[parent].append(msg)
            elif channel == pb.CHANNEL_STDIN:
                self.stdin_requests.put_nowait(msg)
            else:
                fut = self._replies.pop(parent, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def request(self, msg_type: str, content: dict[str, Any], channel: str = "shell",
                      timeout: float = 30.0) -> dict[str, Any]:
        msg = self.session.msg(msg_type, content)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg["header"]["msg_id"]] = fut
        await self.channels.send(CHANNEL_OF[channel], self.session.serialize(msg, ident=self.identity))
        return await asyncio.wait_for(fut, timeout)

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """kernel_info until the kernel answers (it may still be binding its ports)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.request("kernel_info_request", {}, timeout=min(2.0, timeout))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    async def execute(self, code: str, timeout: float = 60.0, allow_stdin: bool = False) -> ExecuteResult:
        msg = self.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True})
        msg_id = msg["header"]["msg_id"]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = fut
        self._outputs[msg_id] = []
        self._idle[msg_id] = asyncio.Event()
        await self.channels.send(pb.CHANNEL_SHELL, self.session.serialize(msg, ident=self.identity))
        try:
            reply = await asyncio.wait_for(fut, timeout)
            await asyncio.wait_for(self._idle[msg_id].wait(), timeout)
            return ExecuteResult(reply, self._outputs[msg_id])
        finally:
            self._outputs.pop(msg_id, None)
            self._idle.pop(msg_id, None)

    async def send_execute(self, code: str) -> str:
        """Send an execute_request without waiting; returns its msg_id."""
        msg = self.session.msg("execute_request", {"code": code, "silent": False, "store_history": False,
                                                   "user_expressions": {}, "allow_stdin": False})
        await self.channels.send(pb.CHANNEL_SHELL, self.session.serialize(msg, ident=self.identity))
        return str(msg["header"]["msg_id"])

    async def input_reply(self, value: str) -> None:
        msg = self.session.msg("input_reply", {"value": value})
        await self.channels.send(pb.CHANNEL_STDIN, self.session.serialize(msg, ident=self.identity))


async def start_remote_kernel(client: RuntimeClient, vram: int, compute: int, ttl_seconds: int = 0,
                              reconnect_timeout: float = 60.0, ready_timeout: float = 60.0
                              ) -> tuple[pb.Lease, pb.Kernel, RemoteKernel]:
    """Lease a slice, start a kernel in it with a fresh HMAC key, connect and wait until it answers."""
    import secrets

    lease = await client.allocate(vram=vram, compute=compute, ttl_seconds=ttl_seconds)
    key = secrets.token_hex(16).encode()
    kernel = await client.start_kernel(lease.id, key=key)
    remote = RemoteKernel(client, kernel.id, key, reconnect_timeout=reconnect_timeout)
    await remote.connect()
    await remote.wait_ready(timeout=ready_timeout)
    return lease, kernel, remote
