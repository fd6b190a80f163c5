"""Client processes for storm and load tests: each runs a script, says {"ready": true}, then answers
one JSON line per line written to its stdin. Half of them use alice's token, half bob's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping

from tf_remoting.pytest_plugin import WorkerProcess


class ClientProcesses:
    def __init__(self, worker: WorkerProcess, script: str, count: int, timeout: float,
                 env: Mapping[str, str] | None = None, per_process_env=None) -> None:  # type: ignore[no-untyped-def]
        """env: extra variables for all; per_process_env(i) -> extra variables for process i.
        Each process gets TF_CLIENT_ADDRESS and TF_CLIENT_TOKEN."""
        self.timeout = timeout
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []
        for i in range(count):
            principal, token = ("alice", worker.token) if i % 2 == 0 else ("bob", worker.other_token)
            proc_env = {**os.environ, **(env or {}), **(per_process_env(i) if per_process_env else {}),
                        "TF_CLIENT_ADDRESS": worker.address, "TF_CLIENT_TOKEN": token}
            proc = subprocess.Popen([sys.executable, "-c", script], env=proc_env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
            self.procs.append((principal, proc))

    async def line(self, proc: subprocess.Popen[str]) -> object:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), self.timeout)  # type: ignore[union-attr]
        if not line:
            raise AssertionError(f"client process exited ({proc.poll()}):\n{proc.stderr.read()}")  # type: ignore[union-attr]
        return json.loads(line)

    async def ready(self) -> None:
        for _, proc in self.procs:
            assert await self.line(proc) == {"ready": True}

    async def command(self, lines: list[str]) -> list[object]:
        """Write one line to each process first (so they all start at once), then read each answer."""
        for (_, proc), text in zip(self.procs, lines, strict=True):
            proc.stdin.write(text + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        return list(await asyncio.gather(*(self.line(proc) for _, proc in self.procs)))

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for _, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
