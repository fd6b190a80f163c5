"""What the Jupyter side sends to workers: a client token file's token, or the user's JupyterHub
token (read by the pool, the launcher and the CLI).

With `c.TfVgpu.token_source = "hub"` a single-user server started by JupyterHub sends its own
`JUPYTERHUB_API_TOKEN`, and a worker started with `--hub-api-url` asks the hub whose it is: each hub
user is its own principal (`hub:NAME`) with nothing made by hand. That token is good for what the
hub gave it (`c.Spawner.server_token_scopes`) until the server stops; see the admin guide's
"Sharing a worker through JupyterHub" for the scopes to give it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HUB_TOKEN_ENV", "client_token", "hub_token", "read_token"]

HUB_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"


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


def hub_token() -> str:
    """This single-user server's JupyterHub API token; ValueError with a sentence outside a hub."""
    token = os.environ.get(HUB_TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"c.TfVgpu.token_source is 'hub' but {HUB_TOKEN_ENV} is not set: this server was not "
                         "started by JupyterHub; use token_source 'file' with c.TfVgpu.token_file")
    return token


def client_token(token_source: str, token_file: str) -> tuple[str, str]:
    """(token to send, token file to follow for rotation, or ''). ValueError with a sentence when
    there is none."""
    if token_source == "hub":
        return hub_token(), ""
    if not token_file:
        raise ValueError("c.TfVgpu.token_file is not set (nor token_source 'hub' under JupyterHub)")
    return read_token(token_file), token_file
