"""tenants.py on its own: the uid range, names of homes, picking uids, capabilities, private
directories; the ledger's principal -> uid table; the settings. No root needed except where said."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tf_remoting.worker import tenants
from tf_remoting.worker.config import WorkerConfig
from tf_remoting.worker.leases import DeviceCapacity, Ledger, ResourceExhausted

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")


@pytest.mark.parametrize("text, expected", [("20000-20099", (20000, 20099)), (" 3000 - 3000 ", (3000, 3000))])
def test_uid_range_parses(text: str, expected: tuple[int, int]) -> None:
    assert tenants.parse_uid_range(text) == expected


@pytest.mark.parametrize("text, says", [
    ("5-2", "above the last"), ("20005-20002", "write it as 20002-20005"), ("abc", "range FIRST-LAST"),
    ("0-10", "0 is root"), ("20000", "range FIRST-LAST"), ("-5-10", "range FIRST-LAST"),
    ("999-2000", "1000 or above"), ("20000-99999999999", "below"), ("", "range FIRST-LAST"),
])
def test_bad_uid_range_is_a_sentence(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        tenants.parse_uid_range(text)
    with pytest.raises(ValueError, match="tenant_uids"):
        WorkerConfig(tenant_uids=text or "x").validate()


def test_config_takes_tenant_settings() -> None:
    WorkerConfig.from_dict({"tenant_uids": "20000-20010", "tenant_accounts": {"alice": "alice"}}).validate()
    with pytest.raises(ValueError, match="tenant_accounts needs tenant_uids"):
        WorkerConfig(tenant_accounts={"alice": "alice"}).validate()
    with pytest.raises(ValueError, match="maps principal names to account names"):
        WorkerConfig(tenant_uids="20000-20010", tenant_accounts={"alice": 5}).validate()  # type: ignore[dict-item]


@pytest.mark.parametrize("principal", [
    "alice", "../../etc/passwd", "a b; rm -rf /", "hub:Émilie", "", ".", "-rf", "x" * 500, "ALICE", "a/b", "\x00",
])
def test_home_names_are_safe(principal: str) -> None:
    name = tenants.safe_name(principal)
    assert len(name) <= 33
    assert all(c.isascii() and (c.islower() or c.isdigit() or c in "_-") for c in name), name
    assert name[0].isalpha()
    assert "/" not in name and name not in (".", "..")


def test_home_names_differ_where_principals_sanitize_alike() -> None:
    names = {tenants.safe_name(p) for p in ("a/b", "a b", "a_b", "A_B", "a:b")}
    assert len(names) == 5
    assert tenants.safe_name("alice") == tenants.safe_name("alice")  # stable across restarts


def test_user_name_is_the_principal_only_when_valid() -> None:
    home = Path("/nonexistent")
    assert tenants.Tenant("alice", 20000, 20000, home).user_name == "alice"
    odd = tenants.Tenant("hub:Bob Smith", 20001, 20001, home)
    assert odd.user_name == tenants.safe_name("hub:Bob Smith")
    env = odd.env()
    assert env["HOME"] == "/nonexistent" and env["IPYTHONDIR"] == "/nonexistent/.ipython"
    assert env["PYTHONUSERBASE"] == "/nonexistent/.local" and env["USER"] == env["LOGNAME"] == odd.user_name


def test_pick_uid() -> None:
    never = lambda uid: False  # noqa: E731
    assert tenants.pick_uid(None, set(), 20000, 20002, never) == 20000
    assert tenants.pick_uid(20001, {20000}, 20000, 20002, never) == 20001  # kept
    assert tenants.pick_uid(30000, {20000}, 20000, 20002, never) == 20001  # range changed: a new one
    assert tenants.pick_uid(None, {20000}, 20000, 20002, lambda uid: uid == 20001) == 20002  # an account's
    assert tenants.pick_uid(None, {20000, 20001, 20002}, 20000, 20002, never) is None


def test_capabilities_from_status() -> None:
    assert tenants.missing_capabilities(tenants.effective_capabilities("CapEff:\t000001ffffffffff\n")) == []
    assert tenants.missing_capabilities(tenants.effective_capabilities("Name: x\nCapEff:\t0000000000000000\n")) == [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    only_setuid = 1 << 7
    assert "CAP_SETUID" not in tenants.missing_capabilities(only_setuid)


def test_capability_refusal_is_a_sentence(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("CapEff:\t0000000000000080\n")  # CAP_SETUID only
    with pytest.raises(ValueError, match=r"needs root or the capabilities .*lacks CAP_CHOWN, CAP_DAC_OVERRIDE, "
                                         r"CAP_KILL, CAP_SETGID"):
        tenants.check_capabilities(str(status))


def test_unreachable_directories(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (inner / "python").write_text("")
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "a", 0o700)
    blocked = tenants.unreachable_for_others([inner / "python"])
    assert str(tmp_path / "a") in blocked and str(tmp_path) not in blocked and str(inner) not in blocked
    os.chmod(tmp_path / "a", 0o711)
    assert str(tmp_path / "a") not in tenants.unreachable_for_others([inner / "python"])


def test_device_groups(tmp_path: Path) -> None:
    assert tenants.device_groups([str(tmp_path / "nvidia*")]) == ()
    (tmp_path / "nvidia0").write_text("")  # not a character device: ignored
    assert tenants.device_groups([str(tmp_path / "nvidia*")]) == ()
    if os.path.exists("/dev/null"):
        assert tenants.device_groups(["/dev/null"]) == ()  # root's group is never added


def test_private_file_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    path.write_text("x")
    os.chmod(path, 0o644)
    assert tenants.readable_by_others(path)
    tenants.private_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and not tenants.readable_by_others(path)
    tenants.private_file(tmp_path / "missing")  # nothing to do


def test_private_dir_refuses_a_symlink_or_file(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "target")
    with pytest.raises(ValueError, match="is something else"):
        tenants.private_dir(tmp_path / "home", os.getuid(), os.getgid())
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="move it away"):
        tenants.private_dir(tmp_path / "file", os.getuid(), os.getgid())


@needs_root
def test_private_dir_reowns_what_an_earlier_uid_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("not the tenant's")
    (home / "link").symlink_to(outside)  # re-owned itself, never followed
    for p in (home, home / "sub", home / "sub" / "f"):
        os.chown(p, 20000, 20000)
    os.chmod(home, 0o755)
    tenants.private_dir(home, 20001, 20001)
    for p in (home, home / "sub", home / "sub" / "f", home / "link"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (20001, 20001), p
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert os.stat(outside).st_uid == 0


def _ledger(path: Path) -> Ledger:
    return Ledger(path, [DeviceCapacity(uuid="host-0", index=0, name="host", vram_total=1 << 30, compute_capacity=100)])


def test_ledger_remembers_uids(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with _ledger(path) as ledger:
        assert ledger.tenant_uid("alice", 20000, 20001, lambda uid: False) == 20000
        assert ledger.tenant_uid("bob", 20000, 20001, lambda uid: False) == 20001
        with pytest.raises(ResourceExhausted, match=r"no uid is left for principal 'carol'.*20000-20001.*widen"):
            ledger.tenant_uid("carol", 20000, 20001, lambda uid: False)
    with _ledger(path) as ledger:  # a restart
        assert ledger.tenant_uid("bob", 20000, 20001, lambda uid: False) == 20001
        assert ledger.tenant_uid("alice", 20000, 20001, lambda uid: False) == 20000
        # the range moved: alice gets one from the new range, and keeps it
        assert ledger.tenant_uid("alice", 30000, 30005, lambda uid: False) == 30000
        assert ledger.tenant_uid("alice", 30000, 30005, lambda uid: False) == 30000


def test_ledger_of_an_older_version_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with _ledger(path) as ledger:
        ledger.allocate("alice", vram=1 << 20, compute=1)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE tenant_uids")  # as written before tenant uids existed
    conn.commit()
    conn.close()
    with _ledger(path) as ledger:
        assert len(ledger.leases()) == 1  # kept
        assert ledger.tenant_uid("alice", 20000, 20001, lambda uid: False) == 20000


def test_strays_are_processes_no_live_nanny_accounts_for() -> None:
    from tf_remoting.worker.tenants import strays

    # 10 nanny (live) -> 11 kernel -> 12 child; 20 reparented to init (1) after its nanny died;
    # 21 its child; 30 a nanny that runs, no children.
    procs = {10: (5, 0), 11: (10, 0), 12: (11, 0), 20: (1, 0), 21: (20, 0), 30: (5, 0)}
    assert strays(procs, {10, 30}) == [20, 21]
    assert strays(procs, set()) == [10, 11, 12, 20, 21, 30]
    assert strays({}, {10}) == []
