"""Who is calling: bearer tokens mapped to principals.

The token file has one token per line, either `TOKEN` (principal "default") or
`PRINCIPAL TOKEN`; blank lines and `#` comments are skipped. It is re-read when its modification
time changes, so tokens rotate without restarting the worker or its kernels.

Kernels get a token of their own, scoped to their lease: `%vgpu` inside the kernel can read and
resize that lease and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path


class AuthError(Exception):
    """The call carries no token, or one this worker does not know."""


@dataclass(frozen=True)
class Caller:
    principal: str
    lease_scope: str = ""  # non-empty: a kernel token, limited to this lease

    def may_use(self, lease_id: str) -> bool:
        return not self.lease_scope or self.lease_scope == lease_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token_file(text: str) -> dict[bytes, str]:
    """Token digest -> principal. Raises ValueError naming the bad line (never the token)."""
    table: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) == 1:
            principal, token = "default", words[0]
        elif len(words) == 2:
            principal, token = words
        else:
            raise ValueError(f"token file line {number}: expected 'TOKEN' or 'PRINCIPAL TOKEN'")
        if len(token) < 16:
            raise ValueError(f"token file line {number}: tokens must be at least 16 characters")
        table[_digest(token)] = principal
    if not table:
        raise ValueError("token file has no tokens")
    return table


class TokenTable:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._checked = 0.0
        self._table: dict[bytes, str] = {}
        self._kernel_tokens: dict[bytes, Caller] = {}
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            if force:
                raise ValueError(f"cannot read token file {self.path}: {exc.strerror}") from exc
            return  # keep the last good table while the file is being replaced
        if mtime == self._mtime:
            return
        try:
            table = parse_token_file(self.path.read_text())
        except (OSError, ValueError):
            if force:
                raise
            return
        self._table, self._mtime = table, mtime

    def principals(self) -> set[str]:
        return set(self._table.values())

    def add_kernel_token(self, token: str, principal: str, lease_id: str) -> None:
        with self._lock:
            self._kernel_tokens[_digest(token)] = Caller(principal, lease_id)

    def add_kernel_digest(self, digest_hex: str, principal: str, lease_id: str) -> None:
        with self._lock:
            self._kernel_tokens[bytes.fromhex(digest_hex)] = Caller(principal, lease_id)

    def remove_lease_tokens(self, lease_id: str) -> None:
        with self._lock:
            self._kernel_tokens = {d: c for d, c in self._kernel_tokens.items() if c.lease_scope != lease_id}

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthError("no token: send 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed authorization metadata: expected 'Bearer <token>'")
        with self._lock:
            self._reload()
            digest = _digest(token.strip())
            # Compare digests in constant time against every entry.
            found: Caller | None = None
            for known, principal in self._table.items():
                if hmac.compare_digest(known, digest):
                    found = Caller(principal)
            for known, caller in self._kernel_tokens.items():
                if hmac.compare_digest(known, digest):
                    found = caller
        if found is None:
            raise AuthError("token not recognised by this worker (expired, rotated or foreign)")
        return found


def ensure_token_file(path: Path) -> bool:
    """Create a token file with one random token (mode 0600) if there is none; True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"default {secrets.token_urlsafe(32)}\n")
    return True


def token_digest_hex(token: str) -> str:
    return _digest(token).hex()
