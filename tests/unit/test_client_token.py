"""What the Jupyter side sends to workers (tf_jupyter.tokens.client_token): a token file's first
token, or under JupyterHub (token_source 'hub') the server's own JUPYTERHUB_API_TOKEN, and a
sentence when there is none."""

from __future__ import annotations

import pytest

from tf_jupyter.tokens import HUB_TOKEN_ENV, client_token


def test_file_source_reads_the_file_and_follows_it(tmp_path):
    path = tmp_path / "token"
    path.write_text("# the client's token\nalice 0123456789abcdef0123\n")
    assert client_token("file", str(path)) == ("0123456789abcdef0123", str(path))
    with pytest.raises(ValueError, match="token_file is not set"):
        client_token("file", "")


def test_hub_source_sends_the_servers_hub_token_and_follows_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv(HUB_TOKEN_ENV, "hub-token-of-this-server")
    path = tmp_path / "token"
    path.write_text("alice 0123456789abcdef0123\n")
    assert client_token("hub", str(path)) == ("hub-token-of-this-server", "")


def test_hub_source_outside_a_hub_says_so(monkeypatch):
    monkeypatch.delenv(HUB_TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN is not set: this server was not started by JupyterHub"):
        client_token("hub", "")
