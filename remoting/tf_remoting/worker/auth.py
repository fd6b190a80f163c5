"""Who is calling: bearer tokens mapped to principals.

The token file has one token per line, either `TOKEN` (principal "default") or
`PRINCIPAL TOKEN`; blank lines and `#` comments are skipped. In place of a token a line may hold
its digest, `sha256:` and 64 hex digits (`PRINCIPAL sha256:HEX`): the worker compares the digest of
a presented token, so the file need not hold any token at all. Use digests on shared hosts: kernels
run as the worker's user and can read its token file. `tf-jupyter worker token new|hash` makes
such lines. The file is re-read when it changes (modification time, inode or size), so tokens
rotate without restarting the worker or its kernels.

With a JupyterHub configured (`hub_auth`), a token neither table knows is shown to the hub, and the
caller is the hub user, as `hub:NAME`: token-file principals may not start with `hub:`, so no hub
user can become one of them.

Kernels get a token of their own, scoped to their lease: `%vgpu` inside the kernel can read and
resize that lease and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tf_remoting.worker")

HUB_PREFIX = "hub:"  # principals of JupyterHub users; kept out of token files


class AuthError(Exception):
    """The call carries no token, or one this worker does not know."""


@dataclass(frozen=True)
class Caller:
    principal: str
    lease_scope: str = ""  # non-empty: a kernel token, limited to this lease
    groups: frozenset[str] = frozenset()  # what the identity source says (JupyterHub groups); empty for token files
    kernel_scope: str = ""  # a kernel token: the one kernel of that lease it belongs to

    def may_use(self, lease_id: str) -> bool:
        return not self.lease_scope or self.lease_scope == lease_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


DIGEST_PREFIX = "sha256:"


def _entry_digest(word: str, number: int) -> bytes:
    """The digest a token-file entry stands for: a `sha256:HEX` digest as is, a token hashed."""
    if word[:len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
        hex_part = word[len(DIGEST_PREFIX):]
        if len(hex_part) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hex_part):
            raise ValueError(f"token file line {number}: a digest is 'sha256:' and 64 hex digits")
        return bytes.fromhex(hex_part)
    if len(word) < 16:
        raise ValueError(f"token file line {number}: tokens must be at least 16 characters")
    return _digest(word)


def parse_token_file(text: str) -> dict[bytes, str]:
    """Token digest -> principal. Each entry is a token or `sha256:HEX` (the digest of one).
    Raises ValueError naming the bad line (never the token)."""
    table: dict[bytes, str] = {}
    line_of: dict[bytes, int] = {}
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
            raise ValueError(f"token file line {number}: expected 'TOKEN', 'PRINCIPAL TOKEN' or "
                             "'PRINCIPAL sha256:HEX'")
        if principal.startswith(HUB_PREFIX):
            raise ValueError(f"token file line {number}: principals starting with '{HUB_PREFIX}' are JupyterHub "
                             "users, named by the hub; choose another name")
        digest = _entry_digest(token, number)
        if table.get(digest, principal) != principal:
            raise ValueError(f"token file line {number}: the same token as line {line_of[digest]} "
                             f"({table[digest]}) for another principal; a token names one principal")
        table[digest] = principal
        line_of.setdefault(digest, number)
    if not table:
        raise ValueError("token file has no tokens")
    return table


class TokenTable:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file_key: tuple[int, int, int] | None = None  # (mtime_ns, inode, size) of the table read
        self._bad_key: tuple[int, int, int] | None = None  # the file version last refused, logged once
        self._checked = 0.0
        self._table: dict[bytes, str] = {}
        self._kernel_tokens: dict[bytes, Caller] = {}
        self._reload(force=True)

    def _reload(self, force: bool = False, recheck: bool = False) -> None:
        """Read the file again when it changed: at most once a second, or at once with `recheck`
        (a token not recognised may be a rotation written a moment ago)."""
        now = time.monotonic()
        if not force and not recheck and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            key = file_key(self.path)
        except OSError as exc:
            if force:
                raise ValueError(f"cannot read token file {self.path}: {exc.strerror}") from exc
            return  # keep the last good table while the file is being replaced
        if key == self._file_key:
            return
        try:
            table = parse_token_file(self.path.read_text())
        except (OSError, ValueError) as exc:
            if force:
                raise
            if key != self._bad_key:  # an empty file is a rotation half-written; anything else, the admin's mistake
                self._bad_key = key
                log.warning("token file %s not used, the last good one is kept: %s", self.path, exc)
            return
        self._table, self._file_key = table, key

    def add_kernel_token(self, token: str, principal: str, lease_id: str, kernel_id: str = "") -> None:
        with self._lock:
            self._kernel_tokens[_digest(token)] = Caller(principal, lease_id, kernel_scope=kernel_id)

    def add_kernel_digest(self, digest_hex: str, principal: str, lease_id: str, kernel_id: str = "") -> None:
        with self._lock:
            self._kernel_tokens[bytes.fromhex(digest_hex)] = Caller(principal, lease_id, kernel_scope=kernel_id)

    def remove_lease_tokens(self, lease_id: str) -> None:
        with self._lock:
            self._kernel_tokens = {d: c for d, c in self._kernel_tokens.items() if c.lease_scope != lease_id}

    def authenticate(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        digest = _digest(token)
        with self._lock:
            self._reload()
            found = self._find(digest)
            if found is None:  # a client may have read a rotated file before our last look at it
                self._reload(recheck=True)
                found = self._find(digest)
        if found is None:
            raise AuthError("token not recognised by this worker (expired, rotated or foreign)")
        return found

    def _find(self, digest: bytes) -> Caller | None:
        """Whose token has this digest: compared in constant time against every entry."""
        found: Caller | None = None
        for known, principal in self._table.items():
            if hmac.compare_digest(known, digest):
                found = Caller(principal)
        for known, caller in self._kernel_tokens.items():
            if hmac.compare_digest(known, digest):
                found = caller
        return found


def bearer_token(authorization: str | None) -> str:
    """The token of `authorization: Bearer <token>` metadata; AuthError with a sentence if absent."""
    if not authorization:
        raise AuthError("no token: send 'authorization: Bearer <token>' metadata")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed authorization metadata: expected 'Bearer <token>'")
    return token.strip()


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


def file_key(path: str | Path) -> tuple[int, int, int]:
    """What says a file changed: mtime alone misses a rewrite within the filesystem's timestamp
    granularity and a replace that keeps the mtime (`cp -p`, `mv` of an older file); a kubelet Secret
    update swaps the file (a new inode)."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def new_token() -> str:
    """A random token (256 bits): long enough that its digest cannot be guessed back."""
    return secrets.token_urlsafe(32)


def digest_line(principal: str, token: str) -> str:
    """The worker's token-file line for this token: `PRINCIPAL sha256:HEX`."""
    if not principal or any(c.isspace() for c in principal) or principal.startswith(("#", HUB_PREFIX)):
        raise ValueError(f"a principal is one word that does not start with '#' or '{HUB_PREFIX}'")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError("tokens are one word of at least 16 characters")
    return f"{principal} {DIGEST_PREFIX}{token_digest_hex(token)}"


def hash_token_file(text: str) -> str:
    """A token file with every plain token replaced by its digest; comments, blank lines and digest
    lines are kept as they are. Raises ValueError (as parse_token_file) on a malformed line."""
    parse_token_file(text)
    out = []
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#") or words[-1].lower().startswith(DIGEST_PREFIX):
            out.append(raw)
            continue
        principal = words[0] if len(words) == 2 else "default"
        out.append(digest_line(principal, words[-1]))
    return "\n".join(out) + "\n"
