"""Client token files: what the Jupyter side sends to workers (read by the pool, the launcher and the CLI)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_token"]


def read_token(path: str | Path) -> str:
    """The first token in a token file (the `TOKEN` or `PRINCIPAL TOKEN` format)."""
    for line in Path(path).read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            if words[-1].startswith("sha256:"):
                raise ValueError(f"{path} holds a token's digest (a worker's token file), not the token a client "
                                 "sends: point the Jupyter side at the client's token file")
            return words[-1]
    raise ValueError(f"no token in {path}")
