"""Who may see what of the leases and kernels on a worker.

A principal sees its own leases and kernels in full (ids, labels such as notebook paths, kernels'
directories); other principals' only as anonymous used capacity: the devices' leased and used
totals, which count everyone. A kernel token sees its own lease only. An admin (a principal named
in `admin_principals`, or a caller in one of `admin_groups`) may see every principal's; kernel
tokens are never admins.

The same rules serve `GetInventory`, `ListLeases`, `Watch` (lease samples and events) and the
per-lease series of `/metrics`. Plain Python: the servicer, the Watch fan-out and the metrics
endpoint ask here, and the tests ask here directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tf_remoting.worker.auth import AuthError, Caller

# A lease filter: (principal, lease id) -> shown.
LeaseFilter = Callable[[str, str], bool]

NOT_ADMIN = ("{what} shows every principal's leases and needs an admin: a principal listed in the worker's "
             "admin_principals or a member of one of its admin_groups ({who} is neither); "
             "leave it out to see your own leases")


@dataclass(frozen=True)
class Visibility:
    admin_principals: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()

    @classmethod
    def of(cls, admin_principals: Iterable[str] = (), admin_groups: Iterable[str] = ()) -> Visibility:
        return cls(frozenset(admin_principals), frozenset(admin_groups))

    def is_admin(self, caller: Caller) -> bool:
        if caller.lease_scope:
            return False  # a kernel token acts for its lease only, whoever owns it
        return caller.principal in self.admin_principals or bool(caller.groups & self.admin_groups)

    def refusal(self, caller: Caller, what: str) -> str | None:
        """None when the caller may ask for every principal's leases with `what`; else the sentence."""
        if self.is_admin(caller):
            return None
        who = (f"a kernel token of lease {caller.lease_scope}" if caller.lease_scope
               else f"principal {caller.principal!r}")
        return NOT_ADMIN.format(what=what, who=who)

    def lease_filter(self, caller: Caller, everyone: bool) -> LeaseFilter:
        """What the caller is shown; `everyone`: it asked for every principal's (only admins get them)."""
        everyone = everyone and self.is_admin(caller)
        return lambda principal, lease_id: sees_lease(caller, principal, lease_id, everyone)


def sees_lease(caller: Caller, principal: str, lease_id: str, everyone: bool) -> bool:
    """Whether a lease (its id, labels, kernels, usage) is shown to the caller. `everyone` must
    already be checked: the caller is an admin and asked for every principal's leases."""
    return caller.may_use(lease_id) and (everyone or principal == caller.principal)


def sees_event(caller: Caller, principal: str, lease_id: str, kernel_id: str, everyone: bool) -> bool:
    """Whether an event is sent to the caller: worker-wide events (no principal, lease or kernel)
    to everyone; an event about a lease or kernel as that lease is shown (an event naming a lease
    or kernel but no principal is shown to no one but admins watching everyone)."""
    if not (principal or lease_id or kernel_id):
        return True
    if caller.lease_scope:
        return lease_id == caller.lease_scope
    return everyone or (bool(principal) and principal == caller.principal)


def no_leases(principal: str, lease_id: str) -> bool:
    """The lease filter of a caller who showed no token (the /metrics endpoint's default)."""
    return False


def scrape_authorizer(authenticate: Callable[[str], Caller], visibility: Visibility
                      ) -> Callable[[str | None], LeaseFilter]:
    """For the /metrics endpoint: an Authorization header -> the lease series that scrape gets.
    No header: none (only device-level, count and counter series). A token: what its caller sees of
    every principal's leases (an admin: all). A token the worker does not know: PermissionError."""
    def authorize(header: str | None) -> LeaseFilter:
        if not header:
            return no_leases
        try:
            caller = authenticate(header)
        except AuthError as exc:
            raise PermissionError(f"/metrics: {exc}; scrape without a token for the device-level series, or "
                                  "with an admin's token for every lease's") from None
        return visibility.lease_filter(caller, everyone=True)
    return authorize
