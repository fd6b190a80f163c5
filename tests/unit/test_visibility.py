"""Who sees what (worker/visibility.py): own leases in full, others' not at all, admins everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tf_remoting.devices.base import DeviceInfo, DeviceSample
from tf_remoting.worker.auth import Caller, TokenTable
from tf_remoting.worker.metrics import LEASE_METRIC_NAMES, Metrics
from tf_remoting.worker.visibility import Visibility, no_leases, scrape_authorizer, sees_event, sees_lease

ALICE, BOB = Caller("alice"), Caller("bob")
ADMIN = Caller("admin")
OPS = Caller("carol", groups=frozenset({"gpu-ops", "students"}))
ALICE_KERNEL = Caller("alice", lease_scope="la")
POLICY = Visibility.of(admin_principals=["admin"], admin_groups=["gpu-ops"])
GiB = 1 << 30


def test_admins_are_listed_principals_or_group_members_and_never_kernel_tokens() -> None:
    assert POLICY.is_admin(ADMIN) and POLICY.is_admin(OPS)
    assert not POLICY.is_admin(ALICE) and not POLICY.is_admin(Caller("bob", groups=frozenset({"students"})))
    assert not POLICY.is_admin(Caller("admin", lease_scope="l1")), "a kernel token of an admin's lease"
    assert not Visibility().is_admin(Caller("default")), "no admins unless configured"


def test_refusal_says_what_is_needed_and_who_asked() -> None:
    assert POLICY.refusal(ADMIN, "Watch all_leases") is None
    sentence = POLICY.refusal(ALICE, "Watch all_leases")
    assert sentence and "Watch all_leases" in sentence and "'alice'" in sentence and "admin_principals" in sentence
    kernel = POLICY.refusal(ALICE_KERNEL, "ListLeases all_principals")
    assert kernel and "kernel token of lease la" in kernel


def test_leases_own_in_full_others_only_to_admins_who_ask() -> None:
    assert sees_lease(ALICE, "alice", "la", everyone=False)
    assert not sees_lease(ALICE, "bob", "lb", everyone=False)
    assert sees_lease(ADMIN, "bob", "lb", everyone=True)
    assert not sees_lease(ADMIN, "bob", "lb", everyone=False), "an admin sees others' when it asks"
    # lease_filter re-checks the admin role: asking is not enough.
    assert not POLICY.lease_filter(ALICE, everyone=True)("bob", "lb")
    assert POLICY.lease_filter(OPS, everyone=True)("bob", "lb")
    # A kernel token: its own lease only, not even its principal's other leases.
    shown = POLICY.lease_filter(ALICE_KERNEL, everyone=True)
    assert shown("alice", "la") and not shown("alice", "la2") and not shown("bob", "lb")


def test_events_of_others_are_not_sent() -> None:
    assert sees_event(ALICE, "", "", "", everyone=False), "worker-wide events go to everyone"
    assert sees_event(ALICE_KERNEL, "", "", "", everyone=False)
    assert sees_event(ALICE, "alice", "la", "k1", everyone=False)
    assert not sees_event(ALICE, "bob", "lb", "k2", everyone=False)
    assert not sees_event(ALICE, "", "lb", "", everyone=False), "a lease event without its principal is kept back"
    assert sees_event(ADMIN, "bob", "lb", "k2", everyone=True)
    assert sees_event(ALICE_KERNEL, "alice", "la", "k1", everyone=False)
    assert not sees_event(ALICE_KERNEL, "alice", "la2", "k3", everyone=False)


def _lease_row(lease: str, principal: str) -> dict[str, object]:
    return {"lease": lease, "principal": principal, "device": "host-a", "vram_used": GiB, "vram_limit": 2 * GiB,
            "utilization": 1.0, "compute_limit": 10}


def _series(text: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text.decode())
            for s in f.samples}


def test_metrics_scrape_shows_lease_series_as_the_token_may_see(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("alice TOKA-0123456789abcdef\nbob TOKB-0123456789abcdef\nadmin TOKC-0123456789abcdef\n")
    authorize = scrape_authorizer(TokenTable(tokens_file).authenticate, POLICY)
    m = Metrics(version="1", backend="host")
    m.update([DeviceInfo(uuid="host-a", name="host", kind="host", index=0, vram_total=8 * GiB, multiprocessors=0,
                        modes=("host",), memory_enforcement="watchdog")],
             [DeviceSample("host-a", GiB, 5.0)], {"host-a": (4 * GiB, 20)},
             [_lease_row("la", "alice"), _lease_row("lb", "bob")], 2)

    def leases_seen(header: str | None) -> set[str]:
        return {dict(labels)["principal"] for name, labels in _series(m.render(authorize(header)))
                if name in LEASE_METRIC_NAMES}

    assert authorize(None) is no_leases
    assert leases_seen(None) == set()
    anonymous = m.render(authorize(None)).decode()
    assert "bob" not in anonymous and "lb" not in anonymous and "alice" not in anonymous
    assert 'tf_vgpu_device_vram_leased_bytes{device="host-a"' in anonymous, "capacity stays"
    assert "tf_vgpu_leases 2.0" in anonymous, "the count stays"
    assert leases_seen("Bearer TOKA-0123456789abcdef") == {"alice"}
    assert leases_seen("Bearer TOKC-0123456789abcdef") == {"alice", "bob"}
    with pytest.raises(PermissionError, match="not recognised"):
        authorize("Bearer not-a-token-of-this-worker")
