"""Which leases a server releases as orphans (Kernels.orphans): its own, that no kernel of it holds
and no placement in progress may still take."""

from __future__ import annotations

from tf_jupyter.pool.kernels import KERNEL_LABEL, SERVER_LABEL, Kernels, KernelSlice
from tf_remoting.proto import pb

WORKER = "127.0.0.1:1"


def lease(lease_id: str, kernel: str | None, server: str | None) -> pb.Lease:
    labels = {}
    if kernel is not None:
        labels[KERNEL_LABEL] = kernel
    if server is not None:
        labels[SERVER_LABEL] = server
    return pb.Lease(id=lease_id, labels=labels)


def test_only_our_leases_that_no_kernel_holds_and_none_is_being_placed_into() -> None:
    kernels = Kernels()
    kernels.register(KernelSlice("k1", WORKER, "held", "small", "medium"))
    leases = [
        lease("held", "k1", "us"),              # k1's slice
        lease("second", "k1", "us"),            # k1 got another lease elsewhere: a lost reply's
        lease("failed", "k-gone", "us"),        # a start that failed after the grant
        lease("placing", "k2", "us"),           # k2's placement is still going on: maybe its own
        lease("theirs", "k9", "another"),       # another server's (same principal, maybe)
        lease("unlabelled", None, None),        # the user's own client's
    ]
    orphans = kernels.orphans(WORKER, leases, "us", placing={"k2"})
    assert [x.id for x in orphans] == ["second", "failed"]
    # The same lease ids on another worker are other leases: none of ours holds them.
    assert [x.id for x in kernels.orphans("127.0.0.1:2", leases[:1], "us", set())] == ["held"]
