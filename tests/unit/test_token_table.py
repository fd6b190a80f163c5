"""The worker's token table follows its file: a rotated token is accepted at once, a file caught
half-written keeps the last good table, and the old token stops working."""

from __future__ import annotations

import pytest

from tf_remoting.worker.auth import AuthError, TokenTable


def test_a_rotated_token_is_accepted_at_once(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("alice old-token-1234567890\nbob bobs-token-1234567890\n")
    table = TokenTable(path)
    assert table.authenticate("Bearer old-token-1234567890").principal == "alice"
    # Within the second in which the table does not look at its file unasked: a client that read
    # the new file first must not be refused (the launcher of a starting kernel was, and died).
    path.write_text("alice new-token-1234567890-longer\nbob bobs-token-1234567890\n")
    assert table.authenticate("Bearer new-token-1234567890-longer").principal == "alice"
    with pytest.raises(AuthError, match="not recognised"):
        table.authenticate("Bearer old-token-1234567890")


def test_a_file_caught_empty_keeps_the_last_good_table(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("alice old-token-1234567890\n")
    table = TokenTable(path)
    path.write_text("")  # truncated, not yet written
    assert table.authenticate("Bearer old-token-1234567890").principal == "alice"
    with pytest.raises(AuthError, match="not recognised"):
        table.authenticate("Bearer another-token-1234567890")


def test_a_refused_file_is_logged_once_and_the_last_good_table_kept(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("alice alices-token-1234567890\n")
    table = TokenTable(path)
    # The admin gives alice's token to bob too: refused, the old table stays, the log says why.
    path.write_text("alice alices-token-1234567890\nbob alices-token-1234567890\n")
    with caplog.at_level("WARNING", logger="tf_remoting.worker"):
        assert table.authenticate("Bearer alices-token-1234567890").principal == "alice"
        for _ in range(3):
            with pytest.raises(AuthError):
                table.authenticate("Bearer unknown-token-1234567890")
    refused = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(refused) == 1, refused  # once per file version, not once per call
    assert "line 2: the same token as line 1 (alice)" in refused[0]
    assert "alices-token" not in caplog.text
